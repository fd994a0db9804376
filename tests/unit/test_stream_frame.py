"""The frame (storage_core.device.frame): one envelope, every byte checked, nothing guessed."""

from __future__ import annotations

import io

import pytest

from storage_core.device.frame import (
    BLOCK,
    MAGIC,
    PREFIX_SIZE,
    Kind,
    decode_blocks,
    decode_frame,
    encode_blocks,
    encode_frame,
    iter_frames,
)
from storage_core.errors import CorruptFrame, IntegrityError

HEADER = {"stream": "robot-1/state", "epoch": 1, "offset": 5000, "rows": 5000}


def test_a_frame_round_trips() -> None:
    data = encode_frame(Kind.APPEND, HEADER, b"arrow bytes")
    assert data.startswith(MAGIC)
    frame = decode_frame(data)
    assert (frame.kind, frame.header, frame.body, frame.size) == (Kind.APPEND, HEADER, b"arrow bytes", len(data))


def test_every_flipped_bit_is_refused() -> None:
    data = encode_frame(Kind.APPEND, HEADER, bytes(range(200)))
    for position in range(len(data)):
        for bit in (0x01, 0x80):
            bad = bytearray(data)
            bad[position] ^= bit
            with pytest.raises(CorruptFrame) as caught:
                decode_frame(bytes(bad))
            assert caught.value.offset == 0
            assert isinstance(caught.value, IntegrityError)


@pytest.mark.parametrize("cut", [1, PREFIX_SIZE - 1, PREFIX_SIZE + 3, -5, -1])
def test_a_truncated_frame_is_refused(cut: int) -> None:
    data = encode_frame(Kind.APPEND, HEADER, b"x" * 100)
    with pytest.raises(CorruptFrame, match="truncated"):
        decode_frame(data[:cut])


def test_no_heuristic_decides_framing() -> None:
    # bytes that the seed's heuristic takes for a frame (a small little-endian i64 first)
    raw = (12).to_bytes(8, "little") + b"not a frame at all"
    with pytest.raises(CorruptFrame, match="no frame at offset 0"):
        decode_frame(raw)
    with pytest.raises(CorruptFrame, match="trailing bytes"):
        decode_frame(encode_frame(Kind.BLOB, {}, b"a") + b"\x00")
    with pytest.raises(CorruptFrame, match="over 10"):
        decode_frame(encode_frame(Kind.BLOB, {}, b"a" * 11), max_body=10)


def test_blobs_are_a_sequence_of_the_same_frames() -> None:
    frames = [encode_frame(Kind.BLOB, {"name": f"b{i}", "content_type": "text/plain"}, b"x" * i) for i in range(4)]
    got = list(iter_frames(io.BytesIO(b"".join(frames))))
    assert [f.header["name"] for f in got] == ["b0", "b1", "b2", "b3"]
    assert [len(f.body) for f in got] == [0, 1, 2, 3]
    cut = b"".join(frames)[:-2]
    with pytest.raises(CorruptFrame) as caught:
        list(iter_frames(io.BytesIO(cut)))
    assert caught.value.offset == sum(len(f) for f in frames[:3])


@pytest.mark.parametrize("size", [0, 1, BLOCK - 1, BLOCK, BLOCK + 1, 3 * BLOCK, 3 * BLOCK + 17])
def test_crc_blocks_round_trip_from_any_chunking(size: int) -> None:
    data = bytes(i % 251 for i in range(size))
    framed = b"".join(encode_blocks([data[i:i + 1000] for i in range(0, size, 1000)]))
    assert len(framed) == size + 4 * -(-size // BLOCK)
    for step in (1, 7, 4100, 10_000):
        assert b"".join(decode_blocks(framed[i:i + step] for i in range(0, len(framed), step))) == data


def test_a_corrupt_block_names_its_offset() -> None:
    data = bytes(5 * BLOCK)
    framed = bytearray(b"".join(encode_blocks([data])))
    framed[2 * (BLOCK + 4) + 10] ^= 1
    got = bytearray()
    with pytest.raises(CorruptFrame, match=f"data offset {2 * BLOCK}") as caught:
        for block in decode_blocks([bytes(framed)]):
            got += block
    assert caught.value.offset == 2 * BLOCK
    assert bytes(got) == data[: 2 * BLOCK]  # nothing past the last good block
