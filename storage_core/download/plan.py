"""Plan every write of a download before the first byte moves.

Destinations, by layout (`rel` is a segment's path below its modality prefix; a
processed artifact is the single file `{modality}.{ext}` in the folder the layout gives
its recording):

    layout          segment                                  processed artifact
    by_recording    dest/{device}/{recording}/{modality}/{rel}   dest/{device}/{recording}/{modality}.{ext}
    by_modality     dest/{modality}/{device}/{recording}/{rel}   dest/{modality}/{device}/{recording}/{modality}.{ext}
    flat            dest/{device}__{recording}__{modality}/{rel} dest/{device}__{recording}__{modality}.{ext}

`plan_writes` only computes and checks (it reads the file system with `stat`, it never
writes). Every problem it finds is collected and raised together in one WritePlanError.
"""

from __future__ import annotations

import os
import stat
import threading
import time
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass, replace
from functools import cached_property
from pathlib import Path
from typing import Literal

from storage_core.checksums import crc32c_of_stream
from storage_core.download.source import DownloadSource
from storage_core.errors import ConfigError, InvalidKey, WritePlanError
from storage_core.keys import validate_key

Layout = Literal["by_recording", "by_modality", "flat"]
LAYOUTS: tuple[str, ...] = ("by_recording", "by_modality", "flat")
PART_SUFFIX = ".part"
FLAT_SEPARATOR = "__"
NAME_MAX = 255  # bytes per path component on every common Linux file system


@dataclass(frozen=True)
class PlannedWrite:
    """One object and the path it will be written to; `part` is the temp file beside it.
    `present`: the destination already holds exactly these bytes (a resumed download)."""

    source: DownloadSource
    dest: Path
    present: bool = False

    @cached_property  # asked several times per file
    def part(self) -> Path:
        return self.dest.with_name(self.dest.name + PART_SUFFIX)


@dataclass(frozen=True)
class PlanProblem:
    """One reason a plan cannot run. `kind` is one of: unsafe, ambiguous, duplicate,
    conflict, exists, not_writable."""

    kind: str
    message: str
    key: str | None = None
    path: Path | None = None


def plan_writes(
    sources: Iterable[DownloadSource],
    dest: str | os.PathLike[str],
    *,
    layout: Layout = "by_recording",
    overwrite: bool = False,
    resume: bool = False,
) -> list[PlannedWrite]:
    """Every write of a download, in the order they are returned to the caller.

    Order: recordings (device, recording) in order of first appearance, then modalities
    in order of first appearance within the recording, then segments by relative path.

    Raises WritePlanError listing every problem at once: unsafe names (`..`, absolute or
    empty segments, over-long names), `flat` names that would be ambiguous, two sources
    with one destination, a destination that would be both a file and a folder (or
    another's `.part` file), an existing file when `overwrite` is false, an existing
    folder at a file's path, and destinations whose folder cannot be written.
    Raises ConfigError for an unknown layout.

    With `resume`, an existing file whose size and CRC32C match what the source records
    is no problem: its write comes back `present=True` (nothing to fetch). This reads
    those files once; a file that differs is still refused unless `overwrite`.
    """
    if layout not in LAYOUTS:
        raise ConfigError(f"unknown download layout {layout!r}: use one of {', '.join(LAYOUTS)}")
    root = Path(dest)
    problems: list[PlanProblem] = []
    writes: list[PlannedWrite] = []
    for source in _ordered(list(sources)):
        path = destination(source, root, layout=layout, problems=problems)
        if path is not None:
            writes.append(PlannedWrite(source, path))
    problems.extend(_collisions(writes))
    if resume and not overwrite:
        writes = [replace(w, present=True) if _holds(w.dest, w.source) else w for w in writes]
    problems.extend(_disk_problems(writes, root, overwrite=overwrite, resume=resume))
    if problems:
        raise WritePlanError(problems)
    return writes


def _ordered(sources: list[DownloadSource]) -> list[DownloadSource]:
    recordings: dict[tuple[str, str], int] = {}
    modalities: dict[tuple[str, str, str], int] = {}
    for source in sources:
        recordings.setdefault((source.device_id, source.recording), len(recordings))
        modalities.setdefault((source.device_id, source.recording, source.modality), len(modalities))

    def rank(source: DownloadSource) -> tuple[int, int, str, str]:
        return (
            recordings[(source.device_id, source.recording)],
            modalities[(source.device_id, source.recording, source.modality)],
            source.relative_path if source.segmented else "",
            source.key,
        )

    return sorted(sources, key=rank)  # stable: true duplicates keep input order


