"""Recovery: every intact record of a damaged or unfinished archive into a valid one.

    NAME.mcap.open ─> scan (resynchronising past damage) ─> damaged bytes copied to quarantine/
      ─> NAME.mcap.recovering (every intact record, summary, footer) ─> fsync ─> rename NAME.mcap
      ─> fsync folder ─> NAME.mcap.open removed

A crash at any step leaves either the `.open` file (recovered again next time) or the
finished NAME.mcap next to it (the `.open` is then removed). A file with no intact record
at all is moved to quarantine/ with a JSON file saying why; an empty one (a crash before
anything reached the disk) is removed. Nothing is ever overwritten.

Given the folder's reserved end (`reserved_end`: no sequence below it may be used again,
see writer.py), the newest open archive's recovered copy names the sequences after its
last intact record up to that end in a `ferry.possibly_lost` record: the writer may have
handed them out before the crash, and they are never used again.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from mcap.writer import CompressionType, Writer

from storage_core.device.archive.format import (
    ARCHIVE_METADATA,
    ARCHIVE_SUFFIX,
    CHANNEL_METADATA,
    OPEN_SUFFIX,
    POSSIBLY_LOST_METADATA,
    PROFILE,
    PossiblyLost,
)
from storage_core.device.archive.reader import archive_identity
from storage_core.device.archive.scan import ArchiveReader, ArchiveScan, DamagedRange, Message, mapped, scan_archive
from storage_core.diskio import fsync_dir
from storage_core.errors import ArchiveError, ConfigError

log = logging.getLogger(__name__)

QUARANTINE = "quarantine"
RECOVERING_SUFFIX = ".recovering"
CHUNK_SIZE = 1024 * 1024


@dataclass(frozen=True)
class RecoveryReport:
    source: Path
    output: Path | None  # None: nothing to write (empty) or quarantined whole
    records: int
    archive_sequence: int | None
    first_sequence: int | None
    last_sequence: int | None
    closed: bool  # the source had a valid footer
    damaged: list[DamagedRange] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    quarantined: list[Path] = field(default_factory=list)
    possibly_lost: list[PossiblyLost] = field(default_factory=list)

    @property
    def lost(self) -> bool:
        """Whether anything in the source was damaged (records or whole sections)."""
        return bool(self.damaged or self.problems)

    @property
    def last_record(self) -> int | None:
        return self.last_sequence


class _Output:
    """A valid archive written message by message (the source's channels, encodings and sequences)."""

    def __init__(self, path: Path, scan: ArchiveScan) -> None:
        self.path, self.scan = path, scan
        self.file = open(path, "xb")
        self.writer = Writer(self.file, chunk_size=CHUNK_SIZE, compression=CompressionType.ZSTD,
                             enable_crcs=True, enable_data_crcs=True)
        self.writer.start(profile=PROFILE, library="ferry recover")
        self.channels: dict[tuple[str, str], int] = {}
        self.started = False

    def _start(self) -> None:
        if not self.started and self.scan.archive_sequence is not None:
            self.writer.add_metadata(ARCHIVE_METADATA, {
                "archive_sequence": str(self.scan.archive_sequence),
                "first_record_sequence": str(self.scan.first_record_sequence),
                "recovered_from": self.scan.path.name,
            })
        self.started = True

    def add(self, message: Message) -> None:
        self._start()
        key = (message.topic, message.encoding)
        channel = self.channels.get(key)
        if channel is None:
            channel = self.channels[key] = self.writer.register_channel(message.topic, message.encoding, 0)
            self.writer.add_metadata(CHANNEL_METADATA, {"id": str(channel), "topic": message.topic})
        self.writer.add_message(channel, message.log_time, message.data, message.log_time, message.wrapped)

    def finish(self, possibly_lost: list[PossiblyLost]) -> None:
        self._start()
        for lost in possibly_lost:
            self.writer.add_metadata(POSSIBLY_LOST_METADATA, {"first": str(lost.first), "last": str(lost.last)})
        self.writer.finish()
        self.file.flush()
        os.fsync(self.file.fileno())
        self.file.close()

    def discard(self) -> None:
        self.file.close()
        self.path.unlink(missing_ok=True)


def _write_recovered(source: Path, output: Path, lost: PossiblyLost | None = None) -> tuple[ArchiveScan, bool]:
    """Every intact message of `source` into `output` (through a .recovering file, fsynced
    and renamed; refused when `output` exists), with the source's possibly-lost ranges and
    `lost`. Returns the scan and whether the source held anything to write (else nothing
    is written)."""
    scan = ArchiveScan(source, 0)
    temp = output.with_name(output.name + RECOVERING_SUFFIX)
    temp.unlink(missing_ok=True)  # a crashed earlier recovery's leftover
    out = _Output(temp, scan)
    try:
        for message in ArchiveReader(source).messages(scan):
            out.add(message)
        if scan.archive_sequence is None and scan.records == 0:
            out.discard()
            return scan, False
        if lost is not None:
            scan.possibly_lost.append(lost)
        out.finish(scan.possibly_lost)
    except BaseException:
        out.discard()
        raise
    if output.exists():
        temp.unlink()
        raise ConfigError(f"{output} exists; recovery never overwrites a file")
    os.rename(temp, output)
    fsync_dir(output.parent)
    return scan, True


def _report(source: Path, output: Path | None, scan: ArchiveScan, quarantined: list[Path]) -> RecoveryReport:
    return RecoveryReport(
        source=source, output=output, records=scan.records, archive_sequence=scan.archive_sequence,
        first_sequence=scan.first_sequence, last_sequence=scan.last_sequence, closed=scan.closed,
        damaged=list(scan.damaged), problems=list(scan.problems), quarantined=quarantined,
        possibly_lost=list(scan.possibly_lost),
    )


def recover_file(source: str | os.PathLike[str], output: str | os.PathLike[str]) -> RecoveryReport:
    """Write every intact record of `source` into a new valid archive at `output`
    (refused when it exists). The report lists each damaged byte range and the sequences
    lost around it; `lost` is true when anything was damaged."""
    source, output = Path(source), Path(output)
    if output.exists():
        raise ConfigError(f"{output} exists; recovery never overwrites a file")
    if not source.is_file():
        raise ConfigError(f"{source} is not a file")
    scan, written = _write_recovered(source, output)
    return _report(source, output if written else None, scan, [])


def _quarantine(folder: Path, source: Path, ranges: list[tuple[int, int]], reason: dict) -> list[Path]:
    """Copy `ranges` of `source` (all of it when None) into folder/quarantine, with a JSON
    file saying why; fsynced before the caller changes anything."""
    target = folder / QUARANTINE
    target.mkdir(exist_ok=True)
    saved = []
    with mapped(source) as (buf, _):
        for start, end in ranges:
            path = target / f"{source.name}.{start}-{end}.bin"
            with open(path, "wb") as handle:
                handle.write(buf[start:end])
                handle.flush()
                os.fsync(handle.fileno())
            saved.append(path)
    note = target / f"{source.name}.json"
    with open(note, "w") as handle:
        json.dump({**reason, "source": source.name, "saved": [p.name for p in saved]}, handle, indent=2)
        handle.flush()
        os.fsync(handle.fileno())
    fsync_dir(target)
    return [*saved, note]


def quarantine_archive(folder: Path, path: Path, reason: str) -> Path:
    """Move a whole file into folder/quarantine with a JSON note saying why (never retried)."""
    target = folder / QUARANTINE
    target.mkdir(exist_ok=True)
    destination = target / path.name
    if destination.exists():
        destination = target / f"{path.name}.{os.getpid()}-{int.from_bytes(os.urandom(4), 'big'):08x}"
    with open(target / f"{destination.name}.json", "w") as handle:
        json.dump({"source": path.name, "reason": reason}, handle, indent=2)
        handle.flush()
        os.fsync(handle.fileno())
    os.rename(path, destination)
    fsync_dir(target)
    fsync_dir(folder)
    log.warning("quarantined %s: %s", path, reason)
    return destination


def recover_folder(folder: str | os.PathLike[str], *, reserved_end: int | None = None) -> list[RecoveryReport]:
    """Turn every NAME.mcap.open in `folder` into NAME.mcap holding its intact records (the
    damaged bytes, a torn tail included, copied to quarantine/ first). With `reserved_end`
    (the folder's state, as ArchiveWriter passes it), the newest one also names the
    sequences possibly lost after it. Run by ArchiveWriter when it opens the folder; safe
    to run again after a crash in the middle."""
    folder = Path(folder)
    reports = []
    for stale in folder.glob(f"*{ARCHIVE_SUFFIX}{RECOVERING_SUFFIX}"):
        stale.unlink()
    sources = sorted(folder.glob(f"*{ARCHIVE_SUFFIX}{OPEN_SUFFIX}"))
    identities = {source: archive_identity(source) for source in sources}
    known = [source for source in sources if identities[source] is not None]
    newest = max(known, key=lambda source: identities[source]) if known else None
    for source in sources:
        try:
            reports.append(_recover_open(folder, source, reserved_end if source == newest else None))
        except OSError as exc:
            raise ArchiveError(f"cannot recover {source}: {exc.strerror or exc}", path=str(source)) from exc
    return reports


def _possibly_lost(scan: ArchiveScan, reserved_end: int | None) -> PossiblyLost | None:
    """The sequences after the archive's last intact record up to the reserved end."""
    start = scan.first_record_sequence if scan.last_sequence is None else scan.last_sequence + 1
    if reserved_end is None or start is None or start >= reserved_end:
        return None
    return PossiblyLost(start, reserved_end - 1)


def _recover_open(folder: Path, source: Path, reserved_end: int | None) -> RecoveryReport:
    final = source.with_name(source.name[: -len(OPEN_SUFFIX)])
    if final.exists():  # an earlier recovery renamed its output and died before the unlink
        scan = scan_archive(final)
        if scan.closed and scan.intact:
            source.unlink()
            fsync_dir(folder)
            return _report(source, final, scan, [])
        moved = quarantine_archive(folder, source, f"{final.name} exists and is not a valid archive")
        return _report(source, None, ArchiveScan(source, 0), [moved])
    if source.stat().st_size == 0:  # created, nothing reached the disk
        source.unlink()
        fsync_dir(folder)
        return _report(source, None, ArchiveScan(source, 0), [])
    preview = scan_archive(source)
    if preview.archive_sequence is None and preview.records == 0:
        moved = quarantine_archive(folder, source, "no intact record and no archive header: "
                                   + "; ".join(d.reason for d in preview.damaged[:3]))
        return _report(source, None, preview, [moved])
    lost = _possibly_lost(preview, reserved_end)
    quarantined = []
    if preview.damaged:
        reason = {"reason": "damaged bytes of an unfinished archive",
                  "damaged": [{"start": d.start, "end": d.end, "why": d.reason, "lost_from": d.lost_from,
                               "lost_to": d.lost_to} for d in preview.damaged]}
        if lost is not None:
            reason["possibly_lost"] = {"first": lost.first, "last": lost.last}
        quarantined = _quarantine(folder, source, [(d.start, d.end) for d in preview.damaged], reason)
    scan, _ = _write_recovered(source, final, lost)
    source.unlink()
    fsync_dir(folder)
    if scan.damaged:
        log.warning("recovered %s: %d records; damaged bytes saved in %s", final, scan.records, folder / QUARANTINE)
    if lost is not None:
        log.warning("recovered %s: sequences %s", final, lost.text())
    return _report(source, final, scan, quarantined)


__all__ = ["QUARANTINE", "RecoveryReport", "quarantine_archive", "recover_file", "recover_folder"]
