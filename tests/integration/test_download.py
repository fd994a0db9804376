"""download() against every store (local folder, SeaweedFS), with faults injected on purpose.

Each fault test asserts what must hold afterwards: nothing at the final path, no `.part`
file left, the original error kept as __cause__ where one was translated.
"""

from __future__ import annotations

import errno
import fcntl
import os
import time
from pathlib import Path

import pytest

from storage_core.checksums import crc32c, crc32c_of_stream
from storage_core.download import DownloadSource, RetryPolicy, WritePlanError, download, expand_prefix, plan_writes
from storage_core import diskio
from storage_core.download import transfer
from storage_core.errors import (
    AccessDenied,
    IntegrityError,
    ObjectNotFound,
    PreconditionFailed,
    StorageError,
    StorageUnavailable,
)

MiB = 1024 * 1024
FAST_RETRY = RetryPolicy(attempts=4, base=0.01, cap=0.05)


class Wrapped:
    """A store that behaves like the one it wraps, except where a test overrides a method."""

    def __init__(self, inner) -> None:
        self.inner = inner
        self.uri = inner.uri
        self.ranges: list[tuple[int, int]] = []

    def head(self, key):
        return self.inner.head(key)

    def get_range(self, key, start, end, *, if_match=None):
        self.ranges.append((start, end))
        return self.inner.get_range(key, start, end, if_match=if_match)


def put(store, key: str, data: bytes) -> int:
    store.put(key, data, size=len(data), crc32c=crc32c(data))
    return crc32c(data)


def source(store, key: str, data: bytes, *, rel: str = "seg.bin", crc: int | None = -1, **names) -> DownloadSource:
    return DownloadSource(
        store=store, key=key, size=len(data), crc32c=crc32c(data) if crc == -1 else crc,
        device_id=names.get("device", "dev1"), recording=names.get("recording", "rec1"),
        modality=names.get("modality", "video"), segmented=names.get("segmented", True),
        relative_path=rel, ext=names.get("ext", ""),
    )


def leftovers(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*.part")) if root.exists() else []


def files(root: Path) -> list[str]:
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())


# --- the happy paths ------------------------------------------------------------------------


def test_multi_range_download_is_verified_and_complete(any_store, out):
    data = os.urandom(5 * MiB + 12_345)
    put(any_store, "dev1/rec1/video/0001.mp4", data)
    store = Wrapped(any_store)
    seen: list[int] = []
    paths = download(source(store, "dev1/rec1/video/0001.mp4", data, rel="0001.mp4"), out,
                     chunk_size=1 * MiB, max_workers=3, on_progress=seen.append)
    assert paths == [out / "dev1/rec1/video/0001.mp4"]
    assert paths[0].read_bytes() == data
    assert sorted(store.ranges) == [(i * MiB, min((i + 1) * MiB, len(data))) for i in range(6)]
    assert sum(seen) == len(data)
    assert leftovers(out) == []


def test_a_recording_with_segments_and_processed_artifacts(any_store, out):
    blobs = {f"dev1/rec1/video/{i:04d}.mp4": os.urandom(1000 + i) for i in range(5)}
    blobs["dev1/rec1/processed/imu.parquet"] = os.urandom(3 * MiB)
    blobs["dev1/rec1/processed/empty.json"] = b""
    for key, data in blobs.items():
        put(any_store, key, data)
    sources = expand_prefix(any_store, "dev1/rec1/video", device_id="dev1", recording="rec1", modality="video")
    sources += [
        source(any_store, "dev1/rec1/processed/imu.parquet", blobs["dev1/rec1/processed/imu.parquet"],
               segmented=False, modality="imu", ext="parquet"),
        source(any_store, "dev1/rec1/processed/empty.json", b"", segmented=False, modality="meta", ext="json"),
    ]
    paths = download(list(reversed(sources)), out / "o", layout="flat", chunk_size=1 * MiB)
    assert [p.relative_to(out / "o").as_posix() for p in paths] == [
        "dev1__rec1__meta.json", "dev1__rec1__imu.parquet",
        *(f"dev1__rec1__video/{i:04d}.mp4" for i in range(5)),
    ]
    assert paths[0].read_bytes() == b""
    assert paths[1].read_bytes() == blobs["dev1/rec1/processed/imu.parquet"]
    assert paths[-1].read_bytes() == blobs["dev1/rec1/video/0004.mp4"]
    assert leftovers(out) == []


