"""upload_file against real stores, with faults injected through a store wrapper."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from storage_core.checksums import crc32c
from storage_core.errors import AbortFailed, PartUploadFailed, SourceChanged, StorageError, StorageUnavailable
from storage_core.upload import CompletedPart, ResumeState, upload_file

MiB = 1024 * 1024


def write_random(path: Path, size: int) -> bytes:
    data = os.urandom(size)
    path.write_bytes(data)
    return data


class FailingStore:
    """Wraps a real store; the Nth upload_part (and optionally every abort) fails."""

    def __init__(self, inner, *, fail_part: int | None = None, error: Exception | None = None, fail_abort=False):
        self.inner, self.fail_part, self.fail_abort = inner, fail_part, fail_abort
        self.error = error or StorageError("injected failure")
        self.part_calls = 0
        self.sent: list[int] = []

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def upload_part(self, key, upload_id, part_number, data, *, crc32c):
        self.part_calls += 1
        if self.part_calls == self.fail_part:
            raise self.error
        self.sent.append(part_number)
        return self.inner.upload_part(key, upload_id, part_number, data, crc32c=crc32c)

    def abort_multipart(self, key, upload_id):
        if self.fail_abort:
            raise StorageError("abort refused (injected)")
        return self.inner.abort_multipart(key, upload_id)


def test_multipart_upload_round_trip(any_store, tmp_path):
    any_store.multipart_threshold = 5 * MiB
    data = write_random(tmp_path / "f.bin", 23 * MiB + 17)
    seen = []
    result = upload_file(any_store, tmp_path / "f.bin", "dev/f.bin", part_size=5 * MiB, on_progress=seen.append)
    assert result.size == len(data) and result.crc32c == crc32c(data)
    assert result.parts_sent == 5 and sum(seen) == len(data)
    assert any_store.get_range("dev/f.bin", 0, len(data)) == data
    assert any_store.list_multipart_uploads() == []


def test_small_file_is_one_put(any_store, tmp_path):
    data = write_random(tmp_path / "s.bin", 1000)
    result = upload_file(any_store, tmp_path / "s.bin", "s.bin")
    assert result.upload_id is None and result.crc32c == crc32c(data)
    assert any_store.get_range("s.bin", 0, 1000) == data


def test_nth_part_failure_aborts_and_leaves_no_upload(bucket, tmp_path):
    bucket.multipart_threshold = 5 * MiB
    write_random(tmp_path / "f.bin", 26 * MiB)
    store = FailingStore(bucket, fail_part=3)
    with pytest.raises(PartUploadFailed) as info:
        upload_file(store, tmp_path / "f.bin", "f.bin", part_size=5 * MiB, max_concurrency=2)
    assert info.value.part_number is not None and info.value.upload_id
    assert isinstance(info.value.__cause__, StorageError)
    assert bucket.list_multipart_uploads() == []
    assert list(bucket.list()) == []


def test_failed_abort_is_surfaced(bucket, tmp_path):
    bucket.multipart_threshold = 5 * MiB
    write_random(tmp_path / "f.bin", 12 * MiB)
    store = FailingStore(bucket, fail_part=2, fail_abort=True)
    with pytest.raises(AbortFailed) as info:
        upload_file(store, tmp_path / "f.bin", "f.bin", part_size=5 * MiB, max_concurrency=1)
    assert info.value.upload_id in str(info.value)
    [pending] = bucket.list_multipart_uploads()
    bucket.abort_multipart(pending.key, pending.upload_id)


def test_retryable_failure_can_be_kept_and_resumed(bucket, tmp_path):
    bucket.multipart_threshold = 5 * MiB
    data = write_random(tmp_path / "f.bin", 26 * MiB)
    recorded: dict[int, CompletedPart] = {}
    started = {}

    class Journal:
        def started(self, upload_id, part_size):
            started.update(upload_id=upload_id, part_size=part_size)

        def part_stored(self, part):
            recorded[part.number] = part

    store = FailingStore(bucket, fail_part=4, error=StorageUnavailable("server gone (injected)"))
    with pytest.raises(PartUploadFailed):
        upload_file(
            store, tmp_path / "f.bin", "f.bin", part_size=5 * MiB, max_concurrency=1,
            journal=Journal(), keep_resumable=True, part_attempts=1,
        )
    assert len(bucket.list_multipart_uploads()) == 1 and len(recorded) == 3

    again = FailingStore(bucket)
    result = upload_file(
        again, tmp_path / "f.bin", "f.bin", journal=Journal(),
        resume=ResumeState(started["upload_id"], started["part_size"], dict(recorded)),
    )
    assert sorted(again.sent) == [4, 5, 6] and result.parts_reused == 3
    assert result.crc32c == crc32c(data) and bucket.get_range("f.bin", 0, len(data)) == data
    assert bucket.list_multipart_uploads() == []


def test_source_changing_mid_upload_fails_and_stores_nothing(any_store, tmp_path):
    any_store.multipart_threshold = 5 * MiB
    path = tmp_path / "f.bin"
    write_random(path, 16 * MiB)

    class Growing:
        def __init__(self, inner):
            self.inner = inner

        def __getattr__(self, name):
            return getattr(self.inner, name)

        def upload_part(self, key, upload_id, part_number, data, *, crc32c):
            if part_number == 1:
                with open(path, "ab") as f:
                    f.write(b"more bytes from a recorder still writing")
            return self.inner.upload_part(key, upload_id, part_number, data, crc32c=crc32c)

    with pytest.raises(SourceChanged):
        upload_file(Growing(any_store), path, "f.bin", part_size=5 * MiB, max_concurrency=1)
    assert any_store.list_multipart_uploads() == [] and list(any_store.list()) == []
