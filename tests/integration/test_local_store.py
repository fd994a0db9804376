"""The local folder store's write paths on real disk: bytes and CRC32C right whatever the
stream or copy, and a full disk, a short source or a file still being written leaves the
old object (or none) and no temp file."""

from __future__ import annotations

import errno
import io
import os

import pytest

from storage_core import diskio
from storage_core.checksums import crc32c
from storage_core.errors import IntegrityError, ObjectNotFound, SourceChanged, StorageError
from storage_core.stores.local import STAGING, LocalStore
from storage_core.upload import upload_file

MiB = 1024 * 1024


class _ReadOnly:
    """A stream with `read` only (a socket body, say): no `readinto` to copy through."""

    def __init__(self, data: bytes) -> None:
        self._stream = io.BytesIO(data)

    def read(self, size: int = -1) -> bytes:
        return self._stream.read(min(size, 300_001))  # short reads, as sockets give


def _temp_files(store: LocalStore) -> list[str]:
    return [name for name in os.listdir(store.root / STAGING) if name.startswith("tmp-")]


@pytest.fixture
def store(tmp_path) -> LocalStore:
    return LocalStore(tmp_path / "store")


@pytest.mark.parametrize("wrap", [io.BytesIO, _ReadOnly], ids=["readinto", "read-only"])
def test_put_streams_many_writeback_windows_exactly(store, wrap):
    data = os.urandom(2 * diskio.WRITEBACK_EVERY + 12_345)
    meta = store.put("dev/rec/big.bin", wrap(data), size=len(data), crc32c=crc32c(data))
    assert meta.crc32c == crc32c(data) and meta.size == len(data)
    assert store.path_for("dev/rec/big.bin").read_bytes() == data
    assert _temp_files(store) == []


def test_a_short_source_is_refused_and_leaves_nothing(store):
    with pytest.raises(IntegrityError, match="expected 5000000 bytes, source gave 4000000"):
        store.put("k", io.BytesIO(b"x" * 4_000_000), size=5_000_000)
    with pytest.raises(ObjectNotFound):
        store.head("k")
    assert _temp_files(store) == []


@pytest.mark.parametrize("where", ["preallocate", "mid-write"])
def test_a_full_disk_keeps_the_old_object_and_no_temp_file(store, monkeypatch, where):
    old = b"the old version"
    store.put("k", old, size=len(old))
    if where == "preallocate":
        def allocate(fd, offset, length):
            raise OSError(errno.ENOSPC, "No space left on device")

        monkeypatch.setattr(diskio, "_allocate", allocate)
    else:
        budget = [3 * MiB]

        def pwrite(fd, data, offset):
            if budget[0] <= 0:
                raise OSError(errno.ENOSPC, "No space left on device")
            budget[0] -= len(data)
            return os.pwrite(fd, data, offset)

        monkeypatch.setattr(diskio, "_pwrite", pwrite)
    data = os.urandom(8 * MiB)
    with pytest.raises(StorageError, match="no space left on device while writing k"):
        store.put("k", io.BytesIO(data), size=len(data))
    assert store.path_for("k").read_bytes() == old
    assert _temp_files(store) == []


def test_completing_a_multipart_upload_on_a_full_disk_keeps_its_parts(store, monkeypatch):
    one, two = os.urandom(5 * MiB), os.urandom(1234)
    upload_id = store.create_multipart("big")
    parts = [(1, store.upload_part("big", upload_id, 1, one, crc32c=crc32c(one))),
             (2, store.upload_part("big", upload_id, 2, two, crc32c=crc32c(two)))]  # fmt: skip

    def full(*args):
        raise OSError(errno.ENOSPC, "No space left on device")

    with monkeypatch.context() as patch:
        patch.setattr(diskio, "_pwrite", full)  # a copy through a buffer
        patch.setattr(diskio, "_copy_file_range", full)  # a kernel copy
        with pytest.raises(StorageError, match="no space left"):
            store.complete_multipart("big", upload_id, parts)
    with pytest.raises(ObjectNotFound):
        store.head("big")
    assert _temp_files(store) == [] and [p.part_number for p in store.list_parts("big", upload_id)] == [1, 2]

    meta = store.complete_multipart("big", upload_id, parts)  # space again: the same parts complete
    assert meta.size == len(one) + len(two) and store.path_for("big").read_bytes() == one + two
    assert store.list_multipart_uploads() == []


# --- upload_file into a local store: one kernel copy -------------------------------------------


def test_upload_file_copies_in_the_kernel_with_progress_and_the_crc_of_the_copy(store, tmp_path):
    data = os.urandom(3 * diskio.WRITEBACK_EVERY + 999)
    (tmp_path / "rec.mcap").write_bytes(data)
    seen: list[int] = []
    result = upload_file(store, tmp_path / "rec.mcap", "dev/rec.mcap", on_progress=seen.append)
    assert (result.size, result.crc32c, result.parts_sent) == (len(data), crc32c(data), 1)
    assert sum(seen) == len(data) and len(seen) == 4  # one report per writeback window
    assert store.path_for("dev/rec.mcap").read_bytes() == data and _temp_files(store) == []


def test_without_a_kernel_copy_the_buffered_copy_gives_the_same_bytes(store, tmp_path, monkeypatch):
    def cross_device(*args):
        raise OSError(errno.EXDEV, "Invalid cross-device link")

    monkeypatch.setattr(diskio, "_copy_file_range", cross_device)
    data = os.urandom(diskio.WRITEBACK_EVERY + 5)
    (tmp_path / "a.bin").write_bytes(data)
    assert upload_file(store, tmp_path / "a.bin", "a.bin").crc32c == crc32c(data)
    assert store.path_for("a.bin").read_bytes() == data


@pytest.mark.parametrize("change", ["grows", "shrinks"])
def test_a_file_changing_during_the_copy_is_refused_and_nothing_is_stored(store, tmp_path, change):
    path = tmp_path / "rec.mcap"
    path.write_bytes(os.urandom(2 * diskio.WRITEBACK_EVERY))

    def recorder_still_writing(count: int) -> None:
        if change == "grows":
            with open(path, "ab") as f:
                f.write(b"more")
        else:
            os.truncate(path, diskio.WRITEBACK_EVERY // 2)

    with pytest.raises(SourceChanged, match="rec.mcap"):
        upload_file(store, path, "rec.mcap", on_progress=recorder_still_writing)
    assert list(store.list()) == [] and _temp_files(store) == []


def test_a_full_disk_during_the_kernel_copy_keeps_the_old_object(store, tmp_path, monkeypatch):
    store.put("rec.mcap", b"old", size=3)

    def full(*args):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(diskio, "_copy_file_range", full)
    (tmp_path / "rec.mcap").write_bytes(os.urandom(1_000_000))
    with pytest.raises(StorageError, match="no space left on device while writing rec.mcap"):
        upload_file(store, tmp_path / "rec.mcap", "rec.mcap")
    assert store.path_for("rec.mcap").read_bytes() == b"old" and _temp_files(store) == []
