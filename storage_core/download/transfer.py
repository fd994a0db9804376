"""Download one object to one path: ranged GETs in parallel, pinned to one ETag, into a
`.part` file, verified, made durable, then renamed into place. Each range is read into its
worker's reused buffer and written around the page cache where it can (diskio.RangeWriter).
From a store whose objects are local files (`CopyRange`: a LocalStore) the same ranges are
copied by the kernel from one open handle instead. An object of at most one range whose
size and CRC32C the catalog recorded is one GET and no HEAD (the plan already answered
what a HEAD would: asking for one byte more than recorded shows an object that grew).

What holds on failure: nothing is ever visible at the final path unless it is complete
and verified (`os.replace` of a fsynced `.part` file, then a fsync of the folder: at once,
or once per folder for many files, see `sync_folder`). The
`.part` file is removed when the download fails inside this process; one left by a
killed process is truncated and reused by the next run. With `overwrite` false an
existing file is never clobbered, even one created after planning (the rename is a
hard link, which refuses to replace).
"""

from __future__ import annotations

import errno
import logging
import os
import random
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_EXCEPTION, Future, ThreadPoolExecutor, wait
from contextlib import ExitStack, contextmanager, nullcontext, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from storage_core.budget import TransferBudget
from storage_core.checksums import combine_parts, crc32c, to_hex
from storage_core.diskio import (
    RangeWriter,
    aligned_buffer,
    fsync_dir,
    name_unnamed,
    open_unnamed,
    preallocate,
    write_all,
    write_file,
)
from storage_core.download.plan import PlannedWrite, PlanProblem, WritePlanError
from storage_core.errors import (
    AccessDenied,
    FerryError,
    IntegrityError,
    PreconditionFailed,
    StorageError,
    StorageUnavailable,
)
from storage_core.ranges.plan import split
from storage_core.stores.base import CopyRange, GetRange, GetRangeInto

MiB = 1024 * 1024
# Measured with `ferry bench download --tune` (1 GiB, loopback SeaweedFS, 2 cores shared
# with the server, each range read into a reused buffer and written with O_DIRECT):
# 16 MiB x 3-4 ranges in flight ran at 1,096-1,121 MB/s (curl to /dev/null: ~1,200);
# 8 MiB chunks cost more requests (≤1,024), 32 MiB ones more memory for no gain, and 8
# workers only add contention here. 4 rather than 3 leaves headroom for links with real
# latency. In memory: 4 x 16 MiB buffers, one per worker.
DEFAULT_CHUNK_SIZE = 16 * MiB
DEFAULT_MAX_WORKERS = 4
# From a CopyRange store each range is one kernel copy (diskio.copy_range): 4 threads copied
# 1 GiB in 0.30 s, against 0.48-1.7 s through 1 MiB buffers. An error of such a copy is the
# destination's when it is one of these, else the source's.
_DESTINATION_ERRORS = {errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EPERM, errno.EROFS}

OnProgress = Callable[[int], None]
SyncFolder = Callable[[Path], None]  # makes the renames made so far in a folder durable
log = logging.getLogger(__name__)

@dataclass(frozen=True)
class RetryPolicy:
    """Per-range retries of retryable errors: exponential backoff with full jitter.

    The default rides out a server restart of a few seconds (about 15 s of sleeps in total
    at most). PreconditionFailed is never retried here: the object changed, so only a new
    download from a fresh HEAD can help (the caller's retry).
    """

    attempts: int = 6
    base: float = 0.25
    cap: float = 4.0

    def delay(self, attempt: int, rng: random.Random | None = None) -> float:
        """Seconds to wait after failed attempt number `attempt` (0-based)."""
        ceiling = min(self.cap, self.base * 2**attempt)
        return (rng or random).uniform(ceiling / 2, ceiling)


DEFAULT_RETRY = RetryPolicy()


def plan_ranges(size: int, chunk_size: int) -> list[tuple[int, int]]:
    """[start, end) ranges covering `size` bytes, each `chunk_size` long but the last."""
    return split([(0, size)], max_size=chunk_size)


class _Cancelled(Exception):
    """A range skipped because its download (or the whole call) already failed."""