def test_expand_prefix_refuses_an_empty_modality(any_store):
    with pytest.raises(ObjectNotFound):
        expand_prefix(any_store, "nothing/here", device_id="d", recording="r", modality="m")


def test_single_source_and_empty_list(local_store, out):
    put(local_store, "k", b"abc")
    assert download([], out) == []
    assert download([source(local_store, "k", b"abc")], out) == [out / "dev1/rec1/video/seg.bin"]


def test_without_a_recorded_crc_the_size_is_still_checked(local_store, out):
    put(local_store, "k", b"abc")
    (path,) = download(source(local_store, "k", b"abc", crc=None), out)
    assert path.read_bytes() == b"abc"
    wrong_size = DownloadSource(store=local_store, key="k", size=4, device_id="d", recording="r",
                                modality="m", segmented=True, relative_path="x")
    with pytest.raises(IntegrityError, match="records 4 bytes but the store holds 3"):
        download(wrong_size, out)
    assert not (out / "d").exists() or files(out / "d") == []


def test_stray_part_file_from_a_killed_run_is_overwritten(any_store, out):
    data = os.urandom(2 * MiB)
    put(any_store, "k", data)
    dest = out / "dev1/rec1/video/seg.bin"
    dest.parent.mkdir(parents=True)
    Path(str(dest) + ".part").write_bytes(b"garbage" * MiB)  # longer than the object
    download(source(any_store, "k", data), out, chunk_size=MiB)
    assert dest.read_bytes() == data
    assert leftovers(out) == []


def test_a_part_file_that_is_another_name_of_the_final_file_is_never_truncated(local_store, out):
    # what a run killed between link and unlink leaves behind; the next run must not write through it
    data = os.urandom(2 * MiB)
    put(local_store, "k", data)
    dest = out / "dev1/rec1/video/seg.bin"
    dest.parent.mkdir(parents=True)
    dest.write_bytes(b"the good old copy")
    os.link(dest, str(dest) + ".part")

    class Dies(Wrapped):
        def get_range(self, key, start, end, *, if_match=None):
            raise AccessDenied("gone (injected)", key=key)

    with pytest.raises(AccessDenied):
        download(source(Dies(local_store), "k", data), out, overwrite=True)
    assert dest.read_bytes() == b"the good old copy" and leftovers(out) == []


def test_a_symlink_planted_at_the_part_path_is_not_followed(local_store, out, tmp_path):
    put(local_store, "k", b"abc")
    victim = tmp_path / "victim"
    victim.write_bytes(b"precious")
    dest = out / "dev1/rec1/video/seg.bin"
    dest.parent.mkdir(parents=True)
    os.symlink(victim, str(dest) + ".part")
    download(source(local_store, "k", b"abc"), out)
    assert dest.read_bytes() == b"abc" and victim.read_bytes() == b"precious"


def test_overwrite_replaces_an_existing_file(any_store, out):
    data = os.urandom(100_000)
    put(any_store, "k", data)
    dest = out / "dev1/rec1/video/seg.bin"
    dest.parent.mkdir(parents=True)
    dest.write_bytes(b"old")
    with pytest.raises(WritePlanError):
        download(source(any_store, "k", data), out)
    assert dest.read_bytes() == b"old"
    download(source(any_store, "k", data), out, overwrite=True)
    assert dest.read_bytes() == data


# --- checksums and changing objects ---------------------------------------------------------


def test_bytes_changed_behind_the_catalogs_back_raise_integrity_error(any_store, out):
    original = os.urandom(3 * MiB)
    put(any_store, "dev1/rec1/video/0001.mp4", original)
    catalog_row = source(any_store, "dev1/rec1/video/0001.mp4", original)
    tampered = bytearray(original)
    tampered[MiB + 7] ^= 0xFF
    put(any_store, "dev1/rec1/video/0001.mp4", bytes(tampered))  # same size, different bytes
    dest = out / "dev1/rec1/video/seg.bin"
    with pytest.raises(IntegrityError) as info:
        download(catalog_row, out, chunk_size=MiB)
    assert "dev1/rec1/video/0001.mp4" in str(info.value) and info.value.key == "dev1/rec1/video/0001.mp4"
    assert not dest.exists() and leftovers(out) == []
    # with overwrite, the previous file stays until a verified one replaces it
    dest.write_bytes(b"previous good copy")
    with pytest.raises(IntegrityError):
        download(catalog_row, out, chunk_size=MiB, overwrite=True)
    assert dest.read_bytes() == b"previous good copy" and leftovers(out) == []


