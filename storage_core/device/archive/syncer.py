"""Group durability off the writer's path: one thread that fsyncs what the writer handed over.

    writer: chunk written to the file ─> started(file, start, end)   (early write-back, no wait)
    writer: a group is due ──────────> submit(file, end)             (waits only while the
                                                                       previous fsync still runs)
    syncer thread: sync_file_range(start, end, WRITE) for every started range, then, per
                   submitted group, fdatasync ─> `synced` = end

Why a thread: an fdatasync of a group takes as long as the disk needs for it (tens of
milliseconds at 100 ms of records), and the writer keeps compressing and writing records
meanwhile. Why early write-back: the kernel would otherwise keep every written chunk
dirty in the page cache until the fsync (or 30 s), so the fsync would write the whole
group at once; started at each chunk, the disk writes while the writer works and the fsync
has only the last chunk and the device flush left (in `close` mode the writer uses only
this part: its fsync at close finds the archive mostly written).

The promise it keeps with the writer (writer.py): a group is submitted once its oldest
record is `group_ms` old, and `submit` does not return while the fsync of the previous
group still runs. So a record is durable at most `group_ms` plus one fsync after `write`
returned; when an fsync takes longer than `group_ms`, the writer waits for it (back-
pressure) instead of piling up records that no fsync covers yet.

An fsync that fails is logged and remembered (`error`); the writer refuses further records
with it, since the file's dirty pages may be gone (Linux drops them after a failed
write-back).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import threading
from collections import deque
from typing import Protocol

log = logging.getLogger(__name__)

_SYNC_FILE_RANGE_WRITE = 2  # start write-back of the range's dirty pages, do not wait


def _sync_file_range():
    """libc's sync_file_range (Linux), or None where it does not exist (the fdatasync alone
    then does all the work)."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
        function = libc.sync_file_range
    except (OSError, AttributeError, TypeError):
        return None
    function.argtypes = (ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint)
    function.restype = ctypes.c_int
    return function


_start_write_back = _sync_file_range()


class SyncTarget(Protocol):
    """An open archive as the syncer sees it: its descriptor, and a lock under which it is
    not closed (`closed` says it was)."""

    fd: int
    sync_lock: threading.Lock
    closed: bool


class GroupSyncer:
    """Runs fsyncs of submitted groups, one at a time, on its own thread."""

    def __init__(self, name: str = "ferry-archive-syncer") -> None:
        self._cv = threading.Condition()
        self._ranges: deque[tuple[SyncTarget, int, int]] = deque()  # written, write-back not started
        self._group: SyncTarget | None = None  # submitted, fsync not started
        self._syncing = False
        self._stopping = False
        self.error: OSError | None = None
        self.syncs = 0  # fsyncs done
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def started(self, target: SyncTarget, start: int, end: int) -> None:
        """Bytes [start, end) of `target` were just written: start their write-back."""
        if _start_write_back is not None:
            with self._cv:
                self._ranges.append((target, start, end))
                self._cv.notify()

    def submit(self, target: SyncTarget) -> None:
        """Fsync `target` (everything written to it so far) on the syncer's thread. Waits
        while the previous group's fsync still runs: the writer's back-pressure."""
        with self._cv:
            while (self._syncing or self._group is not None) and not self._stopping:
                self._cv.wait()
            self._group = target
            self._cv.notify_all()

    def stop(self) -> None:
        """Finish what was submitted, then end the thread."""
        with self._cv:
            self._stopping = True
            self._cv.notify_all()
        self._thread.join()

    def _run(self) -> None:
        while True:
            with self._cv:
                while not self._ranges and self._group is None and not self._stopping:
                    self._cv.wait()
                ranges, self._ranges = self._ranges, deque()
                group, self._group = self._group, None
                if group is None and not ranges and self._stopping:
                    return
                self._syncing = group is not None
            for target, start, end in ranges:
                with target.sync_lock:
                    if not target.closed:  # a closed archive was fsynced whole
                        _start_write_back(target.fd, start, end - start, _SYNC_FILE_RANGE_WRITE)
            if group is not None:
                self._fsync(group)
                with self._cv:
                    self._syncing = False
                    self.syncs += 1
                    self._cv.notify_all()

    def _fsync(self, target: SyncTarget) -> None:
        with target.sync_lock:
            if target.closed:
                return
            try:
                os.fdatasync(target.fd)  # the data and the size: what recovery reads
            except OSError as exc:
                log.error("fsync of an open archive failed: %s", exc)
                self.error = exc


__all__ = ["GroupSyncer", "SyncTarget"]