@contextmanager
def _disk(path: Path, key: str) -> Iterator[None]:
    """Map local OS errors to Ferry's tree, naming the path (original kept as __cause__)."""
    try:
        yield
    except FerryError:
        raise
    except OSError as exc:
        if isinstance(exc, PermissionError) or exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
            raise AccessDenied(f"cannot write {path}: {exc.strerror or exc}", key=key) from exc
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise StorageError(f"no space left on device for {path} (downloading {key})", key=key) from exc
        raise StorageError(f"cannot write {path}: {exc.strerror or exc} (downloading {key})", key=key) from exc


def _uri(write: PlannedWrite) -> str:
    return f"{getattr(write.source.store, 'uri', '?')}/{write.source.key}"


def download_object(
    write: PlannedWrite,
    *,
    ranges_pool: ThreadPoolExecutor,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    overwrite: bool = False,
    retry: RetryPolicy = DEFAULT_RETRY,
    on_progress: OnProgress | None = None,
    stop: threading.Event | None = None,
    budget: TransferBudget | None = None,
    sync_folder: SyncFolder = fsync_dir,
    folder_made: bool = False,
) -> Path:
    """Download `write.source` to `write.dest`; return the path.

    Each thread of `ranges_pool` keeps one `chunk_size` buffer for its life (see
    `_range_buffer`): give it a pool that ends with the download, as `download` does.
    With `budget`, every GET holds its bytes in it while in flight (many small objects
    and the ranges of large ones share one bound). `sync_folder(folder)` is called after
    the rename into `folder` (default: fsync it now); a caller placing many files may defer
    it, and must then fsync every such folder before it reports them durable.
    `folder_made`: the caller has created `write.dest`'s folder (one mkdir per folder, not
    one per file).

    Raises IntegrityError (size or CRC32C mismatch), PreconditionFailed (the object changed
    after the HEAD), AccessDenied / StorageError naming the path (not writable, no space),
    or the store's error once retries are spent. In every case `write.dest` is untouched
    and the `.part` file is gone.
    """
    source, key, part = write.source, write.source.key, write.part
    stop = stop or threading.Event()
    if _answered_by_plan(write, chunk_size):
        return _download_whole(write, overwrite=overwrite, retry=retry, on_progress=on_progress, stop=stop,
                               budget=budget, sync_folder=sync_folder, folder_made=folder_made)
    meta = _with_retries(lambda: source.store.head(key), retry=retry, stop=stop)
    if source.size is not None and meta.size != source.size:
        raise IntegrityError(
            f"{_uri(write)}: the catalog records {source.size} bytes but the store holds {meta.size}", key=key
        )
    expected = source.crc32c if source.crc32c is not None else meta.crc32c
    with _disk(part, key):
        if not folder_made:
            part.parent.mkdir(parents=True, exist_ok=True)
        fd = _create_part(part, os.O_RDWR)  # RDWR: copy_range reads back
    failed = threading.Event()
    futures: list[Future[int]] = []
    stack = ExitStack()
    try:
        with _disk(part, key):
            preallocate(fd, meta.size)
        spans = plan_ranges(meta.size, chunk_size)
        if isinstance(source.store, CopyRange):
            # Pinned by opening once: the ETag is checked at open and the handle keeps reading
            # the object as it was even if the key is replaced meanwhile (the CRC check still runs).
            opened = stack.enter_context(source.store.open_read(key, if_match=meta.etag))
            for start, end in spans:
                futures.append(ranges_pool.submit(_copy_range, write, opened, start, end, fd,
                                                  on_progress=on_progress, stops=(stop, failed)))
        else:
            with _disk(part, key):
                writer = RangeWriter(part, fd)
            stack.callback(writer.close)
            for start, end in spans:
                futures.append(ranges_pool.submit(_fetch_range, write, meta.etag, start, end, writer, retry=retry,
                                                  on_progress=on_progress, stops=(stop, failed), budget=budget))
        done, _ = wait(futures, return_when=FIRST_EXCEPTION)
        errors = [f.exception() for f in done if f.exception() is not None]
        if errors:
            raise next((e for e in errors if not isinstance(e, _Cancelled)), errors[0])
        crcs = [f.result() for f in futures]
        actual = combine_parts([(value, end - start) for value, (start, end) in zip(crcs, spans)])
        if expected is not None and actual != expected:
            raise IntegrityError(
                f"{_uri(write)}: CRC32C {to_hex(actual)} does not match the expected {to_hex(expected)}; "
                f"nothing was written to {write.dest}",
                key=key,
            )
        with _disk(part, key):
            os.fsync(fd)
    except BaseException:
        failed.set()
        for future in futures:
            future.cancel()
        wait(futures)  # no worker may still be writing to fd when it is closed
        stack.close()
        os.close(fd)
        part.unlink(missing_ok=True)
        raise
    stack.close()
    os.close(fd)
    return _put_in_place(write, overwrite=overwrite, sync_folder=sync_folder)


