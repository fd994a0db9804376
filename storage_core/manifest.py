"""Scan a landing source into a manifest (pure reading: nothing is stored or recorded).

A landing source is a local folder or a bucket prefix (`s3://bucket/prefix`), laid out as
`SOURCE/DEVICE/RECORDING/...files` or, with a device given, `SOURCE/RECORDING/...files`.
Every file belongs to a recording; hidden files (`.name`) and rolling archives still being
written (`NAME.mcap.open`, `NAME.mcap.recovering`: they become NAME.mcap, and are ingested,
once closed) are listed as ignored, never skipped silently. Zero-byte files are files like any other (stored as empty objects).

With a stat memo (storage_core.statmemo), a folder scan fills in the CRC32C of every file
whose stat the memo vouches for, so a scan of an unchanged landing folder reads no file;
`with_checksums` remembers what it reads there.

Problems are files that cannot be ingested (unreadable, not a regular file, a name that is
not a safe key, outside any recording folder). By default any problem refuses the scan
with one ConfigError before anything moves (a device's upload is one whole). With
`hold_back=True` (the ingest: one bad device must not stop the fleet) a recording holding
a bad file is held back whole, with its reasons, and the others are scanned as usual; a
file outside any recording is held back on its own. Problems no recording can carry
still refuse the scan: no such folder, an unreadable source folder, nothing left to ingest.
"""

from __future__ import annotations

import os
import stat
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, BinaryIO

from storage_core.checksums import crc32c_of_stream
from storage_core.errors import ConfigError, InvalidKey
from storage_core.keys import parse_uri, validate_key
from storage_core.modalities import MODALITIES, modality_of  # re-exported: the scan records each file's modality
from storage_core.statmemo import FileRead, FileStamp, StatMemo
from storage_core.stores.base import List

if TYPE_CHECKING:
    from storage_core.config import FerrySettings

# rolling archives still being written (storage_core/device/archive): never ingested half-done
UNFINISHED_SUFFIXES = (".mcap.open", ".mcap.recovering")


@dataclass(frozen=True)
class ManifestEntry:
    """One local file to upload, and where it belongs."""

    path: Path | PurePosixPath | str  # the local file, a device's file, or an object URI (str)
    device_id: str
    recording: str
    relative_path: str  # within the recording, `/`-separated
    size: int
    mtime_ns: int | None  # a local file's identity (with size); None for an object
    modality: str
    crc32c: int | None = None  # known when there was reason to compute it (dedup)
    source_etag: str | None = None  # an object's identity (with size); None for a file

    @property
    def is_object(self) -> bool:
        return self.source_etag is not None


def _first_of(problems: Sequence[str]) -> str:
    """The first problem, and how many more there are: one line for a user."""
    more = f" (and {len(problems) - 1} more problem(s))" if len(problems) > 1 else ""
    return f"{problems[0]}{more}"


@dataclass(frozen=True)
class HeldBack:
    """A recording left out of this scan because of the problems of some of its files, or
    a file that belongs to no recording. A later scan tries it again."""

    device_id: str | None  # None: a file outside every device folder
    recording: str | None  # None: a file (`path`) or a device folder outside every recording
    path: str  # the recording's folder or prefix, or the file itself
    problems: tuple[str, ...]  # "path: reason", one per bad file

    @property
    def reason(self) -> str:
        return _first_of(self.problems)

    def __str__(self) -> str:
        """One line: `DEVICE/RECORDING: path: reason`, or for a loose file `path: reason`."""
        if self.recording is None:
            return self.reason  # each problem starts with the path already
        return f"{self.device_id}/{self.recording}: {self.reason}"


@dataclass(frozen=True)
class Scan:
    entries: list[ManifestEntry]
    ignored: list[Path | str]  # hidden files and objects, reported to the user
    held_back: list[HeldBack] = field(default_factory=list)  # recordings left out, with their reasons

    @property
    def total_bytes(self) -> int:
        return sum(e.size for e in self.entries)


def scan_source(
    source: str | os.PathLike[str],
    *,
    device_id: str | None = None,
    settings: FerrySettings | None = None,
    hold_back: bool = False,
    memo: StatMemo | None = None,
) -> Scan:
    """Scan a landing folder or, for an `s3://bucket/prefix` source, a bucket prefix (whose
    objects are known by their ETag: the memo is for folders)."""
    text = os.fspath(source)
    if "://" not in text:
        return scan_folder(text, device_id=device_id, hold_back=hold_back, memo=memo)
    location = parse_uri(text)
    if location.scheme == "file":  # a folder spelled as a URI
        return scan_folder(location.root, device_id=device_id, hold_back=hold_back, memo=memo)
    from storage_core.stores.registry import open_store  # the registry builds S3 clients: import late

    store, prefix = open_store(location, settings)
    return scan_objects(store, prefix, device_id=device_id, hold_back=hold_back)


