"""A folder on local disk as an object store: the embedded default (`file:///abs/dir`).

Writes are atomic (temp file in the same filesystem, fsync, `os.replace`, fsync of the
folder), so a reader sees the old object or the whole new one. Temp files and multipart
parts live under `<root>/.ferry-staging/`, which listings never show.
"""

from __future__ import annotations

import errno
import io
import os
import shutil
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import BinaryIO

from storage_core import diskio
from storage_core.checksums import crc32c, to_hex
from storage_core.errors import (
    AccessDenied,
    IntegrityError,
    InvalidKey,
    ObjectNotFound,
    PreconditionFailed,
    StorageError,
    UploadNotFound,
)
from storage_core.keys import validate_key
from storage_core.stores.base import ObjectMeta, PendingUpload, StoredPart, Tail

STAGING = ".ferry-staging"


@contextmanager
def _translated(key: str | None):
    """Map OS errors to Ferry's tree, keeping the original as __cause__."""
    try:
        yield
    except FileNotFoundError as exc:
        raise ObjectNotFound(f"no such object: {key}", key=key) from exc
    except PermissionError as exc:
        raise AccessDenied(f"permission denied for {key}: {exc.strerror}", key=key) from exc
    except OSError as exc:
        if exc.errno == errno.ENOSPC:
            raise StorageError(f"no space left on device while writing {key}", key=key) from exc
        raise StorageError(f"{exc.strerror or exc} ({key})", key=key) from exc


def _etag(stat: os.stat_result) -> str:
    # inode + size + mtime: changes whenever the file is replaced or rewritten
    return f'"{stat.st_ino:x}-{stat.st_size:x}-{stat.st_mtime_ns:x}"'


