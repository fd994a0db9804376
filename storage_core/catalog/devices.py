"""Device tokens: the gateway credential of one device.

A token is 256 random bits, shown to the operator once (`add_device_token`); the catalog
keeps only its SHA-256. Authentication hashes the presented token and looks the hash up
(the lookup never compares secrets byte by byte), so a stolen catalog yields no usable
token. Revocation takes effect on the next request: every request re-reads the row.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

from sqlalchemy import select

from storage_core.catalog.db import Catalog
from storage_core.catalog.models import Device, DeviceToken
from storage_core.catalog.views import as_utc
from storage_core.errors import ConfigError, InvalidKey, TokenRefused
from storage_core.keys import validate_key

TOKEN_PREFIX = "ferry_dt_"
MAX_DEVICE_ID = 128


@dataclass(frozen=True)
class DeviceTokenInfo:
    id: int
    device_id: str
    label: str | None
    created_at: datetime
    last_used_at: datetime | None
    revoked_at: datetime | None

    @classmethod
    def of(cls, row: DeviceToken) -> DeviceTokenInfo:
        return cls(row.id, row.device_id, row.label, row.created_at, row.last_used_at, row.revoked_at)


@dataclass(frozen=True)
class NewToken:
    info: DeviceTokenInfo
    token: str  # the plaintext: shown once, never stored


def _now() -> datetime:
    return datetime.now(timezone.utc)


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def validate_device_id(device_id: str) -> str:
    """A device id is one safe key segment (it is the device's prefix in storage)."""
    try:
        validate_key(device_id)
    except InvalidKey as exc:
        raise ConfigError(f"invalid device id {device_id!r}: {exc.reason}") from exc
    if "/" in device_id or len(device_id) > MAX_DEVICE_ID:
        raise ConfigError(f"invalid device id {device_id!r}: one path segment of at most {MAX_DEVICE_ID} characters")
    if device_id.startswith("."):  # hidden names are the gateway's (its .ferry-staging folder)
        raise ConfigError(f"invalid device id {device_id!r}: it may not start with a dot")
    return device_id


def add_device_token(catalog: Catalog, device_id: str, *, label: str | None = None) -> NewToken:
    """Create the device if needed and a fresh token for it; the plaintext is returned once."""
    validate_device_id(device_id)
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    with catalog.session() as session:
        if session.get(Device, device_id) is None:
            session.add(Device(id=device_id))
            session.flush()
        row = DeviceToken(device_id=device_id, token_hash=hash_token(token), label=label)
        session.add(row)
        session.flush()
        return NewToken(DeviceTokenInfo.of(row), token)


def revoke_device_tokens(catalog: Catalog, device_id: str, *, token_id: int | None = None) -> list[DeviceTokenInfo]:
    """Revoke every live token of a device, or just `token_id`. Returns the tokens revoked
    now; raises ConfigError when there was nothing to revoke (a typo must not pass silently)."""
    with catalog.session() as session:
        query = select(DeviceToken).where(DeviceToken.device_id == device_id)
        if token_id is not None:
            query = query.where(DeviceToken.id == token_id)
        rows = list(session.scalars(query))
        if not rows:
            what = f"token {token_id} of device {device_id!r}" if token_id is not None else f"device {device_id!r}"
            raise ConfigError(f"no such {what}")
        revoked = []
        for row in rows:
            if row.revoked_at is None:
                row.revoked_at = _now()
                revoked.append(row)
        session.flush()
        return [DeviceTokenInfo.of(row) for row in revoked]


REFUSED = "invalid or revoked device token"
# `last_used_at` is kept to the minute: written on every request it made each request a
# write, serialized behind every other writer of the catalog (SQLite's one write lock)
LAST_USED_RESOLUTION = timedelta(minutes=1)


def authenticate_device(catalog: Catalog, token: str) -> str:
    """The device id a live token belongs to; TokenRefused otherwise. Records last use
    (to the minute: LAST_USED_RESOLUTION).
    Malformed, unknown and revoked tokens get the same message: the answer must not tell
    a token guesser which tokens once existed."""
    if not token or not token.startswith(TOKEN_PREFIX) or len(token) > 256:
        raise TokenRefused(REFUSED)
    digest = hash_token(token)
    with catalog.session() as session:
        row = session.scalar(select(DeviceToken).where(DeviceToken.token_hash == digest))
        # the lookup is by hash; this compare only guards against a collation-insensitive match
        if row is None or not hmac.compare_digest(row.token_hash, digest) or row.revoked_at is not None:
            raise TokenRefused(REFUSED)
        now = _now()
        if row.last_used_at is None or now - as_utc(row.last_used_at) >= LAST_USED_RESOLUTION:
            row.last_used_at = now  # at most one write a minute per token: requests stay reads
        return row.device_id


def list_device_tokens(catalog: Catalog, *, device_id: str | None = None) -> list[DeviceTokenInfo]:
    with catalog.session() as session:
        query = select(DeviceToken).order_by(DeviceToken.device_id, DeviceToken.id)
        if device_id is not None:
            query = query.where(DeviceToken.device_id == device_id)
        return [DeviceTokenInfo.of(row) for row in session.scalars(query)]


__all__ = [
    "DeviceTokenInfo",
    "NewToken",
    "TOKEN_PREFIX",
    "TokenRefused",
    "add_device_token",
    "authenticate_device",
    "hash_token",
    "list_device_tokens",
    "revoke_device_tokens",
    "validate_device_id",
]
