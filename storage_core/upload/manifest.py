"""Scan a landing folder into a manifest (pure reading: nothing is stored or recorded).

Layout: `SOURCE/DEVICE/RECORDING/...files` or, with a device given,
`SOURCE/RECORDING/...files`. Every file belongs to a recording; hidden files (`.name`) are
listed as ignored, never skipped silently. Problems (no such folder, nothing to ingest, an
empty or unreadable file, a file outside any recording, a name that is not a safe key)
are collected and raised together as one ConfigError before anything moves.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path, PurePosixPath

from storage_core.checksums import crc32c_of_stream
from storage_core.errors import ConfigError, InvalidKey
from storage_core.keys import validate_key

@dataclass(frozen=True)
class ManifestEntry:
    """One local file to upload, and where it belongs."""

    path: Path | PurePosixPath  # the local file, or a description of a remote source
    device_id: str
    recording: str
    relative_path: str  # within the recording, `/`-separated
    size: int
    mtime_ns: int
    modality: str
    crc32c: int | None = None  # known when there was reason to compute it (dedup)


MODALITIES = {
    ".mcap": "mcap",
    ".parquet": "parquet",
    ".mp4": "video",
    ".mkv": "video",
    ".mov": "video",
    ".avi": "video",
    ".h264": "video",
    ".h265": "video",
    ".ts": "video",
    ".wav": "audio",
    ".flac": "audio",
    ".opus": "audio",
    ".ogg": "audio",
    ".mp3": "audio",
    ".aac": "audio",
}


def modality_of(name: str) -> str:
    return MODALITIES.get(Path(name).suffix.lower(), "other")


@dataclass(frozen=True)
class Scan:
    entries: list[ManifestEntry]
    ignored: list[Path]  # hidden files, reported to the user

    @property
    def total_bytes(self) -> int:
        return sum(e.size for e in self.entries)


def scan_source(source: str | os.PathLike[str], *, device_id: str | None = None) -> Scan:
    """Read the landing folder into manifest entries, sorted by path. See module docstring."""
    root = Path(source)
    if not root.exists():
        raise ConfigError(f"source folder {root} does not exist")
    if not root.is_dir():
        raise ConfigError(f"source {root} is not a folder")
    if device_id is not None:
        try:
            validate_key(device_id)
        except InvalidKey as exc:
            raise ConfigError(f"invalid device id {device_id!r}: {exc.reason}") from exc
        if "/" in device_id:
            raise ConfigError(f"invalid device id {device_id!r}: no '/' allowed")

    entries: list[ManifestEntry] = []
    ignored: list[Path] = []
    problems: list[str] = []
    depth = 1 if device_id else 2  # folders above the files: RECORDING or DEVICE/RECORDING

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
            if len(relative) <= depth:
                where = "DEVICE/RECORDING/" if depth == 2 else "RECORDING/"
                problems.append(f"{path}: not inside a recording folder (expected {root}/{where}...)")
                continue
            try:
                info = path.stat()
            except OSError as exc:
                problems.append(f"{path}: cannot be read ({exc.strerror})")
                continue
            if not stat.S_ISREG(info.st_mode):
                problems.append(f"{path}: not a regular file")
                continue
            if info.st_size == 0:
                problems.append(f"{path}: empty file (0 bytes)")
                continue
            if not os.access(path, os.R_OK):
                problems.append(f"{path}: cannot be read (permission denied)")
                continue
            device = device_id or relative[0]
            recording = relative[depth - 1]
            inner = "/".join(relative[depth:])
            try:
                validate_key(f"{device}/{recording}/{inner}")
            except InvalidKey as exc:
                problems.append(f"{path}: {exc.reason}")
                continue
            entries.append(
                ManifestEntry(
                    path=path.resolve(),
                    device_id=device,
                    recording=recording,
                    relative_path=inner,
                    size=info.st_size,
                    mtime_ns=info.st_mtime_ns,
                    modality=modality_of(name),
                )
            )
    if problems:
        more = f" (and {len(problems) - 1} more problem(s))" if len(problems) > 1 else ""
        raise ConfigError(f"cannot ingest {root}: {problems[0]}{more}")
    if not entries:
        raise ConfigError(f"nothing to ingest in {root}: no files inside recording folders")
    return Scan(entries=entries, ignored=ignored)


def with_checksums(entries: list[ManifestEntry], needs_checksum: Callable[[ManifestEntry], bool]) -> list[ManifestEntry]:
    """Fill in the CRC32C of the entries that need one (candidates for dedup: an object of
    the same size already stored at their destination). Others are left for the upload to
    compute, so new files are read once."""
    result = []
    for entry in entries:
        if entry.crc32c is None and needs_checksum(entry):
            with open(entry.path, "rb") as stream:
                value, _ = crc32c_of_stream(stream)
            entry = replace(entry, crc32c=value)
        result.append(entry)
    return result


__all__ = ["MODALITIES", "ManifestEntry", "Scan", "modality_of", "scan_source", "with_checksums"]