def _check_device_id(device_id: str | None) -> None:
    if device_id is None:
        return
    try:
        validate_key(device_id)
    except InvalidKey as exc:
        raise ConfigError(f"invalid device id {device_id!r}: {exc.reason}") from exc
    if "/" in device_id:
        raise ConfigError(f"invalid device id {device_id!r}: no '/' allowed")


class _Unplaced(ValueError):
    """A file that belongs to no recording, or whose names are not a safe key."""


@dataclass(frozen=True)
class _Owner:
    """What a file's problem holds back: its recording, or (outside every recording) the
    file itself. `path` is shown to the user and tells owners apart."""

    device_id: str | None
    recording: str | None
    path: str


def _owner(relative: Sequence[str], *, device_id: str | None, shown: str, root: str) -> _Owner:
    """The recording a file `relative` to the source root belongs to, by its folder names
    alone (they are checked by `_place`)."""
    depth = 1 if device_id else 2  # folders above the files: RECORDING or DEVICE/RECORDING
    if len(relative) <= depth:
        return _Owner(device_id or (relative[0] if len(relative) > 1 else None), None, shown)
    return _Owner(device_id or relative[0], relative[depth - 1], f"{root}/{'/'.join(relative[:depth])}")


def _place(relative: Sequence[str], *, device_id: str | None, shown: str, root: str) -> tuple[str, str, str]:
    """(device, recording, path within the recording) of a file `relative` to the source root."""
    depth = 1 if device_id else 2  # folders above the files: RECORDING or DEVICE/RECORDING
    if len(relative) <= depth:
        where = "DEVICE/RECORDING/" if depth == 2 else "RECORDING/"
        raise _Unplaced(f"{shown}: not inside a recording folder (expected {root}/{where}...)")
    device = device_id or relative[0]
    recording = relative[depth - 1]
    inner = "/".join(relative[depth:])
    try:
        validate_key(f"{device}/{recording}/{inner}")
    except InvalidKey as exc:
        raise _Unplaced(f"{shown}: {exc.reason}") from exc
    return device, recording, inner


class _Findings:
    """What a scan collects: entries, ignored names, problems by the recording they hold
    back, and problems that refuse the whole scan."""

    def __init__(self, root: str) -> None:
        self.root = root
        self.entries: list[ManifestEntry] = []
        self.ignored: list[Path | str] = []
        self.held: dict[_Owner, list[str]] = {}
        self.fatal: list[str] = []

    def hold(self, owner: _Owner, problem: str) -> None:
        self.held.setdefault(owner, []).append(problem)

    def result(self, *, hold_back: bool) -> Scan:
        """The scan: entries of the recordings without problems, the others held back.
        ConfigError when the source itself is unreadable, nothing is left to ingest, or
        (without `hold_back`) anything is held back."""
        if self.fatal:
            raise ConfigError(f"cannot ingest {self.root}: {_first_of(self.fatal)}")
        held = sorted((HeldBack(o.device_id, o.recording, o.path, tuple(p)) for o, p in self.held.items()),
                      key=lambda h: h.path)
        held_recordings = {(h.device_id, h.recording) for h in held if h.recording is not None}
        entries = [e for e in self.entries if (e.device_id, e.recording) not in held_recordings]
        if held and (not hold_back or not entries):
            raise ConfigError(f"cannot ingest {self.root}: {_first_of([p for h in held for p in h.problems])}")
        if not entries:
            raise ConfigError(f"nothing to ingest in {self.root}: no files inside recording folders")
        return Scan(entries=entries, ignored=self.ignored, held_back=held)


