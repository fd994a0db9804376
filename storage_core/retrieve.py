"""Three verbs over the catalog: `query` what is stored, `get` a small object's bytes,
`download` any selection to disk.

    from storage_core.retrieve import query, get, download

    found = query(device_id="robot-01", topic="/camera/*")
    header = get(found[0].objects[0], max_bytes=1 << 20)
    paths = download(found, "/data/restore", layout="by_modality", resume=True)

Each verb opens the catalog (FERRY_DATABASE_URL) and the stores the catalog points at
unless given them. Bytes are always checked against what the catalog recorded: size and
CRC32C, read pinned to the ETag seen first. `download` (and `plan_download`) is
storage_core.download's one download, re-exported here: it also takes DownloadSources.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime

from storage_core.catalog.db import Catalog, open_default_catalog
from storage_core.catalog.queries import RecordingResult, find_object, find_recordings
from storage_core.catalog.views import ObjectInfo
from storage_core.checksums import crc32c
from storage_core.config import FerrySettings, load_settings
from storage_core.download.api import download, plan_download
from storage_core.errors import ConfigError, IntegrityError
from storage_core.stores.registry import open_store

GET_LIMIT = 64 * 1024 * 1024  # get() holds the bytes in memory: past this, download() them


def query(
    *,
    device_id: str | None = None,
    recording: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    modality: str | None = None,
    topic: str | None = None,
    limit: int | None = None,
    among: Iterable[tuple[str, str]] | None = None,
    catalog: Catalog | None = None,
) -> list[RecordingResult]:
    """The recordings matching every filter given (see find_recordings for each one)."""
    return find_recordings(
        catalog or open_default_catalog(),
        device_id=device_id, recording=recording, since=since, until=until,
        modality=modality, topic=topic, limit=limit, among=among,
    )


def get(
    target: ObjectInfo | str,
    *,
    max_bytes: int = GET_LIMIT,
    catalog: Catalog | None = None,
    settings: FerrySettings | None = None,
) -> bytes:
    """The bytes of one small stored object (an ObjectInfo, or its URI), verified.

    Refuses objects over `max_bytes` before reading anything: they belong on disk.
    """
    if isinstance(target, str):
        target = find_object(catalog or open_default_catalog(), target)
    if not isinstance(target, ObjectInfo):
        raise ConfigError(f"get() takes one stored object or its URI, not a {type(target).__name__}; "
                          f"use download() for recordings")
    if target.size > max_bytes:
        raise ConfigError(f"{target.uri} is {target.size:,} bytes, over get()'s limit of {max_bytes:,}; "
                          f"use download() to stream it to disk, or raise max_bytes")
    store, _ = open_store(target.store_uri, settings)
    data = store.get_range(target.key, 0, target.size) if target.size else b""  # one request: nothing to pin
    if len(data) != target.size or crc32c(data) != target.crc32c:
        raise IntegrityError(f"{target.uri}: the stored bytes do not match the catalog "
                             f"({len(data)} bytes, CRC32C {crc32c(data):08x}; recorded {target.size} bytes, "
                             f"{target.crc32c:08x})", key=target.key)
    return data


__all__ = ["GET_LIMIT", "download", "get", "plan_download", "query"]
