"""SparseBuffer against a byte-per-byte model, exhaustively on small files."""

from __future__ import annotations

import io
import itertools
import random

import pytest

from storage_core.ranges import SparseBuffer

SIZE = 10


class Model:
    """One slot per byte: None (not cached) or the byte value."""

    def __init__(self, size: int) -> None:
        self.slots: list[int | None] = [None] * size

    def add(self, offset: int, data: bytes) -> None:
        for i, value in enumerate(data):
            self.slots[offset + i] = value

    def regions(self) -> list[tuple[int, int]]:
        runs, start = [], None
        for i, value in enumerate([*self.slots, None]):
            if value is not None and start is None:
                start = i
            elif value is None and start is not None:
                runs.append((start, i))
                start = None
        return runs

    def read(self, position: int, size: int) -> bytes:
        out = bytearray()
        while position < len(self.slots) and self.slots[position] is not None and (size < 0 or len(out) < size):
            out.append(self.slots[position])  # type: ignore[arg-type]
            position += 1
        return bytes(out)

    def find(self, start: int, size: int) -> bytes | None:
        if start + size > len(self.slots):
            return None
        values = self.slots[start : start + size]
        return None if any(v is None for v in values) else bytes(values)  # type: ignore[arg-type]


def check(buffer: SparseBuffer, model: Model) -> None:
    total = len(model.slots)
    assert buffer.regions == model.regions()
    assert buffer.cached_bytes == sum(e - s for s, e in model.regions())
    for position in range(total + 2):
        for size in (-1, 0, 1, 3, total):
            buffer.seek(position)
            assert buffer.read(size) == model.read(position, size), (position, size)
        for size in range(0, total - position + 2) if position <= total else ():
            assert buffer.find_region(position, size) == model.find(position, size), (position, size)


ALL_RANGES = [(s, e) for s in range(SIZE) for e in range(s + 1, SIZE + 1)]


def payload(tag: int, start: int, end: int) -> bytes:
    return bytes((tag * 16 + i) % 256 for i in range(start, end))


def test_every_pair_of_regions_merges_like_the_model() -> None:
    for (s1, e1), (s2, e2) in itertools.product(ALL_RANGES, repeat=2):
        buffer, model = SparseBuffer(SIZE), Model(SIZE)
        for tag, (s, e) in enumerate([(s1, e1), (s2, e2)], start=1):
            buffer.add_region(s, payload(tag, s, e))
            model.add(s, payload(tag, s, e))
        assert buffer.regions == model.regions(), ((s1, e1), (s2, e2))
        # new bytes win where the two overlap
        assert buffer.find_region(s2, e2 - s2) == payload(2, s2, e2)


def test_random_sequences_match_the_model_on_every_read() -> None:
    rng = random.Random(7)
    for _ in range(150):
        buffer, model = SparseBuffer(SIZE), Model(SIZE)
        for tag in range(rng.randint(1, 5)):
            s, e = rng.choice(ALL_RANGES)
            buffer.add_region(s, payload(tag, s, e))
            model.add(s, payload(tag, s, e))
        check(buffer, model)


def test_touching_regions_merge_and_gaps_stay() -> None:
    buffer = SparseBuffer(100)
    buffer.add_region(0, b"a" * 10)
    buffer.add_region(20, b"c" * 10)
    assert buffer.regions == [(0, 10), (20, 30)]
    buffer.add_region(10, b"b" * 10)  # touches both sides
    assert buffer.regions == [(0, 30)]
    assert buffer.find_region(0, 30) == b"a" * 10 + b"b" * 10 + b"c" * 10


def test_read_is_partial_at_region_end_and_empty_in_gap_or_past_eof() -> None:
    buffer = SparseBuffer(50)
    buffer.add_region(10, b"0123456789")
    buffer.seek(15)
    assert buffer.read(100) == b"56789"
    assert buffer.tell() == 20
    assert buffer.read(1) == b""  # gap
    assert buffer.tell() == 20  # a gap does not move the position
    buffer.seek(0, io.SEEK_END)
    assert buffer.read() == b""
    buffer.seek(-40, io.SEEK_END)
    assert buffer.read(3) == b"012"
    buffer.seek(2, io.SEEK_CUR)
    assert buffer.read(2) == b"56"