def make_folders(writes: list[PlannedWrite]) -> None:
    """Create the destination folder of every write, each once (for `folder_made`), raising
    AccessDenied / StorageError naming the folder and the key of its first write."""
    firsts: dict[Path, str] = {}
    for write in writes:
        firsts.setdefault(write.dest.parent, write.source.key)
    for folder, key in firsts.items():
        with _disk(folder, key):
            folder.mkdir(parents=True, exist_ok=True)


def _create_part(part: Path, access: int) -> int:
    """`part` created new and opened (`access`: os.O_WRONLY or os.O_RDWR). O_EXCL refuses to
    follow a symlink planted at that name. A `.part` left by a killed run is ours: unlinked
    and created again rather than truncated, since a run killed between link and unlink
    leaves it as a second name of the final file."""
    flags = access | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC
    try:
        return os.open(part, flags, 0o644)
    except FileExistsError:
        part.unlink(missing_ok=True)
        return os.open(part, flags, 0o644)


def _put_in_place(write: PlannedWrite, *, overwrite: bool, sync_folder: SyncFolder) -> Path:
    """The verified, fsynced `.part` file renamed to its destination, the rename handed to
    `sync_folder` to be made durable."""
    part = write.part
    try:
        with _disk(write.dest, write.source.key):
            linked = _install(part, write.dest, overwrite=overwrite)
            sync_folder(write.dest.parent)
    except BaseException:
        part.unlink(missing_ok=True)
        raise
    if linked:  # the `.part` name is a second name of the placed file
        part.unlink(missing_ok=True)
    return write.dest


_seen = threading.local()


def _reads_of(store: object) -> tuple[bool, bool, bool]:
    """Whether `store` has GetRange, GetRangeInto, CopyRange. A runtime protocol check costs
    ~20 µs and a small file asked three; each thread asks again only when its store changes."""
    if getattr(_seen, "store", None) is not store:
        _seen.kinds = (isinstance(store, GetRange), isinstance(store, GetRangeInto), isinstance(store, CopyRange))
        _seen.store = store
    return _seen.kinds


def _answered_by_plan(write: PlannedWrite, chunk_size: int) -> bool:
    """The catalog recorded what a HEAD would tell (size, CRC32C) of an object of one range,
    in a store read over the network (a local store's HEAD is a stat and its copy is pinned
    by its open handle: it keeps the ranged path)."""
    source = write.source
    if source.size is None or source.crc32c is None or not 0 < source.size <= chunk_size:
        return False
    get_range, _, copy_range = _reads_of(source.store)
    return get_range and not copy_range


def _download_whole(
    write: PlannedWrite,
    *,
    overwrite: bool,
    retry: RetryPolicy,
    on_progress: OnProgress | None,
    stop: threading.Event,
    budget: TransferBudget | None,
    sync_folder: SyncFolder,
    folder_made: bool,
) -> Path:
    """One GET for a small object the catalog describes, checked against its recorded size
    and CRC32C, written to a file without a name (or a `.part` one), fsynced and linked to
    its destination. The same guarantees as the ranged path."""
    source, key, part = write.source, write.source.key, write.part
    size = source.size
    assert size is not None and source.crc32c is not None
    if not folder_made:
        with _disk(part, key):
            part.parent.mkdir(parents=True, exist_ok=True)
    with budget.hold(size) if budget is not None else nullcontext():
        try:
            data = _with_retries(lambda: _get_whole(write, size), retry=retry, stop=stop)
            actual = crc32c(data)
            if actual != source.crc32c:
                raise IntegrityError(
                    f"{_uri(write)}: CRC32C {to_hex(actual)} does not match the expected {to_hex(source.crc32c)}; "
                    f"nothing was written to {write.dest}",
                    key=key,
                )
            placed = _place_unnamed(write, data, overwrite=overwrite, sync_folder=sync_folder)
            if placed is None:
                _write_part(write, data)
            if on_progress is not None:  # a callback that raises leaves no `.part` behind either
                on_progress(size)
        except BaseException:
            with suppress(OSError):  # a `.part` a killed run left goes too; the first error is the one raised
                part.unlink(missing_ok=True)
            raise
    return placed or _put_in_place(write, overwrite=overwrite, sync_folder=sync_folder)


