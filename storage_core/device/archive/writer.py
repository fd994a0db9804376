"""Rolling archives: records into MCAP files that roll over by size, by time or on demand.

    write(record) ─> the open chunk of NAME.mcap.open ─> (durability) chunk written + fsync
    roll ─> the next archive opens at once; the old one goes to the closer thread:
            summary + footer ─> fsync ─> rename NAME.mcap.open -> NAME.mcap ─> fsync folder

What a crash can cost (the loss window), by `durability`:
- `record`: nothing acknowledged. `write` returns once its record's chunk is written and
  fsynced (one chunk per record: slow, for rare and precious records).
- `group` (default): at most the records of the last `group_ms` milliseconds plus one fsync.
  Once the oldest record not yet handed to an fsync is `group_ms` old, the open chunk is
  written and the archive goes to the syncer thread (syncer.py), which fsyncs it while
  records keep flowing; the next group waits for that fsync to finish (back-pressure when
  the disk falls behind). A busy writer does this on its own thread at its next record, the
  flusher thread when the writer is quiet. A chunk that fills (`chunk_size`) is written at
  once, and its write-back starts at once, so the fsync has little left to do.
- `close`: everything since the archive opened, unless a full chunk was written already;
  an archive is durable once it is closed.
A process killed (SIGKILL) loses only what was not yet written to the file; an fsync
matters for power loss. Either way the `.open` file holds every intact record, and
reopening the folder (`ArchiveWriter`, `recover_folder`) turns it into a valid archive.

Sequence numbers: records are numbered across archives, archives too, and a number is
never used twice in a folder, even across a crash, so a gap means (possible) loss. Record
numbers are reserved in blocks (hi-lo): `.ferry-archive.json` says `next_record`, the
first number no record may have yet, and it is written and fsynced before any number below
it is handed out. The flusher reserves the next block ahead of need; a writer that runs
out reserves on its own thread and doubles the block (1,024 up to 1,048,576). A clean
close gives the unused numbers back (`next_record` becomes the next number). After a
crash the next writer starts at the reserved end, so every number the dead writer may have
handed out but no archive holds is skipped: recovery names them `possibly lost N..M`
(`RecoveryReport.possibly_lost`, a `ferry.possibly_lost` record in the recovered archive,
the quarantine note, `ferry archive verify`). Names come from a template with strftime
fields (UTC) and `{seq}`; an existing name is never reused (the sequence moves on). One
writer per folder (an flock on `.ferry-archive.lock`).

Callbacks (`on_open`, `on_close`, each taking an `ArchiveInfo`) run on their own thread:
one that raises is logged and changes nothing else; a slow one delays only later callbacks.

Back-pressure (`keep_bytes`, `keep_archives`: the folder's retention budget, see
retention.py): the writer opens a new archive only while the archives not yet uploaded fit
the budget. When they do not, `when_full="block"` (the default) makes `write` wait until
the hand-off has uploaded (and removed) enough; `"refuse"` makes it raise
ArchiveFolderFull for that record (nothing written, the writer stays usable). Either way no
archive is ever deleted to make room, and the archive that filled the folder is closed (so
the hand-off can upload it).
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from enum import Enum
from pathlib import Path

from storage_core.device.archive.format import (
    ARCHIVE_METADATA,
    CHANNEL_METADATA,
    DEFAULT_NAME_TEMPLATE,
    OPEN_SUFFIX,
    PROFILE,
    RECORD_ENCODING,
    archive_name,
    check_template,
    encode_metadata,
)
from storage_core.device.archive.mcap_file import COMPRESSIONS, McapFile
from storage_core.device.archive.recover import RecoveryReport, recover_folder
from storage_core.device.archive.retention import Budget, not_uploaded
from storage_core.device.archive.syncer import GroupSyncer
from storage_core.diskio import fsync_dir, write_atomic
from storage_core.errors import ArchiveError, ArchiveFolderFull, ConfigError

log = logging.getLogger(__name__)

MiB = 1024 * 1024
DEFAULT_TOPIC = "/records"
DEFAULT_CHUNK_SIZE = 1 * MiB
DEFAULT_GROUP_MS = 100
LOCK_FILE = ".ferry-archive.lock"
STATE_FILE = ".ferry-archive.json"
RESERVE_MIN, RESERVE_MAX = 1024, 1 << 20  # record numbers reserved at a time (see the module docstring)
# a Message record's head (opcode, length, channel, sequence, two times): what a record adds
# to the open chunk beyond its data
RECORD_OVERHEAD = 9 + 22
# archives waiting for the closer thread; past this many, a roll waits (bounded memory)
MAX_CLOSING = 4


class WhenFull(str, Enum):
    """What `write` does while the folder is over its retention budget."""

    BLOCK = "block"
    REFUSE = "refuse"


FULL_POLL_S = 0.5  # how often a blocked writer looks again


class Durability(str, Enum):
    RECORD = "record"
    GROUP = "group"
    CLOSE = "close"


@dataclass(frozen=True)
class ArchiveInfo:
    """An archive as a callback sees it: `path` is NAME.mcap.open when opened, NAME.mcap when closed."""

    path: Path
    sequence: int
    first_record: int
    records: int
    bytes: int


@dataclass(frozen=True)
class WriterReport:
    records: int
    archives: int  # archives this writer opened
    first_record: int | None
    last_record: int | None


class _OpenArchive:
    """One archive being written: its file, its mcap Writer and what has gone into it."""

    def __init__(self, open_path: Path, final_path: Path, sequence: int, first_record: int, file, writer: McapFile) -> None:
        self.open_path, self.final_path = open_path, final_path
        self.sequence, self.first_record = sequence, first_record
        self.file, self.writer = file, writer
        self.fd = file.fileno()
        self.opened = time.monotonic()
        self.channels: dict[str, int] = {}
        self.records = 0
        self.written = 0  # bytes handed to the file so far
        self.sync_lock = threading.Lock()  # the syncer's fsync and write-back vs the closer's close
        self.closed = False

    @property
    def pending(self) -> int:
        """Bytes in the open chunk (uncompressed)."""
        return self.writer.pending

    def info(self, path: Path | None = None) -> ArchiveInfo:
        return ArchiveInfo(path or self.open_path, self.sequence, self.first_record, self.records, self.written + self.pending)


def _describe(exc: OSError, what: str, path: Path) -> ArchiveError:
    reason = exc.strerror or str(exc)
    return ArchiveError(f"cannot {what} {path}: {reason}", path=str(path), retryable=False)


class ArchiveWriter:
    """Records into rolling MCAP archives in `folder` (see the module docstring for the
    guarantees). Use as a context manager, or call `close()`; a writer that is never closed
    leaves NAME.mcap.open files that the next writer of the folder recovers.

    `roll_size`: roll before a record would take the archive past this many bytes, counting
    the records still in the open chunk at the compression ratio seen so far (the summary
    written at close comes on top).
    `roll_every`: roll an archive that has records once it is this many seconds old.
    """

    def __init__(
        self,
        folder: str | os.PathLike[str],
        *,
        roll_size: int | None = None,
        roll_every: float | None = None,
        durability: Durability | str = Durability.GROUP,
        group_ms: int = DEFAULT_GROUP_MS,
        compression: str = "zstd",
        chunk_size: int = DEFAULT_CHUNK_SIZE,
        name_template: str = DEFAULT_NAME_TEMPLATE,
        on_open: Callable[[ArchiveInfo], object] | None = None,
        on_close: Callable[[ArchiveInfo], object] | None = None,
        keep_bytes: int | None = None,
        keep_archives: int | None = None,
        when_full: WhenFull | str = WhenFull.BLOCK,
        recover: bool = True,
    ) -> None:
        if compression not in COMPRESSIONS:
            raise ConfigError(f"compression must be one of {', '.join(COMPRESSIONS)}, not {compression!r}")
        if roll_size is not None and roll_size <= 0 or roll_every is not None and roll_every <= 0:
            raise ConfigError("roll size and roll interval must be positive")
        if group_ms <= 0 or chunk_size <= 0:
            raise ConfigError("group-ms and chunk size must be positive")
        try:
            self.durability = Durability(durability)
        except ValueError:
            raise ConfigError(f"durability must be record, group or close, not {durability!r}") from None
        try:
            self.when_full = WhenFull(when_full)
        except ValueError:
            raise ConfigError(f"when-full must be block or refuse, not {when_full!r}") from None
        if keep_bytes is not None and keep_bytes <= 0 or keep_archives is not None and keep_archives <= 0:
            raise ConfigError("the retention budget (keep bytes, keep archives) must be positive")
        self.budget = Budget(keep_bytes, keep_archives)
        self.folder = Path(folder)
        self.template = check_template(name_template)
        self.roll_size, self.roll_every = roll_size, roll_every
        self.group_s, self.chunk_size = group_ms / 1000, chunk_size
        self.compression = compression
        self.on_open, self.on_close = on_open, on_close

        self._lock_fd = self._take_folder()
        self.recovered: list[RecoveryReport] = []  # what reopening the folder recovered
        try:
            next_archive, next_record = self._read_state()
            if recover:
                self.recovered = recover_folder(self.folder, reserved_end=next_record)
                for recovered in self.recovered:
                    if recovered.archive_sequence is not None:
                        next_archive = max(next_archive, recovered.archive_sequence + 1)
                    if recovered.last_record is not None:
                        next_record = max(next_record, recovered.last_record + 1)
        except BaseException:
            os.close(self._lock_fd)
            raise
        self._next_archive, self._next_record = next_archive, next_record
        self._reserved = next_record  # numbers below this are ours to hand out (durable in the state file)
        self._block = RESERVE_MIN
        self._state_lock = threading.RLock()  # one state file write at a time (writer, flusher)
        self._first_written: int | None = None
        self._chunk_bytes = self._disk_bytes = 0  # for the expected size of the open chunk
        self._ratio = 1.0
        self._archives = 0
        self._current: _OpenArchive | None = None
        self._lock = threading.Lock()
        self._failed: ArchiveError | None = None
        self._close_errors: list[ArchiveError] = []
        self._closing: queue.Queue[_OpenArchive | None] = queue.Queue(MAX_CLOSING)
        self._events: queue.Queue[tuple[Callable[[ArchiveInfo], object], ArchiveInfo] | None] = queue.Queue()
        self._stop = threading.Event()
        # fsyncs of groups, and the write-back of every written chunk started at once (in
        # `close` mode too: the fsync at close then has little left to write)
        self._syncer = GroupSyncer() if self.durability is not Durability.RECORD else None
        self._group = self.durability is Durability.GROUP
        self._unsynced_since: float | None = None  # when the oldest record no fsync covers yet was written
        self._closed = False
        self._blocked = False  # waiting for room (logged once per wait)
        self._threads = [
            threading.Thread(target=self._closer, name="ferry-archive-closer", daemon=True),
            threading.Thread(target=self._callbacks, name="ferry-archive-callbacks", daemon=True),
            threading.Thread(target=self._flusher, name="ferry-archive-flusher", daemon=True),
        ]
        for thread in self._threads:
            thread.start()

    # --- the folder ------------------------------------------------------------------------

    def _take_folder(self) -> int:
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.folder / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise _describe(exc, "use the archive folder", self.folder) from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise ArchiveError(f"another writer is recording into {self.folder}", path=str(self.folder)) from None
        return fd

    def _read_state(self) -> tuple[int, int]:
        """(next archive sequence, next record sequence) from the state file; without one,
        from the archives in the folder (the newest one read to its last record)."""
        try:
            state = json.loads((self.folder / STATE_FILE).read_text())
            return int(state["next_archive"]), int(state["next_record"])
        except FileNotFoundError:
            pass
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.warning("rebuilding unreadable %s from the archives: %s", self.folder / STATE_FILE, exc)
        from storage_core.device.archive.reader import archive_identity
        from storage_core.device.archive.scan import scan_archive

        newest = None
        next_archive = 1
        for path in self.folder.glob("*.mcap"):
            identity = archive_identity(path)
            if identity is not None:
                next_archive = max(next_archive, identity[0] + 1)
                if newest is None or identity[1] > newest[0]:
                    newest = (identity[1], path)
        if newest is None:
            return next_archive, 0
        last = scan_archive(newest[1]).last_sequence
        return next_archive, newest[0] if last is None else last + 1

    def _write_state(self, *, next_record: int | None = None) -> None:
        """The counters (`next_record`: the reserved end unless given), durable before the
        archive or the record numbers they cover are used."""
        with self._state_lock:
            value = self._reserved if next_record is None else next_record
            write_atomic(self.folder / STATE_FILE,
                         json.dumps({"next_archive": self._next_archive, "next_record": value}).encode())

    def _reserve(self, end: int) -> None:
        """Make record numbers below `end` ours (durably) unless they are already."""
        with self._state_lock:  # re-entered by _write_state: one reservation at a time
            if end > self._reserved:
                self._write_state(next_record=end)
                self._reserved = end

    # --- writing ---------------------------------------------------------------------------

    def write(
        self, payload: bytes, *, topic: str = DEFAULT_TOPIC, metadata: dict[str, str] | None = None, log_time: int | None = None
    ) -> int:
        """Add one record; returns its sequence number. With durability `record` the record
        is on disk when this returns. ArchiveError when the folder cannot take it (the
        writer then refuses further records; what was written before stays recoverable);
        ArchiveFolderFull (`when_full="refuse"`) when the folder is over its retention
        budget: that record is not written, later ones may be."""
        head = encode_metadata(metadata)
        when = time.time_ns() if log_time is None else log_time
        while True:
            with self._lock:
                if self._failed is not None:
                    raise self._failed
                if self._closed:
                    raise ArchiveError("the archive writer is closed", path=str(self.folder))
                archive = self._current
                try:
                    if self._group:
                        self._group_due(archive, time.monotonic())
                    if archive is None or (self.roll_size is not None or self.roll_every is not None) and self._due(archive, len(head) + len(payload)):
                        archive = self._next_archive_for_write()
                    if archive is not None:
                        return self._append(archive, topic, when, head, payload)
                except OSError as exc:
                    raise self._fail(exc, self._current) from exc
            self._wait_for_room()

    def _next_archive_for_write(self) -> _OpenArchive | None:
        """The archive the next record goes to, rolling the current one; None while the
        folder is over its budget (the current archive then goes to the closer)."""
        full = self.budget.limited and self.budget.exceeded(not_uploaded(self.folder), adding=1)
        if self._current is None:
            if not full:
                self._current = self._open_next()
            return self._current
        return self._roll_locked(open_next=not full)

    def _wait_for_room(self) -> None:
        """Back-pressure: raise (refuse) or wait a moment (block) outside the writer's lock."""
        if self.when_full is WhenFull.REFUSE:
            raise ArchiveFolderFull(
                f"{self.folder}: the archives not yet uploaded fill its budget ({self.budget.text()}): record refused",
                path=str(self.folder),
            )
        if not self._blocked:
            log.warning("%s: the archives not yet uploaded fill its budget (%s): waiting for the hand-off",
                        self.folder, self.budget.text())  # fmt: skip
        self._blocked = True
        self._stop.wait(FULL_POLL_S)

    def _append(self, archive: _OpenArchive, topic: str, when: int, head: bytes, payload: bytes) -> int:
        self._blocked = False
        channel = archive.channels.get(topic)
        if channel is None:
            channel = self._add_channel(archive, topic)
        sequence = self._next_record
        if sequence >= self._reserved:  # the flusher did not keep ahead: a bigger block
            self._block = min(self._block * 2, RESERVE_MAX)
            self._reserve(sequence + self._block)
        mcap = archive.writer
        mcap.add_message(channel, when, sequence & 0xFFFFFFFF, head, payload)
        archive.records += 1
        self._next_record = sequence + 1
        if self._first_written is None:
            self._first_written = sequence
        if self._unsynced_since is None and self._group:
            self._unsynced_since = time.monotonic()
        if mcap.pending >= self.chunk_size or self.durability is Durability.RECORD:
            self._write_chunk(archive)
        if self.durability is Durability.RECORD:
            os.fdatasync(archive.fd)  # the data and the size: what recovery reads
        return sequence

    def roll(self) -> None:
        """Close the current archive now (the next record opens a new one)."""
        with self._lock:
            if self._current is not None and self._current.records and self._failed is None:
                self._roll_locked(open_next=False)

    def flush(self) -> None:
        """Make every record written so far durable (write the open chunk, fsync)."""
        with self._lock:
            archive = self._current
            if archive is None or self._failed is not None:
                return
            try:
                if archive.pending:
                    self._write_chunk(archive)
                os.fsync(archive.fd)
                self._unsynced_since = None
            except OSError as exc:
                raise self._fail(exc, archive) from exc

    def _due(self, archive: _OpenArchive, size: int) -> bool:
        if not archive.records:
            return False
        if self.roll_size is not None and archive.written + (archive.pending + size + RECORD_OVERHEAD) * self._ratio > self.roll_size:
            return True
        return self.roll_every is not None and time.monotonic() - archive.opened >= self.roll_every

    def _write_chunk(self, archive: _OpenArchive) -> None:
        self._chunk_bytes += archive.pending
        archive.writer.write_chunk()  # and hands it to the OS
        written = archive.writer.position
        self._disk_bytes += written - archive.written
        # bytes on disk per byte put into chunks (compression, framing): what the open chunk
        # is expected to take once written
        self._ratio = self._disk_bytes / self._chunk_bytes if self._chunk_bytes else 1.0
        if self._syncer is not None:
            self._syncer.started(archive, archive.written, written)
        archive.written = written

    def _group_due(self, archive: _OpenArchive | None, now: float) -> None:
        """Group durability: once the oldest record no fsync covers yet is `group_ms` old,
        write the open chunk and hand the archive to the syncer (waiting while the previous
        group's fsync still runs). Under the writer's lock."""
        if self._syncer.error is not None:
            raise self._syncer.error
        if archive is None or self._unsynced_since is None or now - self._unsynced_since < self.group_s:
            return
        if archive.pending:
            self._write_chunk(archive)
        self._unsynced_since = None
        self._syncer.submit(archive)

    def _add_channel(self, archive: _OpenArchive, topic: str) -> int:
        channel = archive.writer.register_channel(topic, RECORD_ENCODING)
        # outside the chunks too, so recovery can name records after a damaged chunk
        archive.writer.add_metadata(CHANNEL_METADATA, {"id": str(channel), "topic": topic})
        archive.channels[topic] = channel
        return channel

    def _open_next(self) -> _OpenArchive:
        now = datetime.now(timezone.utc)
        sequence = self._next_archive
        while True:
            name = archive_name(self.template, sequence, now)
            final, open_path = self.folder / name, self.folder / (name + OPEN_SUFFIX)
            if not final.exists():
                try:
                    fd = os.open(open_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
                    break
                except FileExistsError:
                    pass
            sequence += 1  # never reuse a name: the sequence moves on
        file = os.fdopen(fd, "wb")
        self._next_archive = sequence + 1
        try:
            self._write_state()
            writer = McapFile(file, compression=self.compression, profile=PROFILE, library="ferry", chunk_size=self.chunk_size)
            writer.add_metadata(
                ARCHIVE_METADATA,
                {"archive_sequence": str(sequence), "first_record_sequence": str(self._next_record), "opened": now.isoformat()},
            )
            if self.durability is not Durability.CLOSE:
                file.flush()
                fsync_dir(self.folder)  # the .open file itself survives a power loss
        except BaseException:
            file.close()
            raise
        archive = _OpenArchive(open_path, final, sequence, self._next_record, file, writer)
        archive.written = writer.position
        self._archives += 1
        self._notify(self.on_open, archive.info())
        return archive

    def _roll_locked(self, *, open_next: bool) -> _OpenArchive | None:
        """Hand the current archive to the closer, the next one opened first when asked."""
        old = self._current
        if old is not None and old.pending:
            self._write_chunk(old)  # as any full chunk is; the closer then writes only the summary
        self._unsynced_since = None  # the closer fsyncs the old archive whole
        if open_next:
            self._current = self._open_next()  # writes the counters first
        else:
            self._current = None
            self._write_state()
        if old is not None:
            self._closing.put(old)  # waits only when MAX_CLOSING archives are still closing
        return self._current

    def _fail(self, exc: OSError, archive: _OpenArchive | None) -> ArchiveError:
        path = archive.open_path if archive is not None else self.folder
        self._failed = _describe(exc, "write archive", path)
        return self._failed

    # --- the threads -------------------------------------------------------------------------

    def _flusher(self) -> None:
        """What a quiet writer leaves undone: group durability (write the open chunk once
        its oldest record is `group_ms` old and hand it to the syncer), time-based rolls, and
        record numbers reserved ahead. It never waits for the writer's lock: a writer
        holding it is busy and does the group and roll checks itself at its next record, so
        the flusher only tries again a little later."""
        interval = self.group_s if self._group else min(self.roll_every or 1.0, 1.0)
        wait = interval
        while not self._stop.wait(wait):
            if self._lock.acquire(blocking=False):
                try:
                    wait = self._flush_quiet(time.monotonic(), interval)
                finally:
                    self._lock.release()
            else:  # the writer is busy; should it go quiet right after its last check, look again soon
                wait = interval / 10
            # keep half a block of numbers ahead, so write() rarely waits for the state file
            if self._reserved - self._next_record < self._block // 2:
                try:
                    self._reserve(self._next_record + self._block)
                except OSError as exc:
                    log.error("cannot reserve record numbers in %s: %s", self.folder / STATE_FILE, exc)

    def _flush_quiet(self, now: float, interval: float) -> float:
        """The flusher's checks under the writer's lock; returns how long to wait for the next."""
        archive = self._current
        if archive is None or self._failed is not None:
            return interval
        try:
            if self.roll_every is not None and archive.records and now - archive.opened >= self.roll_every:
                self._roll_locked(open_next=False)
            elif self._group:
                self._group_due(archive, now)
        except OSError as exc:
            self._fail(exc, archive)
        if self._group and self._unsynced_since is not None:  # wake when that group is due
            return max(self._unsynced_since + self.group_s - time.monotonic(), 0.001)
        return interval

    def _closer(self) -> None:
        while (archive := self._closing.get()) is not None:
            try:
                self._finish(archive)
            except OSError as exc:
                error = _describe(exc, "close archive", archive.open_path)
                log.error("%s; it stays .open and is recovered when the folder is reopened", error)
                self._close_errors.append(error)
            except Exception as exc:  # noqa: BLE001 - the closer must go on with the next archive
                log.exception("closing %s failed", archive.open_path)
                self._close_errors.append(ArchiveError(f"cannot close archive {archive.open_path}: {exc}"))

    def _finish(self, archive: _OpenArchive) -> None:
        with archive.sync_lock:
            try:
                archive.writer.finish()
                archive.file.flush()
                os.fsync(archive.fd)
                archive.written = archive.writer.position
            finally:
                archive.closed = True
                archive.file.close()
        os.rename(archive.open_path, archive.final_path)
        fsync_dir(self.folder)
        self._notify(self.on_close, archive.info(archive.final_path))

    def _notify(self, callback: Callable[[ArchiveInfo], object] | None, info: ArchiveInfo) -> None:
        if callback is not None:
            self._events.put((callback, info))

    def _callbacks(self) -> None:
        while (event := self._events.get()) is not None:
            callback, info = event
            try:
                callback(info)
            except Exception:  # noqa: BLE001 - a callback's failure is its own, never the writer's
                log.exception("archive callback %s failed for %s", getattr(callback, "__name__", callback), info.path)

    # --- closing -------------------------------------------------------------------------------

    def close(self) -> WriterReport:
        """Close the open archive and wait for every close to finish (and its callbacks).
        Raises the first ArchiveError met (a failed write or close); archives that could
        not be closed stay NAME.mcap.open for recovery."""
        with self._lock:
            if self._closed:
                return self._report()
            self._closed = True
            archive, self._current = self._current, None
        self._stop.set()
        self._threads[2].join()
        if self._syncer is not None:
            self._syncer.stop()
        if self._failed is None:  # the unused reserved numbers go back: no gap after a clean close
            try:
                self._write_state(next_record=self._next_record)
            except OSError as exc:
                self._failed = _describe(exc, "write the state of", self.folder)
        if archive is not None:
            if self._failed is None:
                self._closing.put(archive)
            else:  # broken mid-write: left .open for recovery
                try:
                    archive.file.close()
                except OSError:
                    pass  # the same failure again, already raised by write()
        self._closing.put(None)
        self._threads[0].join()
        self._events.put(None)
        self._threads[1].join()
        os.close(self._lock_fd)
        if self._failed is not None:
            raise self._failed
        if self._close_errors:
            raise self._close_errors[0]
        return self._report()

    def _report(self) -> WriterReport:
        last = self._next_record - 1 if self._first_written is not None else None
        records = 0 if last is None else last - self._first_written + 1
        return WriterReport(records, self._archives, self._first_written, last)

    def __enter__(self) -> ArchiveWriter:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


__all__ = [
    "DEFAULT_TOPIC",
    "ArchiveInfo",
    "ArchiveWriter",
    "Durability",
    "WhenFull",
    "WriterReport",
]
