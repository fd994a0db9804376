"""Scan a landing source into a manifest (pure reading: nothing is stored or recorded).

A landing source is a local folder or a bucket prefix (`s3://bucket/prefix`), laid out as
`SOURCE/DEVICE/RECORDING/...files` or, with a device given, `SOURCE/RECORDING/...files`.
Every file belongs to a recording; hidden files (`.name`) are listed as ignored, never
skipped silently. Problems (no such folder, nothing to ingest, an empty or unreadable
file, a file outside any recording, a name that is not a safe key) are collected and
raised together as one ConfigError before anything moves.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, BinaryIO

from storage_core.checksums import crc32c_of_stream
from storage_core.errors import ConfigError, InvalidKey
from storage_core.keys import parse_uri, validate_key
from storage_core.modalities import MODALITIES, modality_of  # re-exported: the scan records each file's modality
from storage_core.stores.base import List

if TYPE_CHECKING:
    from storage_core.config import FerrySettings


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


@dataclass(frozen=True)
class Scan:
    entries: list[ManifestEntry]
    ignored: list[Path | str]  # hidden files and objects, reported to the user

    @property
    def total_bytes(self) -> int:
        return sum(e.size for e in self.entries)


def scan_source(
    source: str | os.PathLike[str], *, device_id: str | None = None, settings: FerrySettings | None = None
) -> Scan:
    """Scan a landing folder or, for an `s3://bucket/prefix` source, a bucket prefix."""
    text = os.fspath(source)
    if "://" not in text:
        return scan_folder(text, device_id=device_id)
    location = parse_uri(text)
    if location.scheme == "file":  # a folder spelled as a URI
        return scan_folder(location.root, device_id=device_id)
    from storage_core.stores.registry import open_store  # the registry builds S3 clients: import late

    store, prefix = open_store(location, settings)
    return scan_objects(store, prefix, device_id=device_id)


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


def _scan_result(root: str, entries: list[ManifestEntry], ignored: list[Path | str], problems: list[str]) -> Scan:
    if problems:
        more = f" (and {len(problems) - 1} more problem(s))" if len(problems) > 1 else ""
        raise ConfigError(f"cannot ingest {root}: {problems[0]}{more}")
    if not entries:
        raise ConfigError(f"nothing to ingest in {root}: no files inside recording folders")
    return Scan(entries=entries, ignored=ignored)


def scan_folder(source: str | os.PathLike[str], *, device_id: str | None = None) -> Scan:
    """Read a landing folder into manifest entries, sorted by path. See module docstring."""
    root = Path(source)
    if not root.exists():
        raise ConfigError(f"source folder {root} does not exist")
    if not root.is_dir():
        raise ConfigError(f"source {root} is not a folder")
    _check_device_id(device_id)

    entries: list[ManifestEntry] = []
    ignored: list[Path | str] = []
    problems: list[str] = []

    def walk_error(exc: OSError) -> None:
        problems.append(f"{exc.filename}: cannot be read ({exc.strerror})")

    for dirpath, dirnames, filenames in os.walk(root, onerror=walk_error):
        dirnames.sort()
        here = Path(dirpath)
        for name in sorted(filenames):
            path = here / name
            relative = path.relative_to(root).parts
            if any(part.startswith(".") for part in relative):
                ignored.append(path)
                continue
            try:
                device, recording, inner = _place(relative, device_id=device_id, shown=str(path), root=str(root))
                info = path.stat()
            except _Unplaced as exc:
                problems.append(str(exc))
                continue
            except OSError as exc:
                problems.append(f"{path}: cannot be read ({exc.strerror})")
                continue
            if not stat.S_ISREG(info.st_mode):
                problems.append(f"{path}: not a regular file")
            elif info.st_size == 0:
                problems.append(f"{path}: empty file (0 bytes)")
            elif not os.access(path, os.R_OK):
                problems.append(f"{path}: cannot be read (permission denied)")
            else:
                entries.append(ManifestEntry(
                    path=path.resolve(), device_id=device, recording=recording, relative_path=inner,
                    size=info.st_size, mtime_ns=info.st_mtime_ns, modality=modality_of(name),
                ))  # fmt: skip
    return _scan_result(str(root), entries, ignored, problems)


def scan_objects(store: List, prefix: str = "", *, device_id: str | None = None) -> Scan:
    """Read the objects under a bucket prefix into manifest entries, sorted by key. Each
    entry's `path` is the object's URI and its identity is (size, ETag). Zero-byte keys
    ending in `/` are folder markers some tools create, not files."""
    _check_device_id(device_id)
    base = f"{prefix.strip('/')}/" if prefix.strip("/") else ""
    root = f"{store.uri}/{base}".rstrip("/")
    entries: list[ManifestEntry] = []
    ignored: list[Path | str] = []
    problems: list[str] = []
    for meta in sorted(store.list(base), key=lambda m: m.key):
        uri = f"{store.uri}/{meta.key}"
        relative = meta.key[len(base):].split("/")
        if meta.key.endswith("/") and meta.size == 0:
            continue
        if any(part.startswith(".") and part not in (".", "..") for part in relative):  # `..` is a problem
            ignored.append(uri)
            continue
        try:
            device, recording, inner = _place(relative, device_id=device_id, shown=uri, root=root)
        except _Unplaced as exc:
            problems.append(str(exc))
            continue
        if meta.size == 0:
            problems.append(f"{uri}: empty object (0 bytes)")
            continue
        entries.append(ManifestEntry(
            path=uri, device_id=device, recording=recording, relative_path=inner, size=meta.size,
            mtime_ns=None, modality=modality_of(relative[-1]), crc32c=meta.crc32c, source_etag=meta.etag,
        ))  # fmt: skip
    return _scan_result(root, entries, ignored, problems)


def _open_file(entry: ManifestEntry) -> BinaryIO:
    return open(entry.path, "rb")


def with_checksums(
    entries: list[ManifestEntry],
    needs_checksum: Callable[[ManifestEntry], bool],
    *,
    open_source: Callable[[ManifestEntry], BinaryIO] = _open_file,
) -> list[ManifestEntry]:
    """Fill in the CRC32C of the entries that need one (candidates for dedup: an object of
    the same size already stored at their destination). Others are left for the upload to
    compute, so new files are read once. `open_source` opens an entry's bytes (a local
    file by default; a pinned object reader for a bucket-prefix source)."""
    result = []
    for entry in entries:
        if entry.crc32c is None and needs_checksum(entry):
            with open_source(entry) as stream:
                value, _ = crc32c_of_stream(stream)
            entry = replace(entry, crc32c=value)
        result.append(entry)
    return result


__all__ = ["MODALITIES", "ManifestEntry", "Scan", "modality_of", "scan_folder", "scan_objects", "scan_source",
           "with_checksums"]