def test_object_replaced_mid_download_fails_cleanly_then_a_retry_succeeds(any_store, out):
    old, new = os.urandom(4 * MiB), os.urandom(4 * MiB)
    put(any_store, "k", old)

    class ReplacedAfterFirstRange(Wrapped):
        def get_range(self, key, start, end, *, if_match=None):
            data = super().get_range(key, start, end, if_match=if_match)
            if len(self.ranges) == 1:
                put(self.inner, key, new)
            return data

    store = ReplacedAfterFirstRange(any_store)
    with pytest.raises(PreconditionFailed) as info:
        download(source(store, "k", old, crc=None), out, chunk_size=MiB, max_workers=1, retry=FAST_RETRY)
    assert info.value.retryable  # the caller's retry plans from a fresh HEAD
    assert not (out / "dev1/rec1/video/seg.bin").exists() and leftovers(out) == []
    # the catalog (or the store's own checksum) now describes the new object
    (path,) = download(source(store, "k", new), out, chunk_size=MiB, retry=FAST_RETRY)
    assert path.read_bytes() == new


def test_transient_errors_are_retried_per_range(any_store, out):
    data = os.urandom(3 * MiB)
    put(any_store, "k", data)

    class Flaky(Wrapped):
        failures = 0

        def get_range(self, key, start, end, *, if_match=None):
            if start == MiB and self.failures < 3:
                self.failures += 1
                raise StorageUnavailable("connection reset (injected)", key=key)
            return super().get_range(key, start, end, if_match=if_match)

    store = Flaky(any_store)
    (path,) = download(source(store, "k", data), out, chunk_size=MiB, retry=FAST_RETRY)
    assert path.read_bytes() == data and store.failures == 3


def test_retries_give_up_and_non_retryable_errors_are_not_retried(local_store, out):
    data = os.urandom(2 * MiB)
    put(local_store, "k", data)

    class Broken(Wrapped):
        def __init__(self, inner, error):
            super().__init__(inner)
            self.error, self.calls = error, 0

        def get_range(self, key, start, end, *, if_match=None):
            self.calls += 1
            raise self.error

    always_down = Broken(local_store, StorageUnavailable("down", key="k"))
    with pytest.raises(StorageUnavailable):
        download(source(always_down, "k", data), out, chunk_size=4 * MiB, retry=FAST_RETRY)
    assert always_down.calls == FAST_RETRY.attempts
    denied = Broken(local_store, AccessDenied("no", key="k"))
    with pytest.raises(AccessDenied):
        download(source(denied, "k", data), out, chunk_size=4 * MiB, retry=FAST_RETRY)
    assert denied.calls == 1
    assert files(out) == []


def test_a_short_answer_is_caught_by_our_own_length_check(local_store, out):
    data = os.urandom(2 * MiB)
    put(local_store, "k", data)

    class Short(Wrapped):
        def get_range(self, key, start, end, *, if_match=None):
            return super().get_range(key, start, end, if_match=if_match)[:-1]

    with pytest.raises(StorageUnavailable, match="got 1048575 bytes"):
        download(source(Short(local_store), "k", data), out, chunk_size=MiB, retry=FAST_RETRY)
    assert files(out) == []


def test_one_failing_file_stops_the_call_and_leaves_no_part_files(local_store, out):
    good = {f"seg{i}": os.urandom(200_000) for i in range(6)}
    for key, data in good.items():
        put(local_store, key, data)
    sources = [source(local_store, key, data, rel=key) for key, data in good.items()]
    bad = bytearray(good["seg3"])
    bad[0] ^= 1
    put(local_store, "seg3", bytes(bad))
    with pytest.raises(IntegrityError, match="seg3"):
        download(sources, out, max_files=2)
    written = files(out)
    assert "dev1/rec1/video/seg3" not in written and not any(p.endswith(".part") for p in written)
    for name in written:  # whatever finished is whole
        assert (out / name).read_bytes() == good[name.rsplit("/", 1)[1]]


