"""Ferry's chunk-at-a-time message reader against the `mcap` library: every conformance
file (chunked or not, compressed or not, padded, repeated schemas and channels) and a
recording with interleaved topics give the same messages, per topic, in file order."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from mcap.reader import NonSeekingReader, make_reader

from storage_core.errors import FormatError, NotMcapFile
from storage_core.formats.mcap_messages import McapMessages
from storage_core.formats.mcap_records import MAGIC, RECORD_HEAD, parse_chunk_head
from tests.support.recordings import mcap_with_topics

DATA = Path(__file__).resolve().parents[2].parent / "shared" / "testdata" / "mcap-conformance"
FILES = sorted(p for p in DATA.rglob("*.mcap") if p.read_bytes()[:8] == MAGIC) if DATA.is_dir() else []


def by_library(data: bytes) -> dict[str, list[tuple]]:
    out: dict[str, list[tuple]] = {}
    for _, channel, m in NonSeekingReader(io.BytesIO(data), validate_crcs=True).iter_messages(log_time_order=False):
        out.setdefault(channel.topic, []).append((channel.id, m.log_time, m.publish_time, m.sequence, bytes(m.data)))
    return out


def by_ferry(data: bytes, block: int = 7) -> dict[str, list[tuple]]:
    blocks = (data[i : i + block] for i in range(0, len(data), block))
    out: dict[str, list[tuple]] = {}
    for batch in McapMessages(blocks, name="x.mcap").batches():
        for topic, m in batch.items():
            out.setdefault(topic, []).extend(zip(m.channel_id, m.log_time, m.publish_time, m.sequence, m.data))
    return out


def test_there_are_conformance_files() -> None:
    assert len(FILES) > 100


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_conformance_files_read_as_the_library_reads_them(path: Path) -> None:
    data = path.read_bytes()
    assert by_ferry(data) == by_library(data)


def test_an_interleaved_recording_reads_as_the_library_reads_it() -> None:
    data = mcap_with_topics({"/imu": 700, "/log": 300, "/raw": 50}, seed=4)
    assert by_ferry(data, block=4096) == by_library(data)


def test_damage_is_a_format_error() -> None:
    data = mcap_with_topics({"/imu": 300}, seed=1)
    with pytest.raises(NotMcapFile):
        by_ferry(b"x" + data[1:])
    with pytest.raises(FormatError, match="ends early"):
        by_ferry(data[: len(data) // 2])
    first = make_reader(io.BytesIO(data)).get_summary().chunk_indexes[0].chunk_start_offset
    at = first + RECORD_HEAD.size  # the first chunk's body ...
    records = at + parse_chunk_head(data[at:]).records_offset
    assert data[records : records + 4] == b"\x28\xb5\x2f\xfd"  # ... holds a zstd frame
    for offset, error in ((0, "malformed"), (100, "CRC")):  # its magic (it does not decode), a byte inside it
        flipped = bytearray(data)
        flipped[records + offset] ^= 0xFF
        with pytest.raises(FormatError, match=error):
            by_ferry(bytes(flipped))
