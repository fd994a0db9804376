"""diskio.RangeWriter on real disk: whole blocks of aligned memory go around the page cache
(O_DIRECT), everything else through it, and the file holds the right bytes either way."""

from __future__ import annotations

import errno
import fcntl
import os

import pytest

from storage_core import diskio
from storage_core.diskio import DIRECT_ALIGN, RangeWriter, aligned_buffer

MiB = 1024 * 1024


@pytest.fixture
def writes(monkeypatch):
    """Every pwrite diskio makes, as (offset, length, direct?)."""
    seen: list[tuple[int, int, bool]] = []

    def recording(fd, data, offset):
        seen.append((offset, len(data), bool(fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_DIRECT)))
        return os.pwrite(fd, data, offset)

    monkeypatch.setattr(diskio, "_pwrite", recording)
    return seen


def _filled(size: int) -> memoryview:
    buffer = aligned_buffer(size)
    buffer[:] = os.urandom(size)
    return buffer


def _write_three_ranges(path) -> bytes:
    """An aligned MiB, a MiB of bytes (read-only memory), and an aligned tail of 100 bytes."""
    first, second, tail = _filled(MiB), os.urandom(MiB), _filled(100)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
    writer = RangeWriter(path, fd)
    try:
        writer.write(first, 0)
        writer.write(memoryview(second), MiB)
        writer.write(tail, 2 * MiB)
        os.fsync(fd)
    finally:
        writer.close()
        os.close(fd)
    return bytes(first) + second + bytes(tail)


def test_whole_aligned_blocks_go_around_the_page_cache_the_rest_through_it(tmp_path, writes):
    path = tmp_path / "f"
    expected = _write_three_ranges(path)
    assert path.read_bytes() == expected
    assert writes == [(0, MiB, True), (MiB, MiB, False), (2 * MiB, 100, False)]


def test_an_unaligned_offset_or_slice_is_written_through_the_page_cache(tmp_path, writes):
    path = tmp_path / "f"
    buffer = _filled(2 * DIRECT_ALIGN)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    writer = RangeWriter(path, fd)
    writer.write(buffer[:DIRECT_ALIGN], 512)  # offset not a whole block
    writer.write(buffer[1:DIRECT_ALIGN + 1], 2 * DIRECT_ALIGN)  # memory not aligned
    writer.close()
    os.close(fd)
    assert [direct for _, _, direct in writes] == [False, False]
    data = path.read_bytes()
    assert data[512:512 + DIRECT_ALIGN] == buffer[:DIRECT_ALIGN]
    assert data[2 * DIRECT_ALIGN:] == buffer[1:DIRECT_ALIGN + 1]


def test_a_file_system_without_o_direct_gets_every_write_through_the_page_cache(tmp_path, writes, monkeypatch):
    def refused(path):
        raise OSError(errno.EINVAL, "O_DIRECT not supported (injected)")

    monkeypatch.setattr(diskio, "_open_direct", refused)
    path = tmp_path / "f"
    expected = _write_three_ranges(path)
    assert path.read_bytes() == expected
    assert not any(direct for _, _, direct in writes)


def _refusing_direct_writes(calls: list[bool]):
    """A pwrite that refuses every direct write with EINVAL (accepted at open, refused at
    write, as some FUSE and network file systems do), noting each call's directness."""

    def refuses_direct(fd, data, offset):
        direct = bool(fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_DIRECT)
        calls.append(direct)
        if direct:
            raise OSError(errno.EINVAL, "direct write refused (injected)")
        return os.pwrite(fd, data, offset)

    return refuses_direct


def test_a_direct_write_refused_with_einval_falls_back_for_good(tmp_path, monkeypatch):
    calls: list[bool] = []
    monkeypatch.setattr(diskio, "_pwrite", _refusing_direct_writes(calls))
    path = tmp_path / "f"
    expected = _write_three_ranges(path)
    assert path.read_bytes() == expected
    assert calls == [True, False, False, False]  # one refusal, then never tried again


def test_no_space_on_a_direct_write_is_raised_not_hidden(tmp_path, monkeypatch):
    def full(fd, data, offset):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(diskio, "_pwrite", full)
    path = tmp_path / "f"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    writer = RangeWriter(path, fd)
    try:
        with pytest.raises(OSError) as info:
            writer.write(_filled(MiB), 0)
        assert info.value.errno == errno.ENOSPC
    finally:
        writer.close()
        os.close(fd)


# --- write_file: a new unnamed file written whole (a small download) ------------------------


def _unnamed_then_named(folder, data, *, direct=True):
    """`data` written by write_file to an unnamed file of `folder`, fsynced and linked as `f`."""
    fd = diskio.open_unnamed(folder, direct=direct)
    assert fd is not None
    try:
        diskio.write_file(fd, data)
        os.fsync(fd)
        assert diskio.name_unnamed(fd, folder / "f")
    finally:
        os.close(fd)
    return (folder / "f").read_bytes()


@pytest.mark.parametrize("size", [0, 100, DIRECT_ALIGN, 3 * DIRECT_ALIGN + 17, MiB])
def test_write_file_sends_whole_blocks_direct_and_the_tail_through_the_page_cache(tmp_path, writes, size):
    data = _filled(size + 1)[:size]  # aligned memory, as _whole_buffer gives
    assert _unnamed_then_named(tmp_path, data) == bytes(data)
    whole = size - size % DIRECT_ALIGN
    expected = ([(0, whole, True)] if whole else []) + ([(whole, size - whole, False)] if size > whole else [])
    assert writes == expected


def test_write_file_from_unaligned_memory_or_without_direct_goes_through_the_page_cache(tmp_path, writes):
    data = os.urandom(2 * DIRECT_ALIGN)
    assert _unnamed_then_named(tmp_path, memoryview(data)) == data  # bytes: not page-aligned
    (tmp_path / "f").unlink()
    aligned = _filled(DIRECT_ALIGN)
    assert _unnamed_then_named(tmp_path, aligned, direct=False) == bytes(aligned)
    assert [direct for _, _, direct in writes] == [False, False]


def test_write_file_falls_back_when_a_direct_write_is_refused(tmp_path, monkeypatch):
    calls: list[bool] = []
    monkeypatch.setattr(diskio, "_pwrite", _refusing_direct_writes(calls))
    data = _filled(2 * DIRECT_ALIGN + 5)
    assert _unnamed_then_named(tmp_path, data) == bytes(data)
    assert calls == [True, False]


def test_open_unnamed_without_o_direct_support_opens_a_plain_unnamed_file(tmp_path, monkeypatch):
    real = diskio._open_unnamed

    def no_direct(folder, flags=0):
        if flags & os.O_DIRECT:
            raise OSError(errno.EINVAL, "O_DIRECT not supported (injected)")
        return real(folder, flags)

    monkeypatch.setattr(diskio, "_open_unnamed", no_direct)
    data = _filled(DIRECT_ALIGN)
    assert _unnamed_then_named(tmp_path, data) == bytes(data)