def test_many_files_in_one_folder_cost_one_folder_fsync_each_folder(any_store, out, monkeypatch):
    """The renames are made durable once per folder at the end of the call, not once per
    file; a call that fails still syncs the folders of the files it placed."""
    synced: list[Path] = []
    real = diskio.fsync_dir
    monkeypatch.setattr("storage_core.download.api.fsync_dir", lambda folder: synced.append(folder) or real(folder))
    monkeypatch.setattr(transfer, "fsync_dir", lambda folder: pytest.fail(f"a per-file fsync of {folder}"))
    sources = []
    for i in range(20):
        body = os.urandom(5_000 + i)
        put(any_store, f"seg{i}", body)
        sources.append(source(any_store, f"seg{i}", body, rel=f"{'ab'[i % 2]}/seg{i}"))
    download(sources, out, max_files=4)
    assert sorted(synced) == [out / "dev1/rec1/video/a", out / "dev1/rec1/video/b"]
    assert len(files(out)) == 20

    synced.clear()
    put(any_store, "seg3", b"not what the catalog recorded")
    with pytest.raises(IntegrityError, match="seg3"):
        download(sources, out / "again", max_files=1)
    placed = {(out / "again" / name).parent for name in files(out / "again")}
    assert placed and placed <= set(synced)


def test_a_failing_progress_callback_stops_the_download_cleanly(local_store, out):
    data = os.urandom(3 * MiB)
    put(local_store, "k", data)

    def broken(nbytes: int) -> None:
        raise RuntimeError("progress bar crashed")

    with pytest.raises(RuntimeError, match="progress bar crashed"):
        download(source(local_store, "k", data), out, chunk_size=MiB, on_progress=broken)
    assert files(out) == []


@pytest.mark.parametrize("kind", ["ranges into a .part", "one GET into an unnamed file"])
def test_a_file_that_appears_during_the_download_is_not_clobbered(local_store, bucket, out, kind):
    store, data = (local_store, os.urandom(2 * MiB)) if kind.startswith("ranges") else (bucket, os.urandom(10_000))
    put(store, "k", data)
    dest = out / "dev1/rec1/video/seg.bin"

    class Racing(Wrapped):
        def get_range(self, key, start, end, *, if_match=None):
            dest.write_bytes(b"someone else's file")
            return super().get_range(key, start, end, if_match=if_match)

    with pytest.raises(WritePlanError, match="appeared during the download"):
        download(source(Racing(store), "k", data), out)
    assert dest.read_bytes() == b"someone else's file" and leftovers(out) == []


# --- a small S3 object: one GET, written to a file without a name, then linked -------------


def _small_sources(bucket, count: int) -> tuple[list[DownloadSource], dict[str, bytes]]:
    bodies = {f"seg{i}": os.urandom(3_000 + i) for i in range(count)}
    for key, body in bodies.items():
        put(bucket, key, body)
    return [source(bucket, key, body, rel=key) for key, body in bodies.items()], bodies


def _assert_whole(out: Path, bodies: dict[str, bytes]) -> None:
    placed = {p.name: p.read_bytes() for p in (out / "dev1/rec1/video").iterdir()}
    assert placed == bodies


def test_small_objects_are_written_unnamed_and_never_as_part_files(bucket, out, monkeypatch):
    """A small object the catalog describes is written to an O_TMPFILE file and linked to
    its name once complete and fsynced: no `.part` name is ever made."""
    named: list[str] = []
    monkeypatch.setattr(transfer, "_create_part", lambda part, access: named.append(part) or pytest.fail(part))
    sources, bodies = _small_sources(bucket, 8)
    download(sources, out, max_files=4)
    _assert_whole(out, bodies)
    assert named == [] and leftovers(out) == []


@pytest.mark.parametrize("missing", ["O_TMPFILE", "linking"])
def test_where_unnamed_files_cannot_be_made_a_part_file_is_written_instead(bucket, out, monkeypatch, missing):
    def unsupported(*args, **kwargs):
        raise OSError(errno.EOPNOTSUPP, "not supported (injected)")

    if missing == "O_TMPFILE":
        monkeypatch.setattr(diskio, "_open_unnamed", unsupported)
    else:  # a file system that makes the file but cannot link it
        monkeypatch.setattr(diskio, "_link", lambda *args, **kwargs: unsupported())
    sources, bodies = _small_sources(bucket, 6)
    download(sources, out, max_files=3)
    _assert_whole(out, bodies)
    assert leftovers(out) == []


