"""Object keys and storage URIs, validated before anything touches storage.

A key is a relative, `/`-separated path: no empty segments, no `.` or `..` segments, no
leading `/`, no backslashes, and no character a reader cannot see: control characters
(`\r`, `\n`, NUL, C1), format characters (bidi overrides and isolates U+202A-202E,
U+2066-2069, zero-width U+200B-200D, U+2060, U+FEFF), line and paragraph separators,
lone surrogates and blank look-alike letters (Hangul fillers, braille blank): each would
let two keys look alike, or a listing print other than what is stored. A refusal names
the first such code point and its index. A storage URI is `file:///abs/dir` or
`s3://bucket[/prefix]`.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from pathlib import PurePosixPath
from urllib.parse import unquote, urlsplit

from storage_core.errors import ConfigError, InvalidKey

MAX_KEY_BYTES = 1024
# Unicode general categories of characters nobody sees: controls, formats (bidi, zero
# width), line/paragraph separators, surrogates
INVISIBLE_CATEGORIES = frozenset({"Cc", "Cf", "Zl", "Zp", "Cs"})
# letters and symbols that render as blank space
BLANK_LOOKALIKES = frozenset({0x115F, 0x1160, 0x3164, 0xFFA0, 0x2800})
_ASCII_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def invisible_character(key: str) -> tuple[int, str] | None:
    """(index, character) of the first character in `key` a reader cannot see, or None."""
    if key.isascii():  # the common case, without a look at each character
        found = _ASCII_CONTROL.search(key)
        return None if found is None else (found.start(), found.group())
    for index, char in enumerate(key):
        if unicodedata.category(char) in INVISIBLE_CATEGORIES or ord(char) in BLANK_LOOKALIKES:
            return index, char
    return None


def validate_key(key: str) -> str:
    """Return `key` unchanged if it is a safe relative object key, else raise InvalidKey."""
    if not key:
        raise InvalidKey(key, "empty key")
    if len(key.encode("utf-8")) > MAX_KEY_BYTES:
        raise InvalidKey(key, f"longer than {MAX_KEY_BYTES} bytes")
    if "\\" in key:
        raise InvalidKey(key, "contains a backslash")
    invisible = invisible_character(key)
    if invisible is not None:
        index, char = invisible
        category = unicodedata.category(char)
        name = unicodedata.name(char, "control" if category == "Cc" else category)
        raise InvalidKey(key, f"invisible or control character U+{ord(char):04X} ({name}) at index {index}")
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


__all__ = ["MAX_KEY_BYTES", "StorageUri", "invisible_character", "join_key", "parse_uri", "validate_key"]