def _write_part(write: PlannedWrite, data: memoryview) -> None:
    """`data` in a new `.part` file, fsynced (the caller removes it on failure)."""
    with _disk(write.part, write.source.key):
        fd = _create_part(write.part, os.O_WRONLY)
        try:
            write_all(fd, data, 0)
            os.fsync(fd)
        finally:
            os.close(fd)


def _place_unnamed(write: PlannedWrite, data: memoryview, *, overwrite: bool, sync_folder: SyncFolder) -> Path | None:
    """The verified bytes of a small object written to a file without a name (diskio:
    cheaper than a `.part`, and nothing to clean up after a kill; its whole blocks around
    the page cache where the file system allows it), fsynced, then linked to
    its destination (with `overwrite`, linked to its `.part` name and renamed over it). None
    where the file system cannot: the caller writes a `.part` file instead."""
    dest, key = write.dest, write.source.key
    with _disk(dest, key):
        fd = open_unnamed(dest.parent, direct=True)
    if fd is None:
        return None
    try:
        with _disk(dest, key):
            write_file(fd, data)
            os.fsync(fd)
            if not overwrite:
                try:
                    if not name_unnamed(fd, dest):
                        return None
                except FileExistsError as exc:
                    raise _appeared(dest) from exc
            else:  # the caller removes the `.part` name if the rename fails
                write.part.unlink(missing_ok=True)
                if not name_unnamed(fd, write.part):
                    return None
                os.replace(write.part, dest)
            sync_folder(dest.parent)
    finally:
        os.close(fd)
    return dest


def _get_whole(write: PlannedWrite, size: int) -> memoryview:
    """The object's bytes, asking for one byte more than recorded: an object that grew
    answers with more, one that shrank with less (IntegrityError either way)."""
    store, key = write.source.store, write.source.key
    if _reads_of(store)[1]:
        view = _whole_buffer(size + 1)
        got = store.get_range_into(key, 0, view)
    else:  # a store (or test wrapper) that only returns bytes
        view = memoryview(store.get_range(key, 0, size + 1))
        got = len(view)
    if got != size:
        held = "more" if got > size else got
        raise IntegrityError(f"{_uri(write)}: the catalog records {size} bytes but the store holds {held}", key=key)
    return view[:size]


def _install(part: Path, dest: Path, *, overwrite: bool) -> bool:
    """`part` placed at `dest`; True when `part` is still there (linked: a second name)."""
    if overwrite:
        os.replace(part, dest)
        return False
    try:
        os.link(part, dest)  # unlike rename, refuses to replace a file that appeared since planning
    except FileExistsError as exc:
        raise _appeared(dest) from exc
    except OSError as exc:
        if exc.errno not in (errno.EPERM, errno.EOPNOTSUPP, errno.EXDEV, errno.EMLINK):
            raise
        os.replace(part, dest)  # no hard links on this file system: plain atomic rename
        return False
    return True


def _appeared(dest: Path) -> WritePlanError:
    return WritePlanError([PlanProblem(
        "exists", f"{dest} appeared during the download; left untouched (pass overwrite=True to replace it)",
        path=dest)])


def _fetch_range(
    write: PlannedWrite,
    etag: str,
    start: int,
    end: int,
    writer: RangeWriter,
    *,
    retry: RetryPolicy,
    on_progress: OnProgress | None,
    stops: tuple[threading.Event, ...],
    budget: TransferBudget | None = None,
) -> int:
    """GET [start, end) pinned to `etag`, write it at `start`; return its CRC32C. The range
    holds its bytes of `budget` from the first request until it is written."""
    source = write.source

    def fetch() -> memoryview:
        if isinstance(source.store, GetRangeInto):
            view = _range_buffer(end - start)
            got = source.store.get_range_into(source.key, start, view, if_match=etag)
        else:  # a store (or test wrapper) that only returns bytes
            view = memoryview(source.store.get_range(source.key, start, end, if_match=etag))
            got = len(view)
        if got != end - start:  # our own check, whatever the store verified
            raise StorageUnavailable(
                f"{_uri(write)}: asked for bytes [{start}, {end}), got {got} bytes", key=source.key
            )
        return view

    with budget.hold(end - start) if budget is not None else nullcontext():
        data = _with_retries(fetch, retry=retry, stop=stops)
        value = crc32c(data)
        with _disk(write.part, source.key):
            writer.write(data, start)
        if on_progress is not None:
            on_progress(end - start)
    return value