def test_a_failing_progress_callback_leaves_no_part_file_where_unnamed_files_cannot_be_made(bucket, out, monkeypatch):
    monkeypatch.setattr(diskio, "_open_unnamed", lambda folder, flags=0: (_ for _ in ()).throw(
        OSError(errno.EOPNOTSUPP, "not supported (injected)")))
    sources, _ = _small_sources(bucket, 3)

    def broken(nbytes: int) -> None:
        raise RuntimeError("progress bar crashed")

    with pytest.raises(RuntimeError, match="progress bar crashed"):
        download(sources, out, on_progress=broken)
    assert files(out) == []


def test_overwrite_of_small_objects_replaces_and_leaves_no_part_file(bucket, out):
    sources, bodies = _small_sources(bucket, 4)
    folder = out / "dev1/rec1/video"
    folder.mkdir(parents=True)
    for name in bodies:
        (folder / name).write_bytes(b"old copy")
    (folder / "seg1.part").write_bytes(b"left by a killed run")
    download(sources, out, overwrite=True)
    _assert_whole(out, bodies)
    assert leftovers(out) == []


def test_no_space_for_a_small_object_is_a_clear_error_with_nothing_left(bucket, tiny_tmpfs):
    data = os.urandom(2 * MiB)  # one GET (at most one range); the tmpfs holds 1 MiB
    put(bucket, "k", data)
    with pytest.raises(StorageError, match="no space left on device"):
        download(source(bucket, "k", data), tiny_tmpfs)
    assert files(tiny_tmpfs) == []


# --- a LocalStore source: copied through a reused buffer, not ranged GETs ------------------


def test_an_s3_object_replaced_mid_download_fails_through_the_buffered_range_path(bucket, out):
    old, new = os.urandom(4 * MiB), os.urandom(4 * MiB)
    put(bucket, "k", old)

    def replace_once(nbytes: int, done=[]) -> None:
        if not done:
            done.append(put(bucket, "k", new))  # after the first range: the next GET is pinned to the old ETag

    with pytest.raises(PreconditionFailed) as info:
        download(source(bucket, "k", old), out, chunk_size=MiB, max_workers=1, on_progress=replace_once,
                 retry=FAST_RETRY)
    assert info.value.retryable and files(out) == []
    (path,) = download(source(bucket, "k", new), out, chunk_size=MiB)  # the caller's retry, from a fresh HEAD
    assert path.read_bytes() == new


def test_a_local_object_replaced_during_the_download_is_copied_as_it_was_opened(local_store, out):
    old, new = os.urandom(4 * MiB), os.urandom(4 * MiB)
    put(local_store, "k", old)

    def replace_once(nbytes: int, done=[]) -> None:
        if not done:
            done.append(put(local_store, "k", new))  # atomic replace: a new inode under the key

    (path,) = download(source(local_store, "k", old), out, chunk_size=MiB, max_workers=1, on_progress=replace_once)
    assert path.read_bytes() == old and local_store.path_for("k").read_bytes() == new


def test_a_local_object_truncated_during_the_download_fails_with_no_partial_file(local_store, out):
    data = os.urandom(4 * MiB)
    put(local_store, "k", data)

    def truncate_once(nbytes: int, done=[]) -> None:
        if not done:
            done.append(os.truncate(local_store.path_for("k"), MiB + 5))

    with pytest.raises(IntegrityError, match="shrank during the download") as info:
        download(source(local_store, "k", data), out, chunk_size=MiB, max_workers=1, on_progress=truncate_once)
    assert info.value.key == "k" and files(out) == []


def test_a_local_read_error_names_the_source_not_the_destination(local_store, out, monkeypatch):
    data = os.urandom(2 * MiB)
    put(local_store, "k", data)

    def failing_copy(*args):
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(diskio, "_copy_file_range", failing_copy)
    with pytest.raises(StorageError, match=r"cannot read file://.*/k: Input/output error") as info:
        download(source(local_store, "k", data), out, chunk_size=MiB)
    assert isinstance(info.value.__cause__, OSError) and files(out) == []


