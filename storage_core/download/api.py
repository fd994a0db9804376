"""`download`: plan every write, then move the bytes (several files at once, each in ranges).

The one download of the project: `storage_core.retrieve.download` is this function.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor, wait
from pathlib import Path
from queue import Empty, SimpleQueue

from storage_core.budget import TransferBudget
from storage_core.config import FerrySettings
from storage_core.download.plan import Layout, PlannedWrite, plan_writes
from storage_core.download.targets import Target, sources_of
from storage_core.download.transfer import (
    DEFAULT_CHUNK_SIZE,
    DEFAULT_MAX_WORKERS,
    DEFAULT_RETRY,
    OnProgress,
    RetryPolicy,
    _Cancelled,
    download_object,
    make_folders,
)
from storage_core.diskio import fsync_dir
from storage_core.errors import ConfigError, StorageError

log = logging.getLogger(__name__)

DEFAULT_MAX_FILES = 16  # files in flight at once: small files cost latency (a GET, an fsync), not bandwidth


def download(
    target: Target | Iterable[Target],
    dest: str | os.PathLike[str],
    *,
    layout: Layout = "by_recording",
    overwrite: bool = False,
    resume: bool = False,
    on_progress: OnProgress | None = None,
    on_plan: Callable[[list[PlannedWrite]], None] | None = None,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    max_workers: int = DEFAULT_MAX_WORKERS,
    max_files: int = DEFAULT_MAX_FILES,
    retry: RetryPolicy = DEFAULT_RETRY,
    settings: FerrySettings | None = None,
) -> list[Path]:
    """Download one target or many under `dest`; return every path written, in plan order.

    `target` is one DownloadSource, catalog RecordingResult or ObjectInfo (what
    `storage_core.retrieve.query` returns), or any iterable mixing them (told apart by
    type, so a one-element list still returns a list; a recording stands for all its
    objects, in catalog order). Catalog results open their stores with `settings`
    (FERRY_* environment unless given). Destinations follow `layout` (see
    storage_core.download.plan). `on_progress(n)` is called with each `n` bytes written,
    from worker threads but never two calls at once.

    `on_plan(writes)` is called once with the checked plan, before the first byte moves
    (a progress bar learns its total there).

    `resume=True` keeps files already at their destination with the recorded size and
    CRC32C (re-running a download that was interrupted fetches only what is missing);
    their paths are returned like the others. Files that differ are still refused unless
    `overwrite`.

    Before any write, the whole plan is checked and every problem raised together as a
    WritePlanError (nothing written). During I/O, memory stays below about
    `2 × max_workers × chunk_size + max_files MiB` whatever the object sizes (the range
    workers' buffers, the bytes of the GETs in flight, which one TransferBudget bounds, and
    each file thread's buffer for small objects, transfer.SMALL_BUFFER); each object is
    fetched in `chunk_size` ranges pinned to the ETag of its HEAD (one GET, no HEAD, for an
    object of one range whose size and CRC32C the catalog recorded), verified (size, CRC32C) and renamed
    into place only when complete. The first failure stops the call and is raised: files
    already completed stay (each is whole and verified), the failing and unfinished ones
    leave nothing at their final paths and no `.part` files. PreconditionFailed (an object
    changed mid-download) is `retryable`: calling again plans from fresh HEADs.
    """
    if chunk_size <= 0 or max_workers <= 0 or max_files <= 0:
        raise ConfigError(f"chunk_size, max_workers and max_files must be positive "
                          f"(got {chunk_size}, {max_workers}, {max_files})")
    plan = plan_writes(sources_of(target, settings), dest, layout=layout, overwrite=overwrite, resume=resume)
    if on_plan is not None:
        on_plan(plan)
    missing = [write for write in plan if not write.present]
    if not missing:
        return [write.dest for write in plan]
    make_folders(missing)  # once per folder, not once per file
    progress = _serialized(on_progress)
    folders = _DeferredFolderSync()
    stop = threading.Event()
    budget = TransferBudget(requests=max_files, nbytes=max_workers * chunk_size)
    queue: SimpleQueue[PlannedWrite] = SimpleQueue()
    for write in missing:
        queue.put(write)
    failures: list[BaseException] = []

    def fetch_files() -> None:
        """Take the next file until none is left or the download stops (a few threads do
        this, each a loop: no future, queue entry and wake-up per file)."""
        while not stop.is_set():
            try:
                write = queue.get_nowait()
            except Empty:
                return
            try:
                download_object(write, ranges_pool=ranges_pool, chunk_size=chunk_size, overwrite=overwrite,
                                retry=retry, on_progress=progress, stop=stop, budget=budget,
                                sync_folder=folders.add, folder_made=True)
            except BaseException as exc:  # noqa: BLE001 - kept, then raised by the caller's thread
                failures.append(exc)
                stop.set()
                return

    threads = min(max_files, len(missing))
    with ThreadPoolExecutor(max_workers, thread_name_prefix="ferry-range") as ranges_pool, \
            ThreadPoolExecutor(threads, thread_name_prefix="ferry-file") as files_pool:
        workers = [files_pool.submit(fetch_files) for _ in range(threads)]
        try:
            wait(workers)
        finally:
            # on an interrupt (Ctrl-C) stop everything, then wait for the running files to
            # clean up their `.part` files
            stop.set()
            wait(workers)
            unsynced = folders.sync_all()  # the files placed are made durable, whatever else failed
    real = [e for e in failures if not isinstance(e, _Cancelled)]
    if real:
        raise real[0]
    if failures:
        raise RuntimeError("download cancelled")  # only reachable through an interrupt
    if unsynced is not None:
        raise StorageError(f"cannot make the files written to {unsynced.filename} durable: "
                           f"{unsynced.strerror or unsynced}") from unsynced
    return [write.dest for write in plan]


def plan_download(
    target: Target | Iterable[Target],
    dest: str | os.PathLike[str],
    *,
    layout: Layout = "by_recording",
    overwrite: bool = False,
    resume: bool = False,
    settings: FerrySettings | None = None,
) -> list[PlannedWrite]:
    """Only the plan of `download` (nothing written): every problem raised at once as a WritePlanError."""
    return plan_writes(sources_of(target, settings), dest, layout=layout, overwrite=overwrite, resume=resume)


class _DeferredFolderSync:
    """The folders files were renamed into, fsynced once each at the end of the download
    rather than once per file (1,000 small files into one folder: one fsync, not 1,000).
    A file is durable before the call returns either way; a crash before that leaves
    at most a verified file's rename undone, never a partial file at a final path."""

    def __init__(self) -> None:
        self._folders: set[Path] = set()
        self._lock = threading.Lock()

    def add(self, folder: Path) -> None:
        if folder in self._folders:  # most files go to a folder added already: no lock to wait for
            return
        with self._lock:
            self._folders.add(folder)

    def sync_all(self) -> OSError | None:
        """fsync every folder added; the first failure (after trying them all) is returned,
        for the caller to raise unless an error of its own is already on its way."""
        with self._lock:
            folders, self._folders = sorted(self._folders), set()
        failure: OSError | None = None
        for folder in folders:
            try:
                fsync_dir(folder)
            except OSError as exc:
                exc.filename = exc.filename or str(folder)
                failure = failure or exc
                log.warning("fsync of %s failed: %s", folder, exc)
        return failure


def _serialized(on_progress: OnProgress | None) -> OnProgress | None:
    """The caller's callback, never run by two threads at once."""
    if on_progress is None:
        return None
    lock = threading.Lock()

    def report(nbytes: int) -> None:
        with lock:
            on_progress(nbytes)

    return report


__all__ = ["DEFAULT_MAX_FILES", "download", "plan_download"]
