"""A local disk cache of whole objects, keyed by URI + ETag, and the policy for using it.

- An entry is a file named after sha256(uri, etag): a replaced object has a new ETag and
  so a new entry; a stale copy is never served for a new version.
- Writes go to `<entry>.part`, are fsynced, then renamed: a reader sees the whole file or
  none. One lock per entry (a thread lock plus `flock` on `<entry>.lock`, so processes
  sharing the folder agree too) makes concurrent callers download an entry once.
- The folder is bounded by `max_bytes`; the least recently used entries are evicted
  after each insertion (an access refreshes the entry's mtime). A reader that already
  opened an evicted entry keeps reading it (POSIX unlink semantics).
"""

from __future__ import annotations

import enum
import fcntl
import hashlib
import os
import threading
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

from storage_core.errors import IntegrityError
from storage_core.ranges.reader import RangeReader

ADAPTIVE_FRACTION = 0.5  # download once a read needs at least half of the object


class CachePolicy(str, enum.Enum):
    """Whether a read goes through the local disk cache."""

    ALWAYS = "always"  # download to the cache first, then read locally
    NEVER = "never"  # always read by ranges; never write to local disk
    ADAPTIVE = "adaptive"  # reuse a cached copy; otherwise download only when the read needs enough of the object


def should_download(
    policy: CachePolicy | str,
    *,
    cached: bool,
    bytes_needed: int | None,
    size: int,
    fraction: float = ADAPTIVE_FRACTION,
) -> bool:
    """Decide whether to read from a whole local copy (True) or stream ranges (False).

    `bytes_needed` is the caller's estimate of how much of the object the read touches
    (None: unknown, treated as all of it). Pure: no I/O.
    """
    policy = CachePolicy(policy)
    if policy is CachePolicy.ALWAYS:
        return True
    if policy is CachePolicy.NEVER:
        return False
    if cached:
        return True
    needed = size if bytes_needed is None else bytes_needed
    return needed >= fraction * size


class DiskCache:
    """Whole objects on local disk, at most `max_bytes` of them (LRU beyond that)."""

    def __init__(self, root: str | os.PathLike[str], *, max_bytes: int) -> None:
        if max_bytes <= 0:
            raise ValueError("max_bytes must be positive")
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.max_bytes = max_bytes
        self._locks: dict[Path, threading.Lock] = {}
        self._locks_guard = threading.Lock()

    def path_for(self, uri: str, etag: str) -> Path:
        digest = hashlib.sha256(f"{uri}\0{etag}".encode()).hexdigest()
        return self.root / f"{digest}.bin"

    @contextmanager
    def _locked(self, path: Path) -> Iterator[None]:
        with self._locks_guard:
            lock = self._locks.setdefault(path, threading.Lock())
        with lock, open(path.with_suffix(".lock"), "a+b") as handle:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle.fileno(), fcntl.LOCK_UN)

    def get(self, uri: str, etag: str) -> Path | None:
        """The cached copy's path (its recency refreshed), or None."""
        path = self.path_for(uri, etag)
        try:
            os.utime(path)
        except FileNotFoundError:
            return None
        return path

    def fetch(
        self,
        uri: str,
        etag: str,
        download: Callable[[BinaryIO], int],
        *,
        expected_size: int | None = None,
    ) -> Path:
        """The cached copy, downloading it with `download(out) -> bytes written` when absent.

        On failure nothing is left at the entry's path (the `.part` file is removed) and the
        error propagates. A size other than `expected_size` raises `IntegrityError`.
        """
        path = self.path_for(uri, etag)
        with self._locked(path):
            found = self.get(uri, etag)
            if found is not None:
                return found
            part = path.with_name(f"{path.name}.{uuid.uuid4().hex}.part")
            try:
                with open(part, "wb") as out:
                    written = download(out)
                    out.flush()
                    os.fsync(out.fileno())
                if expected_size is not None and written != expected_size:
                    raise IntegrityError(f"{uri}: cached {written} bytes, expected {expected_size}", key=uri)
                os.replace(part, path)
            finally:
                part.unlink(missing_ok=True)
        self.evict(keep=path)
        return path

    def entries(self) -> list[tuple[Path, int, int]]:
        """(path, size, last use in ns) of every complete entry, least recently used first."""
        found = []
        for path in self.root.glob("*.bin"):
            try:
                stat = path.stat()
            except FileNotFoundError:
                continue
            found.append((path, stat.st_size, stat.st_mtime_ns))
        return sorted(found, key=lambda entry: entry[2])

    def evict(self, *, keep: Path | None = None) -> list[Path]:
        """Remove least recently used entries until the total fits `max_bytes`."""
        entries = self.entries()
        total = sum(size for _, size, _ in entries)
        removed = []
        for path, size, _ in entries:
            if total <= self.max_bytes:
                break
            if path == keep:
                continue
            path.unlink(missing_ok=True)  # the .lock file stays: removing it would race other lockers
            total -= size
            removed.append(path)
        return removed


def open_with_policy(
    reader: RangeReader,
    *,
    cache: DiskCache | None,
    policy: CachePolicy | str = CachePolicy.ADAPTIVE,
    bytes_needed: int | None = None,
) -> BinaryIO:
    """A file object for `reader`'s object: a local cached copy, or `reader` itself.

    The copy is keyed by `reader.name` + the ETag the reader pinned, so it is always the
    version the reader sees. Without a cache, or without an ETag to key on, it streams.
    The caller closes what it gets.
    """
    policy = CachePolicy(policy)
    if cache is None or reader.etag is None:
        if policy is CachePolicy.ALWAYS:
            raise ValueError("CachePolicy.ALWAYS needs a DiskCache and an object with an ETag")
        return reader
    cached = cache.get(reader.name, reader.etag) is not None
    if not should_download(policy, cached=cached, bytes_needed=bytes_needed, size=reader.size):
        return reader
    path = cache.fetch(reader.name, reader.etag, reader.download_to, expected_size=reader.size)
    return open(path, "rb")


__all__ = ["ADAPTIVE_FRACTION", "CachePolicy", "DiskCache", "open_with_policy", "should_download"]