# --- the destination disk -------------------------------------------------------------------


def test_from_s3_whole_ranges_are_written_around_the_page_cache(bucket, out, monkeypatch):
    data = os.urandom(3 * MiB + 17)
    put(bucket, "k", data)
    writes: list[tuple[int, bool]] = []

    def recording(fd, view, offset):
        writes.append((offset, bool(fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_DIRECT)))
        return os.pwrite(fd, view, offset)

    monkeypatch.setattr(diskio, "_pwrite", recording)
    (path,) = download(source(bucket, "k", data), out, chunk_size=MiB)
    assert path.read_bytes() == data
    # three whole MiB ranges from the workers' aligned buffers go direct; the 17-byte tail cannot
    assert sorted(writes) == [(0, True), (MiB, True), (2 * MiB, True), (3 * MiB, False)]


def test_small_objects_are_written_around_the_page_cache_from_aligned_buffers(bucket, out, monkeypatch):
    """A small object fetched whole lands in an aligned buffer and its whole blocks are
    written O_DIRECT; the last partial block goes through the page cache."""
    writes: list[tuple[int, int, bool]] = []

    def recording(fd, view, offset):
        writes.append((offset, len(view), bool(fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_DIRECT)))
        return os.pwrite(fd, view, offset)

    monkeypatch.setattr(diskio, "_pwrite", recording)
    bodies = {"a": os.urandom(3 * 4096 + 100), "b": os.urandom(2 * MiB)}  # b: bigger than a file thread's buffer
    for key, body in bodies.items():
        put(bucket, key, body)
    download([source(bucket, key, body, rel=key) for key, body in bodies.items()], out, max_files=1)
    _assert_whole(out, bodies)
    assert sorted(writes) == [(0, 3 * 4096, True), (0, 2 * MiB, True), (3 * 4096, 100, False)]


def test_no_space_left_while_writing_is_a_clear_error_with_no_partial_file(local_store, out, monkeypatch):
    data = os.urandom(4 * MiB)
    put(local_store, "k", data)
    written = []

    def until_full(write):
        def first_write_only(*args):
            if written:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            written.append(args)
            return write(*args)

        return first_write_only

    monkeypatch.setattr(diskio, "_pwrite", until_full(os.pwrite))  # a copy through a buffer
    monkeypatch.setattr(diskio, "_copy_file_range", until_full(os.copy_file_range))  # a kernel copy
    with pytest.raises(StorageError, match="no space left on device") as info:
        download(source(local_store, "k", data), out, chunk_size=MiB, max_workers=1)
    assert isinstance(info.value.__cause__, OSError) and info.value.__cause__.errno == errno.ENOSPC
    assert str(out / "dev1/rec1/video/seg.bin.part") in str(info.value)
    assert files(out) == []


def test_no_space_on_a_tiny_tmpfs(any_store, tiny_tmpfs):
    data = os.urandom(2 * MiB)  # the tmpfs holds 1 MiB
    put(any_store, "k", data)
    with pytest.raises(StorageError, match="no space left on device"):
        download(source(any_store, "k", data), tiny_tmpfs, chunk_size=256 * 1024)
    assert files(tiny_tmpfs) == []


def test_no_space_on_a_tiny_tmpfs_without_preallocation(any_store, tiny_tmpfs, monkeypatch):
    def unsupported(fd, offset, length):
        raise OSError(errno.EOPNOTSUPP, "not supported")

    monkeypatch.setattr(diskio, "_allocate", unsupported)  # ENOSPC must then come from a write
    data = os.urandom(2 * MiB)
    put(any_store, "k", data)
    with pytest.raises(StorageError, match="no space left on device"):
        download(source(any_store, "k", data), tiny_tmpfs, chunk_size=256 * 1024)
    assert files(tiny_tmpfs) == []