def destination(
    source: DownloadSource,
    root: Path,
    *,
    layout: Layout,
    problems: list[PlanProblem],
) -> Path | None:
    """The path `source` is written to under `root`, or None after appending why it cannot be."""
    before = len(problems)

    def bad(kind: str, message: str) -> None:
        problems.append(PlanProblem(kind, message, key=source.key))

    try:
        validate_key(source.key)
    except InvalidKey as exc:
        bad("unsafe", f"unsafe source key {source.key!r}: {exc.reason}")
    names = {"device_id": source.device_id, "recording": source.recording, "modality": source.modality}
    for field, value in names.items():
        reason = _segment_problem(value)
        if reason:
            bad("unsafe", f"{source.key}: unsafe {field} {value!r}: {reason}")
        elif layout == "flat" and (FLAT_SEPARATOR in value or value.startswith("_") or value.endswith("_")):
            # `a_` + `__` + `b` and `a` + `__` + `_b` both give `a___b`: refuse, never guess
            bad("ambiguous", f"{source.key}: {field} {value!r} would make flat names ambiguous "
                f"(contains {FLAT_SEPARATOR!r} or starts/ends with '_'); use another layout")
    if source.segmented:
        tail = _relative_parts(source, bad)
    else:
        ext = source.ext.removeprefix(".")
        reason = _segment_problem(f"{source.modality}.{ext}") if ext else "processed artifacts need an extension"
        if reason:
            bad("unsafe", f"{source.key}: unsafe file name for modality {source.modality!r} ext {source.ext!r}: {reason}")
        tail = [f"{source.modality}.{ext}"]
    if len(problems) > before:
        return None
    device, recording, modality = source.device_id, source.recording, source.modality
    if layout == "by_recording":
        parents = [device, recording] + ([modality] if source.segmented else [])
    elif layout == "by_modality":
        parents = [modality, device, recording]
    else:
        flat = FLAT_SEPARATOR.join((device, recording, modality))
        parents, tail = ([flat], tail) if source.segmented else ([], [f"{flat}.{source.ext.removeprefix('.')}"])
        if len(os.fsencode(tail[-1] + PART_SUFFIX)) > NAME_MAX or len(os.fsencode(flat)) > NAME_MAX:
            bad("unsafe", f"{source.key}: flat name {flat!r} is longer than {NAME_MAX} bytes")
            return None
    return root.joinpath(*parents, *tail)


def _segment_problem(name: str) -> str | None:
    """Why `name` cannot be one path component, or None."""
    if not name:
        return "empty"
    if "/" in name or "\\" in name or "\x00" in name:
        return "contains '/', a backslash or a NUL byte"
    if name in (".", ".."):
        return f"'{name}' is not a file name"
    if len(os.fsencode(name + PART_SUFFIX)) > NAME_MAX:
        return f"longer than {NAME_MAX - len(PART_SUFFIX)} bytes"
    return None


def _relative_parts(source: DownloadSource, bad) -> list[str]:
    try:
        validate_key(source.relative_path)
    except InvalidKey as exc:
        bad("unsafe", f"{source.key}: unsafe relative path {source.relative_path!r}: {exc.reason}")
        return []
    parts = source.relative_path.split("/")
    for part in parts:
        if len(os.fsencode(part + PART_SUFFIX)) > NAME_MAX:
            bad("unsafe", f"{source.key}: path component {part[:40]!r}... is longer than {NAME_MAX - len(PART_SUFFIX)} bytes")
    return parts


def _collisions(writes: list[PlannedWrite]) -> list[PlanProblem]:
    """Two writes to one path, a path that is both a file and a folder, a path that is another's `.part`."""
    problems: list[PlanProblem] = []
    owner: dict[Path, PlannedWrite] = {}
    for write in writes:
        first = owner.setdefault(write.dest, write)
        if first is not write:
            problems.append(PlanProblem(
                "duplicate", f"{write.source.key} and {first.source.key} would both be written to {write.dest}",
                key=write.source.key, path=write.dest))
    owned_above: dict[Path, list[Path]] = {}  # folder -> the planned files among it and its parents
    for write in owner.values():
        folder = write.dest.parent
        above = owned_above.get(folder)
        if above is None:  # once per folder, not once per file: its writes share every parent
            above = owned_above[folder] = [p for p in (folder, *folder.parents) if p in owner]
        for parent in above:
            other = owner[parent]
            problems.append(PlanProblem(
                "conflict", f"{parent} would be both the file for {other.source.key} and a folder for {write.source.key}",
                key=write.source.key, path=parent))
        other = owner.get(write.part)
        if other is not None:
            problems.append(PlanProblem(
                "conflict", f"{other.dest} ({other.source.key}) is the temporary file of {write.dest} ({write.source.key})",
                key=other.source.key, path=other.dest))
    return problems


