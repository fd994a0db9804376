"""Upload one local file, or copy one stored object, to a store: one PUT when small, else
a parallel multipart upload. A file into a store that can copy local files (`CopyFile`: a
local folder) is one kernel copy, whatever its size.

Guarantees:
- memory stays bounded: at most `max_concurrency` parts are read and in flight at once, and
  with a shared `budget` (storage_core.budget) the whole batch of files and parts holds at
  most its bytes; a small file is read once, checksummed in memory and sent in one PUT;
- every part carries a CRC32C the store verifies; the whole-object CRC32C is combined
  from the part checksums (no second read of the file);
- the source is checked against its identity (size and mtime of a file, the ETag of an
  object) while it is read: a source that changes mid-upload fails with SourceChanged
  and nothing is stored;
- on failure the multipart upload is aborted (a failed abort raises AbortFailed, with the
  upload id, never swallowed) — unless `keep_resumable` is set and the error is retryable,
  in which case the upload is left for `resume` and its id was already handed to `journal`.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, BinaryIO, Protocol

from contextlib import nullcontext

from storage_core.budget import TransferBudget
from storage_core.checksums import combine_parts, crc32c
from storage_core.errors import (
    AbortFailed,
    FerryError,
    ObjectNotFound,
    PartUploadFailed,
    PreconditionFailed,
    SourceChanged,
    StorageError,
    UploadAborted,
)
from storage_core.parts import DEFAULT_PART_SIZE, Part, choose_part_size, plan_parts
from storage_core.retry import call_with_retries
from storage_core.statmemo import FileRead, FileStamp
from storage_core.stores.base import CopyFile, GetRange, Multipart, ObjectMeta, Put

log = logging.getLogger(__name__)

OnProgress = Callable[[int], None]
SMALL_READ_LIMIT = 64 * 1024 * 1024  # single PUTs above this stream instead of being read whole


@dataclass(frozen=True)
class FileIdentity:
    """What a manifest recorded about a source file; a mismatch means it changed."""

    size: int
    mtime_ns: int

    @classmethod
    def of(cls, stat: os.stat_result) -> FileIdentity:
        return cls(stat.st_size, stat.st_mtime_ns)


@dataclass(frozen=True)
class CompletedPart:
    number: int
    size: int
    crc32c: int
    etag: str


@dataclass(frozen=True)
class ResumeState:
    """A multipart upload recorded earlier: its id, part size and the parts known stored."""

    upload_id: str
    part_size: int
    parts: dict[int, CompletedPart] = field(default_factory=dict)


class UploadJournal(Protocol):
    """Where progress is made durable (the catalog). Called from worker threads."""

    def started(self, upload_id: str, part_size: int) -> None: ...

    def part_stored(self, part: CompletedPart) -> None: ...


@dataclass(frozen=True)
class UploadResult:
    key: str
    size: int
    crc32c: int
    etag: str
    upload_id: str | None  # None for a single PUT
    parts_sent: int
    parts_reused: int
    source_read: FileRead | None = None  # a local file's stat when opened, and when (for the stat memo)


def _holding(budget: TransferBudget | None, nbytes: int):
    return budget.hold(nbytes) if budget is not None else nullcontext()


def _check_identity(path: Path, expected: FileIdentity, handle: BinaryIO | None = None) -> None:
    now = FileIdentity.of(os.fstat(handle.fileno()) if handle is not None else path.stat())
    if now != expected:
        raise SourceChanged(
            f"{path} changed while it was being uploaded (size {expected.size} -> {now.size}, "
            f"mtime {expected.mtime_ns} -> {now.mtime_ns})",
            key=str(path),
        )


class _Source(Protocol):
    """What an upload reads from: exact byte ranges of a source that must not change."""

    name: str  # the path or URI, for messages
    size: int

    def read(self, start: int, end: int) -> bytes:
        """Exactly bytes [start, end) of the source as planned, or SourceChanged."""
        ...

    def check(self) -> None:
        """SourceChanged if the source is no longer what was planned."""
        ...


class _LocalFile:
    """A local file, checked against its identity (size, mtime) around every read."""

    def __init__(self, handle: BinaryIO, path: Path, identity: FileIdentity) -> None:
        self.handle, self.path, self.identity = handle, path, identity
        self.name, self.size = str(path), identity.size

    def read(self, start: int, end: int) -> bytes:
        data = os.pread(self.handle.fileno(), end - start, start)
        if len(data) != end - start:
            self.check()
            raise SourceChanged(f"{self.path} shrank while it was being uploaded", key=self.name)
        self.check()
        return data

    def check(self) -> None:
        _check_identity(self.path, self.identity, self.handle)


class _GuardedReader:
    """A reader over a local file that re-checks its identity when it reaches the end, so a
    streaming PUT fails before the store commits torn bytes."""

    def __init__(self, source: _LocalFile, on_progress: OnProgress | None) -> None:
        self._source, self._on_progress = source, on_progress
        self._read = 0

    def read(self, size: int = -1) -> bytes:
        block = self._source.handle.read(size)
        self._read += len(block)
        if self._on_progress and block:
            self._on_progress(len(block))
        if not block or self._read >= self._source.size:
            self._source.check()
        return block


class _StoredObject:
    """An object in a store (a bucket-prefix landing source): every ranged GET is pinned to
    the ETag seen when the upload was planned, so a replaced object fails as SourceChanged
    rather than mixing two versions into one upload."""

    def __init__(self, store: GetRange, key: str, *, uri: str, size: int, etag: str, attempts: int) -> None:
        self.store, self.key, self.etag, self.attempts = store, key, etag, attempts
        self.name, self.size = uri, size

    def read(self, start: int, end: int) -> bytes:
        def get() -> bytes:
            try:
                return self.store.get_range(self.key, start, end, if_match=self.etag)
            except PreconditionFailed as exc:  # not retryable here: only a new plan can help
                raise SourceChanged(f"{self.name} was replaced while it was being uploaded", key=self.name) from exc
            except ObjectNotFound as exc:
                raise SourceChanged(f"{self.name} no longer exists", key=self.name) from exc

        data = call_with_retries(get, attempts=self.attempts, what=f"read {self.name}")
        if len(data) != end - start:
            raise SourceChanged(f"{self.name}: asked for bytes [{start}, {end}), got {len(data)}", key=self.name)
        return data

    def check(self) -> None:
        pass  # every read was pinned to the ETag


def upload_file(
    store: Put | Multipart,
    path: str | os.PathLike[str],
    key: str,
    *,
    part_size: int | None = None,
    max_concurrency: int = 4,
    on_progress: OnProgress | None = None,
    identity: FileIdentity | None = None,
    journal: UploadJournal | None = None,
    resume: ResumeState | None = None,
    keep_resumable: bool = False,
    part_attempts: int = 6,
    budget: TransferBudget | None = None,
) -> UploadResult:
    """Upload `path` to `key`. See the module docstring for what holds on failure. With
    `budget`, each request (the PUT, or each part) holds its bytes in it while in flight."""
    path = Path(path)
    try:
        handle = open(path, "rb")
    except FileNotFoundError as exc:
        raise SourceChanged(f"{path} no longer exists", key=str(path)) from exc
    except PermissionError as exc:
        raise SourceChanged(f"{path} is not readable: permission denied", key=str(path)) from exc
    with handle:
        started_ns = time.time_ns()  # before the stat: a change from here on is a later tick, or racy
        opened = os.fstat(handle.fileno())
        current = FileIdentity.of(opened)
        identity = identity or current
        if current != identity:
            _check_identity(path, identity, handle)
        source = _LocalFile(handle, path, identity)
        if resume is None and source.size <= store.multipart_threshold and (
                isinstance(store, CopyFile) or source.size > SMALL_READ_LIMIT):
            with _holding(budget, 0):  # a kernel copy or a stream: no buffer to count
                if isinstance(store, CopyFile):
                    result = _copied_put(store, source, key, on_progress)
                else:  # a store with a huge multipart threshold
                    result = _streamed_put(store, source, key, on_progress)
        else:
            result = _upload(store, source, key, part_size=part_size, max_concurrency=max_concurrency,
                             on_progress=on_progress, journal=journal, resume=resume,
                             keep_resumable=keep_resumable, part_attempts=part_attempts, budget=budget)
        return replace(result, source_read=FileRead(FileStamp.of(opened), started_ns))


def upload_object(
    store: Put | Multipart,
    source_store: GetRange,
    source_key: str,
    key: str,
    *,
    source_uri: str,
    size: int,
    etag: str,
    part_size: int | None = None,
    max_concurrency: int = 4,
    on_progress: OnProgress | None = None,
    journal: UploadJournal | None = None,
    resume: ResumeState | None = None,
    keep_resumable: bool = False,
    part_attempts: int = 6,
    budget: TransferBudget | None = None,
) -> UploadResult:
    """Copy the object `source_key` of `source_store` (size `size`, ETag `etag`) to `key`,
    through this process: ranged GETs of part size, each checksummed and sent as a part
    whose CRC32C the store verifies. The same guarantees as `upload_file` hold; a source
    object that is replaced or deleted meanwhile fails with SourceChanged."""
    source = _StoredObject(source_store, source_key, uri=source_uri, size=size, etag=etag, attempts=part_attempts)
    return _upload(store, source, key, part_size=part_size, max_concurrency=max_concurrency,
                   on_progress=on_progress, journal=journal, resume=resume, keep_resumable=keep_resumable,
                   part_attempts=part_attempts, budget=budget)


def _upload(store: Put | Multipart, source: _Source, key: str, *, resume: ResumeState | None,
            on_progress: OnProgress | None, part_attempts: int, budget: TransferBudget | None,
            **multipart: Any) -> UploadResult:
    """One PUT for a small source (read whole: at most SMALL_READ_LIMIT bytes), else multipart."""
    if resume is None and source.size <= min(store.multipart_threshold, SMALL_READ_LIMIT):
        with _holding(budget, source.size):
            return _single_put(store, source, key, on_progress, part_attempts)
    return _multipart(store, source, key, resume=resume, on_progress=on_progress, part_attempts=part_attempts,
                      budget=budget, **multipart)


def _single_put(store: Put, source: _Source, key: str, on_progress: OnProgress | None, attempts: int) -> UploadResult:
    data = source.read(0, source.size)  # the one read of the file: checksummed here, sent from memory
    value = crc32c(data)
    meta = call_with_retries(
        lambda: store.put(key, data, size=source.size, crc32c=value), attempts=attempts, what=f"put {key}"
    )
    if on_progress:
        on_progress(source.size)
    return UploadResult(key, source.size, value, meta.etag, None, parts_sent=1, parts_reused=0)


def _copied_put(store: CopyFile, source: _LocalFile, key: str, on_progress: OnProgress | None) -> UploadResult:
    """File to file: a kernel copy, the source's identity re-checked before the copy commits."""
    meta = store.copy_file(key, source.handle.fileno(), size=source.size, on_progress=on_progress,
                          before_commit=source.check)
    return UploadResult(key, source.size, meta.crc32c, meta.etag, None, parts_sent=1, parts_reused=0)