def test_unwritable_destination_is_refused_before_any_write(local_store, out):
    put(local_store, "k", b"abc")
    locked = out / "locked"
    locked.mkdir(parents=True)
    # we run as root on the project machines, so mode bits would not stop us: make it immutable
    if os.system(f"chattr +i {locked} 2>/dev/null") != 0:
        os.chmod(locked, 0o500)
        if os.access(locked, os.W_OK):
            pytest.skip("cannot make a folder unwritable here (root without chattr)")
    try:
        with pytest.raises(WritePlanError, match="not writable") as info:
            download(source(local_store, "k", b"abc"), locked)
        assert [p.kind for p in info.value.problems] == ["not_writable"]
        assert str(locked) in str(info.value)
    finally:
        os.system(f"chattr -i {locked} 2>/dev/null")
        os.chmod(locked, 0o700)
    assert files(locked) == []


def test_permission_error_while_writing_is_access_denied_naming_the_path(local_store, out, monkeypatch):
    put(local_store, "k", b"abc")

    def denied(fd, offset, length):
        raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(diskio, "_allocate", denied)
    with pytest.raises(AccessDenied, match="cannot write .*seg.bin.part"):
        download(source(local_store, "k", b"abc"), out)
    assert files(out) == []


@pytest.fixture
def out(tmp_path: Path) -> Path:
    """Where downloads land (beside, never inside, the local store's folder)."""
    return tmp_path / "out"


@pytest.fixture
def tiny_tmpfs(tmp_path):
    mount_point = tmp_path / "tiny"
    mount_point.mkdir()
    if os.system(f"mount -t tmpfs -o size=1m ferry-test {mount_point} 2>/dev/null") != 0:
        pytest.skip("cannot mount a tmpfs here (needs root / CAP_SYS_ADMIN)")
    try:
        yield mount_point
    finally:
        os.system(f"umount -l {mount_point}")


def test_planning_twice_reads_a_kept_file_once_but_sees_a_rewrite(local_store, out, monkeypatch):
    from storage_core.download import plan as plan_module

    data = os.urandom(50_000)
    put(local_store, "a", data)
    kept = out / "dev1/rec1/video/a.bin"
    kept.parent.mkdir(parents=True)
    kept.write_bytes(data)
    monkeypatch.setattr(plan_module, "SETTLED_NS", 0)  # the file was written just now
    reads: list[str] = []

    def counting(stream, **options):
        reads.append(stream.name)
        return crc32c_of_stream(stream, **options)

    monkeypatch.setattr(plan_module, "crc32c_of_stream", counting)
    sources = [source(local_store, "a", data, rel="a.bin")]
    for _ in range(3):  # the flow's plan, then each batch's
        (write,) = plan_writes(sources, out, resume=True)
        assert write.present
    assert len(reads) == 1
    changed = bytearray(data)
    changed[0] ^= 1
    time.sleep(0.05)  # past the file-time tick (SETTLED_NS covers this outside the test)
    kept.write_bytes(changed)  # same size, new bytes: its ctime moves on
    with pytest.raises(WritePlanError, match="differs from the stored object"):
        plan_writes(sources, out, resume=True)
    assert len(reads) == 2


def test_resume_keeps_identical_files_and_fetches_only_the_missing(any_store, out):
    first, second = os.urandom(70_000), os.urandom(90_000)
    put(any_store, "a", first)
    put(any_store, "b", second)
    sources = [source(any_store, "a", first, rel="a.bin"), source(any_store, "b", second, rel="b.bin")]
    done = out / "dev1/rec1/video/a.bin"
    done.parent.mkdir(parents=True)
    done.write_bytes(first)  # what a killed run left behind: one whole, verified file
    before = done.stat().st_mtime_ns
    with pytest.raises(WritePlanError, match="resume=True"):
        download(sources, out)
    fetched: list[int] = []
    paths = download(sources, out, resume=True, on_progress=fetched.append)
    assert paths == [done, out / "dev1/rec1/video/b.bin"]
    assert sum(fetched) == len(second)  # only the missing file moved
    assert done.stat().st_mtime_ns == before and paths[1].read_bytes() == second


def test_resume_still_refuses_a_file_that_differs(local_store, out):
    data = os.urandom(50_000)
    put(local_store, "k", data)
    dest = out / "dev1/rec1/video/seg.bin"
    dest.parent.mkdir(parents=True)
    dest.write_bytes(data[:-1] + bytes([data[-1] ^ 1]))
    with pytest.raises(WritePlanError, match="differs from the stored object"):
        download(source(local_store, "k", data), out, resume=True)
    assert dest.read_bytes() != data