_buffers = threading.local()
# A file thread keeps one page-aligned buffer of this size for the small objects it fetches
# whole (written from it around the page cache, see _place_unnamed); a larger object gets
# its own buffer. 16 file threads: 16 MiB, for the download's life.
SMALL_BUFFER = 1 * MiB


def _whole_buffer(size: int) -> memoryview:
    """Page-aligned memory for one object fetched whole: the calling file thread's reused
    buffer when `size` fits in SMALL_BUFFER, else a new one (unmapped once dropped)."""
    if size > SMALL_BUFFER:
        return aligned_buffer(size)
    buffer = getattr(_buffers, "small", None)
    if buffer is None:
        buffer = _buffers.small = aligned_buffer(SMALL_BUFFER)
    return buffer[:size]


def _range_buffer(size: int) -> memoryview:
    """The calling worker's buffer for one range, reused from range to range, page-aligned
    so that RangeWriter can write it around the page cache.

    One per range thread, kept for the thread's life (`download`'s pool ends with the call),
    so memory stays at `max_workers × chunk_size`. A new buffer per range made the kernel map
    and zero fresh pages every time: twice the system time, a fifth slower (bench.download).
    """
    buffer = getattr(_buffers, "buffer", None)
    if buffer is None or len(buffer) < size:
        buffer = _buffers.buffer = aligned_buffer(size)
    return buffer[:size]


def _copy_range(
    write: PlannedWrite,
    opened: BinaryIO,
    start: int,
    end: int,
    fd: int,
    *,
    on_progress: OnProgress | None,
    stops: tuple[threading.Event, ...],
) -> int:
    """Copy [start, end) of the object `opened` (by a CopyRange store's `open_read`) to `fd`
    at `start` (a kernel copy where it can); return the CRC32C of the bytes written."""
    if any(s.is_set() for s in stops):
        raise _Cancelled()
    try:
        value, copied = write.source.store.copy_range(opened, start, end, fd)
    except OSError as exc:
        if exc.errno in _DESTINATION_ERRORS:
            with _disk(write.part, write.source.key):
                raise
        raise StorageError(f"cannot read {_uri(write)}: {exc.strerror or exc}", key=write.source.key) from exc
    if copied < end - start:
        raise IntegrityError(f"{_uri(write)} ended at byte {start + copied}; it shrank during the download",
                             key=write.source.key)
    if on_progress is not None:
        on_progress(end - start)
    return value


def _with_retries(call, *, retry: RetryPolicy, stop: threading.Event | tuple[threading.Event, ...]):
    stops = stop if isinstance(stop, tuple) else (stop,)
    for attempt in range(retry.attempts):
        if any(s.is_set() for s in stops):
            raise _Cancelled()
        try:
            return call()
        except FerryError as exc:
            # PreconditionFailed is "retryable" for the caller (fresh HEAD), never for a range
            if not exc.retryable or isinstance(exc, PreconditionFailed) or attempt == retry.attempts - 1:
                raise
            delay = retry.delay(attempt)
            log.warning("%s; retry %d/%d in %.2fs", exc, attempt + 1, retry.attempts - 1, delay)
        _sleep(delay, stops)
    raise AssertionError("unreachable")


def _sleep(seconds: float, stops: tuple[threading.Event, ...]) -> None:
    """Sleep, but wake at once (raising _Cancelled) when the download is being cancelled."""
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        if stops[0].wait(min(left, 0.05)) or any(s.is_set() for s in stops):
            raise _Cancelled()


__all__ = ["DEFAULT_CHUNK_SIZE", "DEFAULT_MAX_WORKERS", "DEFAULT_RETRY", "OnProgress", "RetryPolicy", "SyncFolder",
           "download_object", "make_folders", "plan_ranges"]