@contextmanager
def _new_file(path: Path) -> Iterator[int]:
    """A new file's descriptor, open for reading too (O_EXCL: never an existing file, never
    through a symlink)."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
    try:
        yield fd
    finally:
        os.close(fd)


def _copy_into(stream: BinaryIO, fd: int, length: int) -> tuple[int, int]:
    """Copy up to `length` bytes of `stream` into the start of `fd` through one reused
    buffer, starting writeback as it goes; return (CRC32C of the bytes, bytes copied)."""
    buffer = memoryview(bytearray(max(1, min(diskio.COPY_PIECE, length))))
    readinto = getattr(stream, "readinto", None)
    value, copied, flushed = 0, 0, 0
    while copied < length:
        want = buffer[: min(len(buffer), length - copied)]
        if readinto is not None:
            piece = want[: readinto(want) or 0]
        else:  # a stream without readinto (a socket body, say)
            block = stream.read(len(want))
            piece = memoryview(block)
        if not piece:
            break
        value = _crc(piece, value)
        diskio.write_all(fd, piece, copied)
        copied += len(piece)
        if copied - flushed >= diskio.WRITEBACK_EVERY:
            diskio.start_writeback(fd, flushed, copied - flushed)
            flushed = copied
    return value, copied


class LocalStore:
    """Objects are files under `root`; keys map to relative paths.

    Every capability of an ObjectStore, plus CopyFile and CopyRange (its objects are local
    files, so the kernel copies them); no Presign (nothing serves its objects over HTTP)."""

    multipart_threshold = 1 << 62  # local copies stream in one pass; multipart stays available

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root).resolve()
        self.uri = f"file://{self.root}"
        self._staging = self.root / STAGING

    # --- paths -----------------------------------------------------------------------
    def path_for(self, key: str) -> Path:
        validate_key(key)
        if key.split("/", 1)[0] == STAGING:
            raise InvalidKey(key, f"'{STAGING}' is reserved by the local store")
        return self.root.joinpath(*key.split("/"))

    def _meta(self, key: str, stat: os.stat_result) -> ObjectMeta:
        modified = datetime.fromtimestamp(stat.st_mtime, tz=timezone.utc)
        return ObjectMeta(key=key, size=stat.st_size, etag=_etag(stat), last_modified=modified)

    def _open_checked(self, key: str, if_match: str | None) -> tuple[BinaryIO, os.stat_result]:
        path = self.path_for(key)
        with _translated(key):
            handle = open(path, "rb")
        stat = os.fstat(handle.fileno())
        if if_match is not None and _etag(stat) != if_match:
            handle.close()
            raise PreconditionFailed(f"{key} changed (ETag {_etag(stat)} != {if_match})", key=key)
        return handle, stat

    # --- reads -----------------------------------------------------------------------
    def head(self, key: str) -> ObjectMeta:
        path = self.path_for(key)
        with _translated(key):
            stat = path.stat()
        if not path.is_file():
            raise ObjectNotFound(f"no such object: {key}", key=key)
        return self._meta(key, stat)

    def get_range(self, key: str, start: int, end: int, *, if_match: str | None = None) -> bytes:
        if start < 0 or end < start:
            raise ValueError(f"bad range [{start}, {end})")
        handle, _ = self._open_checked(key, if_match)
        with handle, _translated(key):
            return os.pread(handle.fileno(), end - start, start)

    def get_range_into(self, key: str, start: int, buffer: memoryview, *, if_match: str | None = None) -> int:
        if start < 0:
            raise ValueError(f"bad range start {start}")
        handle, _ = self._open_checked(key, if_match)
        filled = 0
        with handle, _translated(key):
            while filled < len(buffer):
                count = os.preadv(handle.fileno(), [buffer[filled:]], start + filled)
                if not count:
                    break  # end of the object
                filled += count
        return filled

    def get_tail(self, key: str, length: int, *, if_match: str | None = None) -> Tail:
        handle, stat = self._open_checked(key, if_match)
        with handle, _translated(key):
            start = max(0, stat.st_size - length)
            data = os.pread(handle.fileno(), stat.st_size - start, start)
        return Tail(data=data, start=start, size=stat.st_size, etag=_etag(stat))

    def open_read(self, key: str, *, if_match: str | None = None) -> BinaryIO:
        """The object's file itself, open for reading: it keeps reading the same bytes even
        if the key is replaced meanwhile (a replace installs a new file)."""
        handle, _ = self._open_checked(key, if_match)
        return handle

    def copy_range(self, source: BinaryIO, start: int, end: int, fd: int) -> tuple[int, int]:
        """CopyRange: bytes [start, end) of `source` (from `open_read`) into `fd` at the same
        offsets, by the kernel where it can (`diskio.copy_range`). An OSError is raised as it
        is: it may be the destination's."""
        if start < 0 or end < start:
            raise ValueError(f"bad range [{start}, {end})")
        return diskio.copy_range(source.fileno(), fd, start, end)

    def list(self, prefix: str = "") -> Iterator[ObjectMeta]:
        base = self.root
        folder = prefix.rsplit("/", 1)[0] if "/" in prefix else ""
        if folder:
            base = self.root.joinpath(*folder.split("/"))
        if not base.is_dir():
            return
        for dirpath, dirnames, filenames in os.walk(base):
            dirnames[:] = sorted(d for d in dirnames if not (Path(dirpath) == self.root and d == STAGING))
            for name in sorted(filenames):
                path = Path(dirpath, name)
                key = path.relative_to(self.root).as_posix()
                if key.startswith(prefix):
                    yield self._meta(key, path.stat())

    # --- writes ----------------------------------------------------------------------
    def _temp_path(self) -> Path:
        self._staging.mkdir(parents=True, exist_ok=True)
        return self._staging / f"tmp-{uuid.uuid4().hex}"

    def _install(self, temp: Path, key: str) -> ObjectMeta:
        """Move a complete, fsynced temp file to the key's path."""
        final = self.path_for(key)
        with _translated(key):
            final.parent.mkdir(parents=True, exist_ok=True)
            if final.is_dir():
                raise StorageError(f"cannot store {key}: a folder of that name exists", key=key)
            os.replace(temp, final)
            diskio.fsync_dir(final.parent)
            return self._meta(key, final.stat())

    def put(self, key: str, source: BinaryIO | bytes, *, size: int, crc32c: int | None = None) -> ObjectMeta:
        self.path_for(key)  # validate before touching disk
        stream = io.BytesIO(source) if isinstance(source, (bytes, bytearray, memoryview)) else source
        temp = self._temp_path()
        try:
            with _translated(key), _new_file(temp) as fd:
                diskio.preallocate(fd, size)
                value, written = _copy_into(stream, fd, size)
                if written != size:
                    raise IntegrityError(f"{key}: expected {size} bytes, source gave {written}", key=key)
                if crc32c is not None and value != crc32c:
                    raise IntegrityError(
                        f"{key}: CRC32C {to_hex(value)} does not match expected {to_hex(crc32c)}",
                        key=key,
                        retryable=True,
                    )
                os.fsync(fd)
            meta = self._install(temp, key)
            return ObjectMeta(meta.key, meta.size, meta.etag, meta.last_modified, value)
        finally:
            temp.unlink(missing_ok=True)

    def copy_file(
        self,
        key: str,
        source_fd: int,
        *,
        size: int,
        on_progress: Callable[[int], None] | None = None,
        before_commit: Callable[[], None] | None = None,
    ) -> ObjectMeta:
        """CopyFile: bytes [0, size) of the open local file `source_fd` become `key`, copied
        by the kernel where it can (`diskio.copy_file`), the CRC32C read back from the copy.

        `before_commit` runs once the copy is durable and before it becomes visible (a
        caller re-checks its source there; raising leaves nothing). A source shorter than
        `size` fails `before_commit`, or else is an IntegrityError."""
        self.path_for(key)
        temp = self._temp_path()
        try:
            with _translated(key), _new_file(temp) as fd:
                diskio.preallocate(fd, size)
                value, copied = diskio.copy_file(source_fd, fd, size, on_progress=on_progress)
                if copied < size:
                    if before_commit is not None:
                        before_commit()  # the caller's check names the cause when it can
                    raise IntegrityError(f"{key}: expected {size} bytes, source gave {copied}", key=key)
                os.fsync(fd)
            if before_commit is not None:
                before_commit()
            meta = self._install(temp, key)
            return ObjectMeta(meta.key, meta.size, meta.etag, meta.last_modified, value)
        finally:
            temp.unlink(missing_ok=True)

    def delete(self, key: str) -> None:
        path = self.path_for(key)
        with _translated(key):
            path.unlink(missing_ok=True)

    # --- multipart -------------------------------------------------------------------
    def _upload_dir(self, upload_id: str) -> Path:
        if not upload_id.isalnum():
            raise StorageError(f"malformed upload id {upload_id!r}")
        return self._staging / "uploads" / upload_id

    def _existing_upload(self, key: str, upload_id: str) -> Path:
        folder = self._upload_dir(upload_id)
        try:
            recorded = (folder / "key").read_text()
        except FileNotFoundError:
            raise UploadNotFound(f"multipart upload {upload_id} for {key} does not exist", key=key) from None
        if recorded != key:
            raise StorageError(f"multipart upload {upload_id} belongs to {recorded}, not {key}", key=key)
        return folder

    def create_multipart(self, key: str) -> str:
        self.path_for(key)
        upload_id = uuid.uuid4().hex
        folder = self._upload_dir(upload_id)
        with _translated(key):
            folder.mkdir(parents=True)
            (folder / "key").write_text(key)
        return upload_id

    def upload_part(self, key: str, upload_id: str, part_number: int, data: bytes, *, crc32c: int) -> str:
        folder = self._existing_upload(key, upload_id)
        actual = _crc(data)
        if actual != crc32c:
            raise IntegrityError(f"{key} part {part_number}: CRC32C mismatch", key=key, retryable=True)
        temp = folder / f"{part_number:05d}.tmp-{uuid.uuid4().hex}"
        with _translated(key):
            with open(temp, "wb") as out:
                out.write(data)
                out.flush()
                os.fsync(out.fileno())
            for old in folder.glob(f"{part_number:05d}-*.part"):
                old.unlink()
            os.replace(temp, folder / f"{part_number:05d}-{to_hex(actual)}.part")
        return f'"{to_hex(actual)}"'

    def list_parts(self, key: str, upload_id: str) -> list[StoredPart]:
        folder = self._existing_upload(key, upload_id)
        parts = []
        for path in sorted(folder.glob("*.part")):
            number, crc_hex = path.stem.split("-")
            parts.append(StoredPart(int(number), path.stat().st_size, f'"{crc_hex}"'))
        return parts

    def complete_multipart(self, key: str, upload_id: str, parts: list[tuple[int, str]], *,
                           if_match: str | None = None, if_none_match: bool = False) -> ObjectMeta:
        folder = self._existing_upload(key, upload_id)
        if if_match is not None or if_none_match:
            # checked before the install, not atomically with it: no Ferry path asks a
            # local store for a conditional write (device uploads need Presign)
            try:
                now = self.head(key).etag
            except ObjectNotFound:
                now = None
            if (if_none_match and now is not None) or (if_match is not None and now != if_match):
                raise PreconditionFailed(f"complete multipart upload of {key}: the object exists or changed", key=key)
        stored = {p.part_number: p for p in self.list_parts(key, upload_id)}
        temp = self._temp_path()
        try:
            with _translated(key), _new_file(temp) as fd:
                diskio.preallocate(fd, sum(stored[n].size for n, _ in parts if n in stored))
                size = 0
                for number, etag in parts:
                    part = stored.get(number)
                    if part is None or part.etag != etag:
                        raise StorageError(f"{key}: part {number} missing or changed", key=key)
                    with open(folder / f"{number:05d}-{etag.strip(chr(34))}.part", "rb", buffering=0) as src:
                        size += diskio.copy_range(src.fileno(), fd, 0, part.size, at=size)[1]
                os.fsync(fd)
            meta = self._install(temp, key)
        finally:
            temp.unlink(missing_ok=True)
        shutil.rmtree(folder, ignore_errors=True)
        return meta

    def abort_multipart(self, key: str, upload_id: str) -> None:
        folder = self._upload_dir(upload_id)
        if folder.exists():
            self._existing_upload(key, upload_id)
            with _translated(key):
                shutil.rmtree(folder)

    def list_multipart_uploads(self, prefix: str = "") -> list[PendingUpload]:
        uploads_dir = self._staging / "uploads"
        if not uploads_dir.is_dir():
            return []
        pending = []
        for folder in sorted(uploads_dir.iterdir()):
            try:
                key = (folder / "key").read_text()
                initiated = datetime.fromtimestamp(folder.stat().st_mtime, tz=timezone.utc)
            except FileNotFoundError:
                continue
            if key.startswith(prefix):
                pending.append(PendingUpload(key=key, upload_id=folder.name, initiated=initiated))
        return pending


def _crc(data: bytes, value: int = 0) -> int:
    return crc32c(data, value)


__all__ = ["LocalStore", "STAGING"]
