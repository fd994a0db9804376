"""MCAP summary and scan over in-memory objects (no server): paths, flags, errors."""

from __future__ import annotations

import json

import pytest

from bench.summary import sample_mcap_bytes
from storage_core.errors import IntegrityError
from storage_core.formats import FormatError, NotMcapFile, read_mcap_summary, scan_mcap
from storage_core.formats.mcap_records import TRAILER_SIZE
from storage_core.ranges import RangeReader

from tests.unit.test_ranges_reader import FakeStore


@pytest.fixture(scope="module")
def sample():
    return sample_mcap_bytes(400_000, chunk_size=16 * 1024)


def reader_for(data: bytes, **options) -> RangeReader:
    return RangeReader.from_store(FakeStore({"obj": data}), "obj", **options)


def test_summary_and_scan_agree(sample) -> None:
    data, counts = sample
    by_summary = read_mcap_summary(reader_for(data))
    by_scan = scan_mcap(reader_for(data, tail_size=1024), block_size=10_000)
    assert by_summary.source == "summary" and by_scan.source == "scan" and not by_scan.truncated
    for field in ("message_count", "start_time", "end_time", "channel_message_counts", "topics", "schemas", "channels", "chunks"):
        assert getattr(by_summary, field) == getattr(by_scan, field), field
    assert {t.topic: t.message_count for t in by_summary.topics} == counts
    json.dumps(by_summary.to_dict())  # JSON-ready


def test_scan_opens_only_the_chunks_that_define_channels(sample, monkeypatch) -> None:
    import storage_core.formats.mcap_scan as scan_module

    data, _ = sample
    opened = []
    real = scan_module.decompress_records
    monkeypatch.setattr(scan_module, "decompress_records", lambda c, d, s: opened.append(1) or real(c, d, s))
    summary = scan_mcap(reader_for(data))
    assert 0 < len(opened) < len(summary.chunks)


def test_truncation_at_every_region_is_flagged_or_rejected(sample) -> None:
    data, counts = sample
    total = sum(counts.values())
    previous = 0
    for fraction in (0.0001, 0.1, 0.5, 0.9, 0.9999):
        cut = data[: max(9, int(len(data) * fraction))]
        summary = read_mcap_summary(reader_for(cut))
        assert summary.source == "scan" and summary.truncated
        assert previous <= summary.message_count <= total  # a cut inside the summary loses no message
        previous = summary.message_count


def test_a_corrupt_summary_crc_raises(sample) -> None:
    data, _ = sample
    broken = bytearray(data)
    broken[-TRAILER_SIZE - 10] ^= 0xFF  # inside the summary section
    with pytest.raises(IntegrityError, match="CRC"):
        read_mcap_summary(reader_for(bytes(broken)))


def test_not_mcap_and_bad_footer(sample) -> None:
    with pytest.raises(NotMcapFile):
        read_mcap_summary(reader_for(b"x" * 5000))
    with pytest.raises(NotMcapFile):
        read_mcap_summary(reader_for(b"tiny"))
    data, _ = sample
    bad = bytearray(data)
    bad[-TRAILER_SIZE + 9 : -TRAILER_SIZE + 17] = (len(data) * 2).to_bytes(8, "little")  # summary_start past the end
    with pytest.raises(FormatError, match="outside"):
        read_mcap_summary(reader_for(bytes(bad)))
    with pytest.raises(TypeError):
        read_mcap_summary(FakeStore({"obj": data}))


def test_iter_records_walks_by_length_and_stops_at_a_partial_head() -> None:
    from storage_core.formats.mcap_records import RECORD_HEAD, iter_records

    packed = (
        RECORD_HEAD.pack(0x07, 3) + b"abc"
        + RECORD_HEAD.pack(0x7F, 0)  # unknown opcode, empty body
        + RECORD_HEAD.pack(0x05, 5) + b"xy"  # body cut short by the end of the data
    )
    assert [(op, bytes(body)) for op, body in iter_records(packed)] == [(0x07, b"abc"), (0x7F, b""), (0x05, b"xy")]
    assert list(iter_records(packed[:8])) == []  # fewer bytes than a record head
    assert [op for op, _ in iter_records(memoryview(packed)[12:])] == [0x7F, 0x05]


def test_summary_without_statistics_counts_messages_from_the_message_indexes() -> None:
    import io

    from mcap.writer import CompressionType, Writer

    out = io.BytesIO()
    writer = Writer(out, chunk_size=4096, compression=CompressionType.NONE, use_statistics=False)
    writer.start(profile="p", library="l")
    schema = writer.register_schema("s", "jsonschema", b"{}")
    channels = [writer.register_channel(f"/t{i}", "json", schema) for i in range(40)]
    for t in range(1, 51):
        for i, channel in enumerate(channels[: 1 + t % 40]):
            writer.add_message(channel, t * 10 + i, b"m" * 30, t, 0)
    writer.finish()
    data = out.getvalue()
    by_summary = read_mcap_summary(reader_for(data))
    by_scan = scan_mcap(reader_for(data))
    assert by_summary.source == "summary" and len(by_summary.chunks) > 1
    assert by_summary.message_count == sum(1 + t % 40 for t in range(1, 51))
    for field in ("message_count", "start_time", "end_time", "channel_message_counts", "topics", "chunks"):
        assert getattr(by_summary, field) == getattr(by_scan, field), field


def test_a_malformed_message_index_is_a_format_error_not_a_struct_error() -> None:
    import io
    import struct

    from mcap.reader import make_reader
    from mcap.writer import CompressionType, Writer

    out = io.BytesIO()
    writer = Writer(out, chunk_size=4096, compression=CompressionType.NONE, use_statistics=False)
    writer.start(profile="p", library="l")
    channel = writer.register_channel("/t", "json", writer.register_schema("s", "jsonschema", b"{}"))
    for t in range(200):
        writer.add_message(channel, t, b"m" * 30, t, 0)
    writer.finish()
    data = bytearray(out.getvalue())
    first = make_reader(io.BytesIO(bytes(data))).get_summary().chunk_indexes[0]
    index_at = first.chunk_start_offset + first.chunk_length
    assert data[index_at] == 0x07  # MessageIndex: declare a 3-byte body, too short for its fields
    data[index_at + 1:index_at + 9] = struct.pack("<Q", 3)
    with pytest.raises(FormatError, match=r"obj: malformed MCAP message index after the chunk at \d+"):
        read_mcap_summary(reader_for(bytes(data)))


def test_parse_chunk_index_agrees_with_the_mcap_library() -> None:
    from mcap.data_stream import RecordBuilder
    from mcap.records import ChunkIndex

    from storage_core.formats.mcap_records import RECORD_HEAD, parse_chunk_index

    record = ChunkIndex(message_start_time=5, message_end_time=2**63, chunk_start_offset=8, chunk_length=4096,
                        message_index_offsets={1: 4104, 65535: 4200}, message_index_length=130,
                        compression="zstd", compressed_size=4000, uncompressed_size=9000)
    builder = RecordBuilder()
    record.write(builder)
    body = builder.end()[RECORD_HEAD.size:]
    assert parse_chunk_index(body) == record
    assert parse_chunk_index(body + b"later fields") == record  # forward compatible, as the library is
    broken = bytearray(body)
    broken[32:36] = (7).to_bytes(4, "little")  # a map that is not whole 10-byte entries
    with pytest.raises(FormatError, match="7-byte message index map"):
        parse_chunk_index(bytes(broken))