def test_file_object_protocol_and_errors() -> None:
    buffer = SparseBuffer(8)
    assert buffer.readable() and buffer.seekable() and not buffer.writable()
    with pytest.raises(ValueError):
        buffer.seek(-1)
    with pytest.raises(ValueError):
        buffer.seek(0, 7)
    with pytest.raises(ValueError):
        buffer.add_region(5, b"1234")  # past the end of the file
    with pytest.raises(ValueError):
        buffer.add_region(-1, b"1")
    buffer.add_region(0, b"")  # empty is a no-op
    assert buffer.regions == []
    buffer.add_region(0, b"abcd")
    target = bytearray(8)
    assert buffer.readinto(target) == 4 and bytes(target[:4]) == b"abcd"
    buffer.clear()
    assert buffer.regions == [] and buffer.find_region(0, 1) is None
    buffer.close()
    with pytest.raises(ValueError):
        buffer.read(1)


def test_a_buffered_reader_reads_until_the_first_gap() -> None:
    buffer = SparseBuffer(30)
    buffer.add_region(0, b"x" * 12)
    assert io.BufferedReader(buffer, buffer_size=4).read(20) == b"x" * 12


def test_many_small_overlapping_regions_match_the_model() -> None:
    # long sequences leave many pieces per region: reads and lookups must join them
    size = 40
    rng = random.Random(11)
    for _ in range(60):
        buffer, model = SparseBuffer(size), Model(size)
        for tag in range(rng.randint(5, 40)):
            s = rng.randrange(size)
            e = min(size, s + rng.randint(1, 6))
            buffer.add_region(s, payload(tag, s, e))
            model.add(s, payload(tag, s, e))
        check(buffer, model)


@pytest.mark.parametrize("order", ["ascending", "descending"])
def test_a_file_added_in_small_adjacent_pieces_is_one_region(order: str) -> None:
    pieces = 10_000
    data = random.Random(3).randbytes(pieces * 7)
    offsets = range(0, len(data), 7)
    buffer = SparseBuffer(len(data))
    for offset in reversed(offsets) if order == "descending" else offsets:
        buffer.add_region(offset, data[offset : offset + 7])
    assert buffer.regions == [(0, len(data))]
    assert buffer.cached_bytes == len(data)
    assert buffer.find_region(0, len(data)) == data
    assert buffer.find_region(12_345, 6_789) == data[12_345 : 12_345 + 6_789]
    buffer.seek(3)
    assert buffer.read() == data[3:]


def test_new_bytes_cut_an_older_region_and_later_writes_to_the_source_do_not_leak() -> None:
    buffer = SparseBuffer(20)
    source = bytearray(b"a" * 20)
    buffer.add_region(0, source)
    source[:] = b"z" * 20  # the caller reuses its buffer: the cached copy must not change
    buffer.add_region(5, b"bbb")
    buffer.add_region(15, memoryview(b"cc"))
    assert buffer.regions == [(0, 20)] and buffer.cached_bytes == 20
    assert buffer.find_region(0, 20) == b"aaaaabbbaaaaaaacc" + b"aaa"
    buffer.add_region(0, b"d" * 20)  # one region covering every piece replaces them all
    assert buffer.find_region(0, 20) == b"d" * 20 and buffer.cached_bytes == 20


def test_discard_forgets_a_range_and_keeps_what_lies_outside_it() -> None:
    buffer = SparseBuffer(100)
    buffer.add_region(0, bytes(range(30)))
    buffer.add_region(50, bytes(range(50, 80)))
    buffer.discard(20, 60)

    assert buffer.regions == [(0, 20), (60, 80)]
    assert buffer.cached_bytes == 40
    assert buffer.find_region(60, 20) == bytes(range(60, 80))
    assert buffer.find_region(0, 20) == bytes(range(20))
    buffer.discard(0, 100)
    assert buffer.regions == [] and buffer.cached_bytes == 0
    buffer.discard(10, 20)  # nothing there: nothing happens
    assert buffer.regions == []