def _streamed_put(store: Put, source: _LocalFile, key: str, on_progress: OnProgress | None) -> UploadResult:
    meta = store.put(key, _GuardedReader(source, on_progress), size=source.size)
    if meta.crc32c is None:
        raise StorageError(f"{store.uri} did not report a CRC32C for a streamed put of {key}", key=key)
    return UploadResult(key, source.size, meta.crc32c, meta.etag, None, parts_sent=1, parts_reused=0)


def _start_or_resume(
    store: Multipart,
    key: str,
    size: int,
    part_size: int | None,
    journal: UploadJournal | None,
    resume: ResumeState | None,
    attempts: int,
) -> tuple[str, int, dict[int, CompletedPart]]:
    """(upload id, part size, parts already stored). A recorded upload is reused with the
    parts the server still holds at the recorded size and ETag; one the server no longer
    knows is replaced by a fresh upload."""
    if resume is not None:
        try:
            on_server = {p.part_number: p for p in store.list_parts(key, resume.upload_id)}
        except StorageError as exc:
            if exc.retryable:
                raise
            log.warning("recorded upload %s of %s is gone (%s); starting a fresh one", resume.upload_id, key, exc)
        else:
            plan = {p.number: p for p in plan_parts(size, part_size=resume.part_size)}
            reusable = {
                number: recorded
                for number, recorded in resume.parts.items()
                if (stored := on_server.get(number))
                and number in plan
                and stored.size == recorded.size == plan[number].size
                and stored.etag == recorded.etag
            }
            return resume.upload_id, resume.part_size, reusable
    chosen = choose_part_size(size, part_size=part_size or DEFAULT_PART_SIZE)
    upload_id = call_with_retries(lambda: store.create_multipart(key), attempts=attempts, what=f"create {key}")
    if journal:
        try:
            journal.started(upload_id, chosen)  # durable before the first part is sent
        except BaseException as exc:
            _abort(store, key, upload_id, exc)
            raise
    return upload_id, chosen, {}


