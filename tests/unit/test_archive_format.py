"""Record framing, archive names and the chunk writer of storage_core.device.archive (in memory)."""

from __future__ import annotations

import zlib
from datetime import datetime, timezone
from io import BytesIO

import pytest
from mcap.reader import make_reader

from storage_core.checksums import crc32
from storage_core.device.archive.format import (
    archive_name,
    check_template,
    decode_record,
    encode_metadata,
    encode_record,
    full_sequence,
)
from storage_core.device.archive.mcap_file import McapFile
from storage_core.errors import ConfigError

WHEN = datetime(2026, 12, 1, 8, 30, 5, tzinfo=timezone.utc)


@pytest.mark.parametrize(
    "metadata, payload",
    [({}, b""), ({}, b"\x00\xff" * 10), ({"k": "v", "ünï": "çødé", "": ""}, b'{"json": 1}'), ({"a" * 300: "b" * 70000}, b"x")],
)
def test_a_record_reads_back_exactly(metadata: dict[str, str], payload: bytes) -> None:
    assert decode_record(encode_record(metadata, payload)) == (metadata, payload)


def test_empty_metadata_costs_four_bytes() -> None:
    assert encode_record(None, b"abc") == b"\0\0\0\0abc"


@pytest.mark.parametrize("data", [b"", b"\x01\x00", b"\xff\x00\x00\x00abc", b"\x08\x00\x00\x00\x09\x00\x00\x00abcd"])
def test_broken_framing_is_refused(data: bytes) -> None:
    with pytest.raises(ValueError):
        decode_record(data)


def test_metadata_must_be_strings() -> None:
    with pytest.raises(ConfigError):
        encode_record({"k": 1}, b"")  # type: ignore[dict-item]


def test_the_u64_sequence_is_rebuilt_across_the_u32_wrap() -> None:
    first = 2**32 - 2
    assert [full_sequence(first, (first + i) % 2**32) for i in range(5)] == [first + i for i in range(5)]
    assert full_sequence(7, 7) == 7


def test_names_take_strftime_fields_and_the_sequence() -> None:
    assert archive_name("robot-%Y%m%d-%H%M%S-{seq:04d}", 12, WHEN) == "robot-20261201-083005-0012.mcap"
    assert archive_name(check_template("cam-%H%M"), 3, WHEN) == "cam-0830-000003.mcap"  # {seq} added
    assert archive_name(check_template("{seq}"), 3, WHEN) == "3.mcap"


def test_two_sequences_in_one_second_never_share_a_name() -> None:
    template = check_template("%Y%m%dT%H%M%S")
    assert len({archive_name(template, seq, WHEN) for seq in range(100)}) == 100


@pytest.mark.parametrize("template", ["a/b-{seq}", "", "{seq:q}"])
def test_bad_templates_are_refused(template: str) -> None:
    with pytest.raises(ConfigError):
        check_template(template)


@pytest.mark.parametrize("size", [0, 1, 15, 4096, 1 << 20])
def test_the_mcap_crc_is_zlibs_crc32(size: int) -> None:
    """zlib-ng's CRC-32 is the one MCAP names (zlib's), seeded and on any buffer."""
    data = bytes(range(256)) * (size // 256) + bytes(size % 256)
    assert crc32(data) == zlib.crc32(data)
    assert crc32(memoryview(bytearray(data))[1:], 0x1234) == zlib.crc32(data[1:], 0x1234)


@pytest.mark.parametrize("compression", ["zstd", "lz4", "none"])
def test_chunks_from_a_reused_buffer_read_back_with_the_mcap_library(compression: str) -> None:
    """The open chunk's buffer is rewound, not replaced: chunks after a large record and
    after small ones hold exactly their own records (CRCs checked by the official reader)."""
    out = BytesIO()
    writer = McapFile(out, compression=compression, profile="p", library="l", chunk_size=1024)
    channel = writer.register_channel("/t", "ferry.record/1")
    payloads = [bytes([i % 251]) * (i * 37 % 3000) for i in range(40)] + [b"z" * 50_000] + [b"small"] * 5
    for i, payload in enumerate(payloads):
        writer.add_message(channel, 1_000 + i, i, encode_metadata({"i": str(i)}), payload)
        if writer.pending >= 1024:
            writer.write_chunk()
    writer.finish()
    out.seek(0)
    read = [(m.sequence, m.log_time, decode_record(m.data)) for _, _, m in make_reader(out, validate_crcs=True).iter_messages()]
    assert read == [(i, 1_000 + i, ({"i": str(i)}, payload)) for i, payload in enumerate(payloads)]