def _holds(path: Path, source: DownloadSource) -> bool:
    """`path` is a regular file with exactly the bytes the source records (size and CRC32C)."""
    if source.size is None or source.crc32c is None:
        return False  # nothing to prove it against: never assume
    try:
        info = os.lstat(path)
        if not stat.S_ISREG(info.st_mode) or info.st_size != source.size:
            return False
        value = _crc32c_of_file(path, info)
    except OSError:
        return False
    return value == source.crc32c


# CRC32C of files already read, by identity: the download flow plans once to report and
# again in each batch, and a resumed restore would otherwise read every kept file twice.
# ctime cannot be set from user space and changes with any write, so an entry can only
# match a file whose bytes have not been written since. File times tick in steps of a few
# milliseconds, so a file changed within the last SETTLED_NS is read again each time.
_FileIdentity = tuple[int, int, int, int, int]
_known_crc32c: OrderedDict[_FileIdentity, int] = OrderedDict()
_known_lock = threading.Lock()
KNOWN_FILES = 4096
SETTLED_NS = 2_000_000_000


def _identity(info: os.stat_result) -> _FileIdentity:
    return (info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns, info.st_ctime_ns)


def _crc32c_of_file(path: Path, info: os.stat_result) -> int:
    with _known_lock:
        known = _known_crc32c.get(_identity(info))
    if known is not None:
        return known
    with open(path, "rb") as stream:
        before = os.fstat(stream.fileno())
        value, _ = crc32c_of_stream(stream)
        written_since = _identity(os.fstat(stream.fileno())) != _identity(before)
        if written_since or time.time_ns() - before.st_ctime_ns < SETTLED_NS:
            return value  # being written, or just now: answer for now, remember nothing
    with _known_lock:
        _known_crc32c[_identity(before)] = value
        while len(_known_crc32c) > KNOWN_FILES:
            _known_crc32c.popitem(last=False)
    return value


def _disk_problems(writes: list[PlannedWrite], root: Path, *, overwrite: bool, resume: bool) -> list[PlanProblem]:
    """What the file system already holds that would make a write fail or clobber a file."""
    problems: list[PlanProblem] = []
    folders: dict[Path, str | None] = {}  # folder -> problem (None: fine), shared by many segments
    existing: set[Path] = set()  # the folders that exist (a file can only be in the way in one of them)

    def folder_problem(folder: Path) -> str | None:
        if folder in folders:
            return folders[folder]
        if os.path.lexists(folder):
            existing.add(folder)
            if not folder.is_dir():
                reason = f"{folder} exists and is not a folder"
            elif not os.access(folder, os.W_OK | os.X_OK):
                reason = f"destination folder {folder} is not writable"
            else:
                reason = None
        elif folder.parent == folder:
            reason = f"{folder} does not exist"
        else:
            reason = folder_problem(folder.parent)  # created on demand: its nearest existing parent decides
        folders[folder] = reason
        return reason

    reported: set[str] = set()
    for write in writes:
        dest = write.dest
        if write.present:
            continue
        folder = dest.parent
        reason = folder_problem(folder)
        info = _lstat(dest) if folder in existing else None  # no stat of each file of a new folder
        if info is not None and stat.S_ISDIR(info.st_mode):
            problems.append(PlanProblem("exists", f"{dest} is an existing folder; cannot write {write.source.key} there",
                                        key=write.source.key, path=dest))
        elif info is not None and not overwrite:
            hint = "it differs from the stored object; " if resume else ""
            problems.append(PlanProblem("exists", f"{dest} already exists ({hint}pass overwrite=True to replace it"
                                        f"{'' if resume else ', or resume=True to keep identical files'})",
                                        key=write.source.key, path=dest))
        if reason and reason not in reported:  # one line per bad folder, not one per segment
            reported.add(reason)
            problems.append(PlanProblem("not_writable", reason, key=write.source.key, path=dest.parent))
    return problems


def _lstat(path: Path) -> os.stat_result | None:
    try:
        return os.lstat(path)
    except (FileNotFoundError, NotADirectoryError):
        return None


__all__ = ["LAYOUTS", "Layout", "PART_SUFFIX", "PlanProblem", "PlannedWrite", "WritePlanError", "destination", "plan_writes"]
