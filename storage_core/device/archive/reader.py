"""Read records across many archives, in sequence order, as shoebox's ReadingRollManager did
with wildcards, but checked: every chunk's CRC, open archives up to their last intact record."""

from __future__ import annotations

import glob
import os
from collections.abc import Iterable, Iterator
from pathlib import Path

from storage_core.device.archive.format import ARCHIVE_METADATA, ARCHIVE_SUFFIX, OPEN_SUFFIX, ArchiveRecord, PossiblyLost
from storage_core.device.archive.scan import HEAD, MAGIC, ArchiveReader, ArchiveScan, _Bad, _parse_metadata, mapped
from storage_core.errors import ConfigError

_IDENTITY_WINDOW = 64 * 1024  # the ferry.archive record comes right after the header


def archive_identity(path: Path) -> tuple[int, int] | None:
    """(archive sequence, first record sequence) from the archive's `ferry.archive` record."""
    with mapped(path) as (buf, size):
        if bytes(buf[: len(MAGIC)]) != MAGIC:
            return None
        pos, limit = len(MAGIC), min(size, _IDENTITY_WINDOW)
        while pos + HEAD.size <= limit:
            opcode, length = HEAD.unpack_from(buf, pos)
            end = pos + HEAD.size + length
            if end > size:
                return None
            if opcode == 0x0C:
                try:
                    name, values = _parse_metadata(memoryview(buf)[pos + HEAD.size : end])
                    if name == ARCHIVE_METADATA:
                        return int(values["archive_sequence"]), int(values["first_record_sequence"])
                except (_Bad, KeyError, ValueError):
                    return None
            elif opcode != 0x01:
                return None
            pos = end
    return None


def archive_paths(patterns: Iterable[str | os.PathLike[str]]) -> list[Path]:
    """Files named by paths, folders (their NAME.mcap and NAME.mcap.open files) and glob
    patterns, in sequence order (archives of another writer after, by name). An open
    archive whose closed twin exists (a recovery cut short) is left out."""
    found: dict[Path, None] = {}
    for pattern in patterns:
        text = os.fspath(pattern)
        path = Path(text)
        if path.is_dir():
            matches = [*path.glob(f"*{ARCHIVE_SUFFIX}"), *path.glob(f"*{ARCHIVE_SUFFIX}{OPEN_SUFFIX}")]
        elif glob.has_magic(text):
            matches = [Path(m) for m in glob.glob(text)]
        elif path.is_file():
            matches = [path]
        else:
            raise ConfigError(f"no such archive: {text}")
        for match in matches:
            if match.is_file():
                found[match] = None
    paths = [p for p in found if not (p.name.endswith(OPEN_SUFFIX) and p.with_name(p.name[: -len(OPEN_SUFFIX)]) in found)]

    def order(path: Path) -> tuple:
        identity = archive_identity(path)
        return (0, identity[1], identity[0], path.name) if identity else (1, 0, 0, path.name)

    return sorted(paths, key=order)


def read_archives(patterns: Iterable[str | os.PathLike[str]]) -> Iterator[ArchiveRecord]:
    """Every intact record of the archives named (see `archive_paths`), in sequence order."""
    for path in archive_paths(patterns):
        yield from ArchiveReader(path).records()


def sequence_gaps(scans: list[ArchiveScan]) -> dict[Path, list[PossiblyLost]]:
    """Record numbers skipped between two consecutive archives (archive sequences N and
    N+1, in the order given): a writer that crashed, whose numbers the next one skipped
    (see writer.py), and that no `ferry.possibly_lost` record already names. Keyed by the
    later archive."""
    gaps: dict[Path, list[PossiblyLost]] = {}
    for before, after in zip(scans, scans[1:]):
        if before.archive_sequence is None or after.archive_sequence != before.archive_sequence + 1:
            continue  # archives in between are elsewhere (uploaded) or of another writer
        if after.first_record_sequence is None or before.first_record_sequence is None:
            continue
        expected = max([before.first_record_sequence]
                       + ([before.last_sequence + 1] if before.last_sequence is not None else [])
                       + [lost.last + 1 for lost in before.possibly_lost])  # fmt: skip
        if after.first_record_sequence > expected:
            gaps.setdefault(after.path, []).append(PossiblyLost(expected, after.first_record_sequence - 1))
    return gaps


__all__ = ["archive_identity", "archive_paths", "read_archives", "sequence_gaps"]