def scan_folder(
    source: str | os.PathLike[str], *, device_id: str | None = None, hold_back: bool = False,
    memo: StatMemo | None = None,
) -> Scan:
    """Read a landing folder into manifest entries, sorted by path. See module docstring.
    With `memo`, each entry carries the CRC32C the memo holds for its stat (if it answers),
    and the memo forgets the files under the folder that are gone."""
    root = Path(source)
    if not root.exists():
        raise ConfigError(f"source folder {root} does not exist")
    if not root.is_dir():
        raise ConfigError(f"source {root} is not a folder")
    _check_device_id(device_id)

    found = _Findings(str(root))
    real_root = root.resolve()  # os.walk does not descend into linked folders: only a file may be a link
    known = memo.entries_under(real_root) if memo is not None else {}
    seen: set[str] = set()

    def walk_error(exc: OSError) -> None:
        problem = f"{exc.filename}: cannot be read ({exc.strerror})"
        relative = Path(exc.filename).relative_to(root).parts
        if not relative:
            found.fatal.append(problem)
        elif len(relative) < (1 if device_id else 2):  # a device folder: none of its recordings can be listed
            found.hold(_Owner(relative[0], None, str(exc.filename)), problem)
        else:
            found.hold(_owner((*relative, ""), device_id=device_id, shown=str(exc.filename), root=str(root)), problem)

    for dirpath, dirnames, filenames in os.walk(root, onerror=walk_error):
        dirnames.sort()
        here = Path(dirpath)
        for name in sorted(filenames):
            path = here / name
            relative = path.relative_to(root).parts
            if any(part.startswith(".") for part in relative) or name.endswith(UNFINISHED_SUFFIXES):
                found.ignored.append(path)
                continue
            owner = _owner(relative, device_id=device_id, shown=str(path), root=str(root))
            try:
                device, recording, inner = _place(relative, device_id=device_id, shown=str(path), root=str(root))
                real, info = real_root.joinpath(*relative), os.lstat(path)
                if stat.S_ISLNK(info.st_mode):
                    real, info = path.resolve(), path.stat()
            except _Unplaced as exc:
                found.hold(owner, str(exc))
                continue
            except OSError as exc:
                found.hold(owner, f"{path}: cannot be read ({exc.strerror})")
                continue
            if not stat.S_ISREG(info.st_mode):
                found.hold(owner, f"{path}: not a regular file")
            elif not os.access(path, os.R_OK):
                found.hold(owner, f"{path}: cannot be read (permission denied)")
            else:
                seen.add(str(real))
                value = memo.lookup(known, str(real), FileStamp.of(info)) if memo is not None else None
                found.entries.append(ManifestEntry(
                    path=real, device_id=device, recording=recording, relative_path=inner,
                    size=info.st_size, mtime_ns=info.st_mtime_ns, modality=modality_of(name), crc32c=value,
                ))  # fmt: skip
    if memo is not None:
        memo.forget(set(known) - seen)
    return found.result(hold_back=hold_back)


def scan_objects(store: List, prefix: str = "", *, device_id: str | None = None, hold_back: bool = False) -> Scan:
    """Read the objects under a bucket prefix into manifest entries, sorted by key. Each
    entry's `path` is the object's URI and its identity is (size, ETag). Zero-byte keys
    ending in `/` are folder markers some tools create, not files; other zero-byte
    objects are files like any other."""
    _check_device_id(device_id)
    base = f"{prefix.strip('/')}/" if prefix.strip("/") else ""
    root = f"{store.uri}/{base}".rstrip("/")
    found = _Findings(root)
    for meta in sorted(store.list(base), key=lambda m: m.key):
        uri = f"{store.uri}/{meta.key}"
        relative = meta.key[len(base):].split("/")
        if meta.key.endswith("/") and meta.size == 0:
            continue
        if any(part.startswith(".") and part not in (".", "..") for part in relative):  # `..` is a problem
            found.ignored.append(uri)
            continue
        try:
            device, recording, inner = _place(relative, device_id=device_id, shown=uri, root=root)
        except _Unplaced as exc:
            found.hold(_owner(relative, device_id=device_id, shown=uri, root=root), str(exc))
            continue
        found.entries.append(ManifestEntry(
            path=uri, device_id=device, recording=recording, relative_path=inner, size=meta.size,
            mtime_ns=None, modality=modality_of(relative[-1]), crc32c=meta.crc32c, source_etag=meta.etag,
        ))  # fmt: skip
    return found.result(hold_back=hold_back)


def _open_file(entry: ManifestEntry) -> BinaryIO:
    return open(entry.path, "rb")


def with_checksums(
    entries: list[ManifestEntry],
    needs_checksum: Callable[[ManifestEntry], bool],
    *,
    open_source: Callable[[ManifestEntry], BinaryIO] = _open_file,
    memo: StatMemo | None = None,
) -> list[ManifestEntry]:
    """Fill in the CRC32C of the entries that need one (candidates for dedup: an object of
    the same size already stored at their destination). Others are left for the upload to
    compute, so new files are read once. `open_source` opens an entry's bytes (a local
    file by default; a pinned object reader for a bucket-prefix source). With `memo`, the
    checksums of local files read whole (and unchanged meanwhile) are remembered."""
    result, read = [], []
    for entry in entries:
        if entry.crc32c is None and needs_checksum(entry):
            started_ns = time.time_ns()
            with open_source(entry) as stream:
                before = None if entry.is_object else FileStamp.of(os.fstat(stream.fileno()))
                value, _ = crc32c_of_stream(stream)
                if before is not None and FileStamp.of(os.fstat(stream.fileno())) == before:
                    read.append((str(entry.path), FileRead(before, started_ns), value))
            entry = replace(entry, crc32c=value)
        result.append(entry)
    if memo is not None:
        memo.record(read)
    return result


__all__ = ["MODALITIES", "HeldBack", "ManifestEntry", "Scan", "modality_of", "scan_folder", "scan_objects", "scan_source",
           "with_checksums"]
