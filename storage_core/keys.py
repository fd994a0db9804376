"""Object keys and storage URIs, validated before anything touches storage.

A key is a relative, `/`-separated path: no empty segments, no `.` or `..` segments, no
leading `/`, no backslashes or NUL bytes. A storage URI is `file:///abs/dir` or
`s3://bucket[/prefix]`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import PurePosixPath
from urllib.parse import unquote, urlsplit

from storage_core.errors import ConfigError, InvalidKey

MAX_KEY_BYTES = 1024


def validate_key(key: str) -> str:
    """Return `key` unchanged if it is a safe relative object key, else raise InvalidKey."""
    if not key:
        raise InvalidKey(key, "empty key")
    if len(key.encode("utf-8")) > MAX_KEY_BYTES:
        raise InvalidKey(key, f"longer than {MAX_KEY_BYTES} bytes")
    if "\x00" in key or "\\" in key:
        raise InvalidKey(key, "contains a NUL byte or a backslash")
    if key.startswith("/"):
        raise InvalidKey(key, "absolute keys are not allowed")
    for segment in key.split("/"):
        if segment == "":
            raise InvalidKey(key, "empty path segment")
        if segment in (".", ".."):
            raise InvalidKey(key, f"'{segment}' segments are not allowed")
    return key


def join_key(*parts: str) -> str:
    """Join key fragments with `/`, ignoring empty fragments, and validate the result."""
    joined = "/".join(part.strip("/") for part in parts if part and part.strip("/"))
    return validate_key(joined)


@dataclass(frozen=True)
class StorageUri:
    """A parsed storage location: `scheme` ('file' or 's3'), `root` and a key `prefix`.

    For `file:///data/lake` the root is the folder `/data/lake` and the prefix is empty;
    for `s3://bucket/raw/2026` the root is `bucket` and the prefix `raw/2026`.
    """

    scheme: str
    root: str
    prefix: str = ""

    @property
    def store_uri(self) -> str:
        return f"file://{self.root}" if self.scheme == "file" else f"s3://{self.root}"

    def object_uri(self, key: str) -> str:
        return f"{self.store_uri}/{validate_key(key)}"

    def __str__(self) -> str:
        return f"{self.store_uri}/{self.prefix}" if self.prefix else self.store_uri


def parse_uri(uri: str) -> StorageUri:
    """Parse a storage URI or raise ConfigError naming what is wrong with it."""
    if not uri or "://" not in uri:
        raise ConfigError(f"invalid storage URI {uri!r}: expected file:///abs/path or s3://bucket/prefix")
    parts = urlsplit(uri)
    if parts.query or parts.fragment:
        raise ConfigError(f"invalid storage URI {uri!r}: query strings and fragments are not allowed")
    if parts.scheme == "file":
        if parts.netloc not in ("", "localhost"):
            raise ConfigError(f"invalid storage URI {uri!r}: file URIs need an absolute path (file:///...)")
        path = unquote(parts.path)
        if not path.startswith("/") or path == "/":
            raise ConfigError(f"invalid storage URI {uri!r}: file URIs need an absolute folder path")
        segments = [s for s in path.split("/") if s]
        if any(s in (".", "..") for s in segments):
            raise ConfigError(f"invalid storage URI {uri!r}: '..' segments are not allowed")
        return StorageUri("file", str(PurePosixPath("/", *segments)), "")
    if parts.scheme == "s3":
        bucket = parts.netloc
        if len(bucket) < 3 or not all(c.isalnum() or c in "-." for c in bucket) or bucket != bucket.lower():
            raise ConfigError(f"invalid storage URI {uri!r}: {bucket!r} is not a valid bucket name")
        prefix = unquote(parts.path).strip("/")
        if prefix:
            try:
                validate_key(prefix)
            except InvalidKey as exc:
                raise ConfigError(f"invalid storage URI {uri!r}: {exc.reason}") from exc
        return StorageUri("s3", bucket, prefix)
    raise ConfigError(f"invalid storage URI {uri!r}: unsupported scheme {parts.scheme!r} (use file:// or s3://)")


__all__ = ["MAX_KEY_BYTES", "StorageUri", "join_key", "parse_uri", "validate_key"]
