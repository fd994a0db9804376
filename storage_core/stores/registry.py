"""Pick an object store from a URI scheme: `file://` → LocalStore, `s3://` → S3Store."""

from __future__ import annotations

import os
import threading

from storage_core.config import FerrySettings, load_settings
from storage_core.keys import StorageUri, parse_uri
from storage_core.stores.base import ObjectStore
from storage_core.stores.local import LocalStore

_clients: dict[tuple[object, ...], object] = {}
_sessions: dict[tuple[object, ...], object] = {}
_lock = threading.Lock()


_CREDENTIAL_VARIABLES = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE")


def _s3_client(settings: FerrySettings, *, attempts: int = 1) -> object:
    # boto3 clients are thread-safe and costly to build: share one per endpoint and budget,
    # and per credentials in the environment (a client keeps those it found when built: a
    # warm process's child may run with other keys than the parent that built it)
    pool = max(settings.max_concurrency * 2, settings.max_in_flight) + 4
    credentials = tuple(os.environ.get(name) for name in _CREDENTIAL_VARIABLES)
    cache_key = (settings.endpoint_url, settings.region, pool, attempts, credentials)
    from storage_core.stores.s3 import make_client, new_session  # boto3 loads only for an s3:// store

    with _lock:
        if cache_key not in _clients:
            # the looped and unlooped clients of one endpoint come from one session (and every
            # session from the process's one parsed copy of botocore's models: new_session)
            session_key = (settings.endpoint_url, settings.region, credentials)  # a session keeps the keys it found
            if session_key not in _sessions:
                _sessions[session_key] = new_session()
            session = _sessions[session_key]
            _clients[cache_key] = make_client(
                endpoint_url=settings.endpoint_url, region=settings.region, max_pool_connections=pool,
                attempts=attempts, session=session,
            )
        return _clients[cache_key]


def preload_clients() -> None:
    """Build the two S3 clients `open_store` gives an s3:// store under the current settings,
    before any request (ferry.cli.warm, before it forks: ~55 ms of each command's child).
    Only when the environment holds the keys: otherwise botocore's search for credentials
    may ask the network (an instance's metadata service), and a command may not need S3."""
    if not (os.environ.get("AWS_ACCESS_KEY_ID") and os.environ.get("AWS_SECRET_ACCESS_KEY")):
        return
    from storage_core.stores.s3 import UNLOOPED_ATTEMPTS

    settings = load_settings()
    _s3_client(settings)
    _s3_client(settings, attempts=UNLOOPED_ATTEMPTS)


def open_store(uri: str | StorageUri, settings: FerrySettings | None = None) -> tuple[ObjectStore, str]:
    """The store behind `uri` and the key prefix the URI names inside it."""
    settings = settings or load_settings()
    location = parse_uri(uri) if isinstance(uri, str) else uri
    if location.scheme == "file":
        return LocalStore(location.root), location.prefix
    from storage_core.stores.s3 import UNLOOPED_ATTEMPTS, S3Store

    store = S3Store(
        location.root,
        client=_s3_client(settings),
        unlooped_factory=lambda: _s3_client(settings, attempts=UNLOOPED_ATTEMPTS),
        multipart_threshold=settings.multipart_threshold,
    )
    return store, location.prefix


def split_object_uri(uri: str) -> tuple[str, str]:
    """`s3://bucket/a/b` → ('s3://bucket', 'a/b'). File URIs need the store root to split,
    so the catalog keeps store URI and key apart and this is only used for S3 URIs."""
    location = parse_uri(uri)
    return location.store_uri, location.prefix


__all__ = ["open_store", "preload_clients", "split_object_uri"]