def _multipart(
    store: Multipart,
    source: _Source,
    key: str,
    *,
    part_size: int | None,
    max_concurrency: int,
    on_progress: OnProgress | None,
    journal: UploadJournal | None,
    resume: ResumeState | None,
    keep_resumable: bool,
    part_attempts: int,
    budget: TransferBudget | None,
) -> UploadResult:
    upload_id, chosen, done = _start_or_resume(store, key, source.size, part_size, journal, resume, part_attempts)
    plan = plan_parts(source.size, part_size=chosen)

    try:
        if on_progress and done:
            on_progress(sum(p.size for p in done.values()))
        todo = [part for part in plan if part.number not in done]

        def send(part: Part) -> CompletedPart:
            with _holding(budget, part.size):
                data = source.read(part.start, part.end)
                value = crc32c(data)
                try:
                    etag = call_with_retries(
                        lambda: store.upload_part(key, upload_id, part.number, data, crc32c=value),
                        attempts=part_attempts,
                        what=f"part {part.number} of {key}",
                    )
                except FerryError as exc:
                    raise PartUploadFailed(
                        f"part {part.number} of {key} failed: {exc}",
                        key=key,
                        upload_id=upload_id,
                        part_number=part.number,
                        retryable=exc.retryable,
                    ) from exc
            completed = CompletedPart(part.number, part.size, value, etag)
            if journal:
                journal.part_stored(completed)  # recorded only after the server answered
            if on_progress:
                on_progress(part.size)
            return completed

        for completed in _run_bounded(send, todo, max_concurrency):
            done[completed.number] = completed

        source.check()
        ordered = [done[part.number] for part in plan]
        meta: ObjectMeta = call_with_retries(
            lambda: store.complete_multipart(key, upload_id, [(p.number, p.etag) for p in ordered]),
            attempts=part_attempts,
            what=f"complete {key}",
        )
    except BaseException as exc:
        retryable = bool(getattr(exc, "retryable", False))
        if keep_resumable and retryable and isinstance(exc, FerryError):
            log.warning("upload of %s left resumable (upload id %s): %s", key, upload_id, exc)
            raise
        _abort(store, key, upload_id, exc)
        if isinstance(exc, FerryError) or not isinstance(exc, Exception):
            raise
        raise UploadAborted(f"upload of {key} aborted: {exc}", key=key, upload_id=upload_id) from exc

    whole = combine_parts([(p.crc32c, p.size) for p in ordered])
    return UploadResult(
        key=key,
        size=source.size,
        crc32c=whole,
        etag=meta.etag,
        upload_id=upload_id,
        parts_sent=len(todo),
        parts_reused=len(ordered) - len(todo),
    )


