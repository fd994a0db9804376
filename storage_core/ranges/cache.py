"""DiskCache: whole stored objects kept on local disk, verified when written and when read.

A read that touches most of an object (a Parquet scan projecting many columns, the same
object read again) is cheaper from local disk than as many range requests; `CachePolicy`
decides when (storage_core.formats.parquet_batches). The cache's contract:

- An entry is one version of one object: it is keyed by store URI, key and ETag, so a
  replaced object is never served from an older entry.
- Filling reads the object through the caller's `RangeReader`, whose requests are pinned
  to the ETag it opened with (a version that changes mid-fill raises PreconditionFailed),
  computes CRC32C as the bytes arrive, and checks size and CRC32C against what the catalog
  or the store recorded, when either did, before the entry exists: a mismatch raises
  IntegrityError and leaves nothing. The file is fsynced and renamed into place, then its
  record (size, CRC32C) is written beside it the same way.
- Every hit is checked again (size, then CRC32C of the whole file, a few ms per 10 MB):
  a cached file damaged on disk is dropped, never served, and the caller fills it again.
- `max_bytes` bounds the cache; the least recently used entries are evicted after a fill.
  Memory stays one block (`block_size`) whatever the object's size.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
from dataclasses import dataclass
from pathlib import Path

from storage_core.checksums import crc32c, crc32c_of_stream, to_hex
from storage_core.diskio import write_atomic
from storage_core.errors import IntegrityError
from storage_core.ranges.reader import DEFAULT_PART_SIZE, RangeReader

log = logging.getLogger(__name__)

DEFAULT_MAX_BYTES = 4 * 1024**3
RECORD_SUFFIX = ".json"
PART_SUFFIX = ".part"


@dataclass(frozen=True)
class CachedObject:
    """A verified cache entry: the file and what it was checked against."""

    path: Path
    size: int
    crc32c: int
    etag: str


class DiskCache:
    """Verified whole-object copies under `root`, at most `max_bytes` of them (see module)."""

    def __init__(self, root: str | os.PathLike[str], *, max_bytes: int = DEFAULT_MAX_BYTES,
                 block_size: int = DEFAULT_PART_SIZE) -> None:
        if max_bytes <= 0 or block_size <= 0:
            raise ValueError("max_bytes and block_size must be positive")
        self.root = Path(root)
        self.max_bytes = max_bytes
        self.block_size = block_size
        self._lock = threading.Lock()  # fills of one process evict one at a time

    # --- naming ----------------------------------------------------------------------------
    def _path(self, store_uri: str, key: str, etag: str) -> Path:
        digest = hashlib.sha256(f"{store_uri}\0{key}\0{etag}".encode()).hexdigest()
        return self.root / digest[:2] / digest

    # --- hits ------------------------------------------------------------------------------
    def lookup(self, store_uri: str, key: str, etag: str) -> CachedObject | None:
        """The verified entry for this version of the object, or None. A damaged entry (size
        or CRC32C off, record unreadable) is removed and reported as a miss."""
        path = self._path(store_uri, key, etag)
        record_path = path.with_name(path.name + RECORD_SUFFIX)
        try:
            record = json.loads(record_path.read_text())
            size, value = int(record["size"]), int(record["crc32c"])
            with open(path, "rb") as stream:
                actual, length = crc32c_of_stream(stream)
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.warning("dropping unreadable cache entry %s: %s", path, exc)
            self._remove(path)
            return None
        if (length, actual) != (size, value):
            log.warning("dropping damaged cache entry %s of %s/%s: %d bytes, CRC32C %s, recorded %d bytes, %s",
                        path, store_uri, key, length, to_hex(actual), size, to_hex(value))
            self._remove(path)
            return None
        os.utime(path)  # least recently used goes first
        return CachedObject(path, size, value, etag)

    # --- fills -----------------------------------------------------------------------------
    def fill(self, reader: RangeReader, store_uri: str, key: str, *, crc32c_expected: int | None = None) -> CachedObject:
        """Copy the object `reader` reads into the cache (see module) and return the entry."""
        if not reader.etag:
            raise IntegrityError(f"{store_uri}/{key}: the store gave no ETag, so a cached copy could not be tied to a version")
        path = self._path(store_uri, key, reader.etag)
        path.parent.mkdir(parents=True, exist_ok=True)
        part = path.with_name(f"{path.name}.{os.getpid()}.{threading.get_ident()}{PART_SUFFIX}")
        value = length = 0
        try:
            with open(part, "wb") as out:
                for block in reader.iter_blocks(block_size=self.block_size):
                    value = crc32c(block, value)
                    length += len(block)
                    out.write(block)
                out.flush()
                os.fsync(out.fileno())
            if length != reader.size or (crc32c_expected is not None and value != crc32c_expected):
                expected = f"{reader.size} bytes" + (f", CRC32C {to_hex(crc32c_expected)}" if crc32c_expected is not None else "")
                raise IntegrityError(f"{store_uri}/{key}: read {length} bytes with CRC32C {to_hex(value)}, "
                                     f"recorded {expected}; nothing was cached")
            os.replace(part, path)
        finally:
            part.unlink(missing_ok=True)
        record = {"store": store_uri, "key": key, "etag": reader.etag, "size": length, "crc32c": value}
        write_atomic(path.with_name(path.name + RECORD_SUFFIX), json.dumps(record).encode())  # fsyncs the folder too
        self._evict(keep=path)
        return CachedObject(path, length, value, reader.etag)

    # --- size ------------------------------------------------------------------------------
    def entries(self) -> list[Path]:
        """Every cached object file (records and unfinished fills left out)."""
        if not self.root.exists():
            return []
        return [p for p in self.root.glob("*/*") if not p.name.endswith((RECORD_SUFFIX, PART_SUFFIX))]

    def _evict(self, *, keep: Path) -> None:
        with self._lock:
            sized = []
            for path in self.entries():
                try:
                    info = path.stat()
                except FileNotFoundError:  # another process evicted it
                    continue
                sized.append((info.st_mtime_ns, info.st_size, path))
            total = sum(size for _, size, _ in sized)
            for _, size, path in sorted(sized):
                if total <= self.max_bytes:
                    break
                if path != keep:
                    self._remove(path)
                    total -= size

    @staticmethod
    def _remove(path: Path) -> None:
        """Forget an entry: its record first, so a half-removed entry is a miss, never a hit."""
        path.with_name(path.name + RECORD_SUFFIX).unlink(missing_ok=True)
        path.unlink(missing_ok=True)


__all__ = ["DEFAULT_MAX_BYTES", "CachedObject", "DiskCache"]
