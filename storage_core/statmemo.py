"""A persisted stat memo: the CRC32C of a local file, remembered by its stat, as git's index
remembers a file's hash, so a scan of an unchanged landing folder reads no file again.

An entry is (path, st_dev, st_ino, size, mtime_ns, ctime_ns) -> CRC32C, with the time the
read of those bytes began (no later than the entry's write). It answers only for a file
whose stat is still exactly that, and only when the file's times are older than that
read by more than the file system's timestamp granularity: a file changed within the
same clock tick as the read could otherwise keep its stat (git's racy-timestamp rule,
taken from the start of the read rather than the memo's write, so a long read cannot
hide a change made while it ran); such an entry is read again next time and then
rewritten, settled. ctime counts like mtime: it cannot be set from
user space and moves with every write, so restoring an mtime (`touch -d`) does not hide a
rewrite.

Where it lives: one SQLite file per Ferry home (`FERRY_HOME/stat-memo.sqlite3`), not the
catalog. Device and inode numbers are facts of the machine that mounts the landing
folder, while the catalog may be a PostgreSQL shared by many machines; the memo is a
cache (losing it costs one read of each file) and no durable record, so it needs no
migration, and SQLite's WAL lets two ingests on one machine read and write it at once.
The memo never fails a transfer: a memo that cannot be read or written is logged and
treated as empty.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
from collections.abc import Iterable
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

# mtime granularity of the file systems a landing folder may be on: ext4/xfs/btrfs tick
# with the kernel's coarse clock (a few ms), ext3 and HFS+ in 1 s, FAT in 2 s
GRANULARITY_NS = 2_000_000_000
FILE_NAME = "stat-memo.sqlite3"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS stat_memo (
    path TEXT PRIMARY KEY,
    dev INTEGER NOT NULL,
    ino INTEGER NOT NULL,
    size INTEGER NOT NULL,
    mtime_ns INTEGER NOT NULL,
    ctime_ns INTEGER NOT NULL,
    crc32c INTEGER NOT NULL,
    read_ns INTEGER NOT NULL
)
"""


@dataclass(frozen=True)
class FileStamp:
    """What a file's stat says about its bytes: same stamp, same bytes (unless racy)."""

    dev: int
    ino: int
    size: int
    mtime_ns: int
    ctime_ns: int

    @classmethod
    def of(cls, info: os.stat_result) -> FileStamp:
        return cls(info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns, info.st_ctime_ns)


@dataclass(frozen=True)
class FileRead:
    """A local file read whole: its stamp when opened, and when the read began (wall clock)."""

    stamp: FileStamp
    started_ns: int


@dataclass(frozen=True)
class MemoEntry:
    stamp: FileStamp
    crc32c: int
    read_ns: int  # when the read that computed `crc32c` began

    def answers(self, stamp: FileStamp, granularity_ns: int) -> bool:
        """The file still has this stamp, and its times were settled when it was read."""
        return stamp == self.stamp and max(stamp.mtime_ns, stamp.ctime_ns) < self.read_ns - granularity_ns


class StatMemo:
    """The memo in one SQLite file (created on first write). Thread-safe."""

    def __init__(self, path: str | os.PathLike[str], *, granularity_ns: int = GRANULARITY_NS) -> None:
        self.path = Path(path)
        self.granularity_ns = granularity_ns
        self._lock = threading.Lock()

    @classmethod
    def in_home(cls, home: str | os.PathLike[str]) -> StatMemo:
        return cls(Path(home) / FILE_NAME)

    def _connect(self) -> sqlite3.Connection:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        connection = sqlite3.connect(self.path, timeout=10)
        connection.execute("PRAGMA journal_mode=WAL")
        connection.execute("PRAGMA synchronous=NORMAL")  # a cache: a lost last write costs one read
        connection.execute(_SCHEMA)
        return connection

    def entries_under(self, root: str | os.PathLike[str]) -> dict[str, MemoEntry]:
        """Every entry for a file below the folder `root` (absolute), by path."""
        base = os.fspath(root).rstrip("/") + "/"
        query = ("SELECT path, dev, ino, size, mtime_ns, ctime_ns, crc32c, read_ns FROM stat_memo "
                 "WHERE path >= ? AND path < ?")
        if not self.path.exists():
            return {}
        try:
            with self._lock, closing(self._connect()) as connection:
                rows = connection.execute(query, (base, base[:-1] + "0")).fetchall()  # "0" sorts right after "/"
        except sqlite3.Error as exc:
            log.warning("stat memo %s unreadable (%s); files are read again", self.path, exc)
            return {}
        return {path: MemoEntry(FileStamp(dev, ino, size, mtime, ctime), crc, read)
                for path, dev, ino, size, mtime, ctime, crc, read in rows}

    def lookup(self, known: dict[str, MemoEntry], path: str, stamp: FileStamp) -> int | None:
        """The CRC32C `known` (from `entries_under`) holds for `path` with this stamp, if it answers."""
        entry = known.get(path)
        return entry.crc32c if entry is not None and entry.answers(stamp, self.granularity_ns) else None

    def record(self, files: Iterable[tuple[str, FileRead, int]]) -> None:
        """Remember (path, read, CRC32C) of files read whole."""
        rows = [(path, r.stamp.dev, r.stamp.ino, r.stamp.size, r.stamp.mtime_ns, r.stamp.ctime_ns, value, r.started_ns)
                for path, r, value in files]
        if not rows:
            return
        try:
            with self._lock, closing(self._connect()) as connection, connection:
                connection.executemany("INSERT OR REPLACE INTO stat_memo VALUES (?, ?, ?, ?, ?, ?, ?, ?)", rows)
        except sqlite3.Error as exc:
            log.warning("stat memo %s not written (%s); these files are read again next time", self.path, exc)

    def forget(self, paths: Iterable[str]) -> None:
        """Drop the entries of files that are gone."""
        rows = [(path,) for path in paths]
        if not rows:
            return
        try:
            with self._lock, closing(self._connect()) as connection, connection:
                connection.executemany("DELETE FROM stat_memo WHERE path = ?", rows)
        except sqlite3.Error as exc:
            log.warning("stat memo %s not pruned (%s)", self.path, exc)


__all__ = ["FILE_NAME", "GRANULARITY_NS", "FileRead", "FileStamp", "MemoEntry", "StatMemo"]