def _run_bounded(send: Callable[[Part], CompletedPart], parts: list[Part], max_concurrency: int) -> list[CompletedPart]:
    """Run `send` over `parts` with at most `max_concurrency` in flight (so at most that many
    parts are in memory). On the first failure, pending parts are cancelled, running ones
    finish, and the failure is raised."""
    results: list[CompletedPart] = []
    queue = iter(parts)
    with ThreadPoolExecutor(max_workers=max(1, max_concurrency), thread_name_prefix="ferry-part") as pool:
        running: set[Future[CompletedPart]] = set()
        failure: BaseException | None = None
        for part in queue:
            running.add(pool.submit(send, part))
            if len(running) >= max_concurrency:
                finished, running = wait(running, return_when=FIRST_COMPLETED)
                failure = _collect(finished, results)
                if failure:
                    break
        if failure is None:
            finished, running = wait(running)
            failure = _collect(finished, results)
        else:
            wait(running)
        if failure:
            raise failure
    return results


def _collect(finished: set[Future[CompletedPart]], results: list[CompletedPart]) -> BaseException | None:
    failure = None
    for future in finished:
        exc = future.exception()
        if exc is None:
            results.append(future.result())
        elif failure is None:
            failure = exc
    return failure


def _abort(store: Multipart, key: str, upload_id: str, cause: BaseException) -> None:
    try:
        call_with_retries(lambda: store.abort_multipart(key, upload_id), attempts=3, what=f"abort {key}")
    except Exception as abort_exc:
        log.warning("abort of multipart upload %s for %s failed: %s", upload_id, key, abort_exc)
        raise AbortFailed(
            f"upload of {key} failed ({cause}) and its abort failed too ({abort_exc}): "
            f"multipart upload {upload_id} may be orphaned; `ferry reconcile` will retry the abort",
            key=key,
            upload_id=upload_id,
        ) from abort_exc


__all__ = [
    "CompletedPart",
    "FileIdentity",
    "OnProgress",
    "ResumeState",
    "UploadJournal",
    "UploadResult",
    "upload_file",
    "upload_object",
]
