"""Oracle: MCAP conformance data (foxglove/mcap tests/conformance/data) against Ferry's
range-based summary and against what the `mcap` library reads from the same file locally.

Each `X.json` lists every record a reader must find in `X.mcap`. Where `X.mcap` is a real
MCAP file it is used as it is. Where the checkout holds only its Git LFS pointer (the
copy in shared/ does today), the file is rebuilt from the `.json` records with `mcap`'s
Writer and the variant's features (chunking, indexes, statistics, repeated channels and
schemas, summary offsets; padding cannot be reproduced), so the oracle still runs. The
checks that depend on the exact byte layout (ChunkIndex offsets, Statistics as recorded)
run only on real files.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from mcap.reader import NonSeekingReader, make_reader
from mcap.writer import CompressionType, IndexType, Writer

from storage_core.formats import read_mcap_summary
from storage_core.formats.mcap_records import MAGIC, chunk_info
from storage_core.ranges import RangeReader
from storage_core.stores.local import LocalStore

DATA = Path(__file__).resolve().parents[2].parent / "shared" / "testdata" / "mcap-conformance"
CASES = sorted(DATA.rglob("*.json")) if DATA.is_dir() else []


def fields(record: dict) -> dict:
    return dict(record["fields"])


def build_from_json(spec: dict, path: Path) -> None:
    """Write an MCAP holding the spec's data records, shaped by its variant features."""
    features = set(spec["meta"]["variant"]["features"])
    index = IndexType.NONE
    for feature, flag in (("chx", IndexType.CHUNK), ("mx", IndexType.MESSAGE), ("ax", IndexType.ATTACHMENT), ("mdx", IndexType.METADATA)):
        if feature in features:
            index |= flag
    with open(path, "wb") as out:
        writer = Writer(
            out,
            compression=CompressionType.NONE,
            index_types=index,
            repeat_channels="rch" in features,
            repeat_schemas="rsh" in features,
            use_chunking="ch" in features,
            use_statistics="st" in features,
            use_summary_offsets="sum" in features,
        )
        schema_ids: dict[int, int] = {0: 0}
        channel_ids: dict[int, int] = {}
        for record in spec["records"]:
            f = fields(record)
            kind = record["type"]
            if kind == "Header":
                writer.start(profile=f["profile"], library=f["library"])
            elif kind == "Schema":
                schema_ids[int(f["id"])] = writer.register_schema(f["name"], f["encoding"], bytes(int(b) for b in f["data"]))
            elif kind == "Channel":
                channel_ids[int(f["id"])] = writer.register_channel(
                    f["topic"], f["message_encoding"], schema_ids[int(f["schema_id"])], f["metadata"]
                )
            elif kind == "Message":
                writer.add_message(
                    channel_ids[int(f["channel_id"])], int(f["log_time"]), bytes(int(b) for b in f["data"]),
                    int(f["publish_time"]), int(f["sequence"]),
                )
            elif kind == "Attachment":
                writer.add_attachment(int(f["create_time"]), int(f["log_time"]), f["name"], f["media_type"], bytes(int(b) for b in f["data"]))
            elif kind == "Metadata":
                writer.add_metadata(f["name"], f["metadata"])
            elif kind == "DataEnd":
                break
        writer.finish()


def mcap_file(case: Path, tmp_path: Path) -> tuple[Path, bool]:
    """(path of a real MCAP for this case, whether it is the original conformance file)."""
    original = case.with_suffix(".mcap")
    if original.is_file() and original.read_bytes()[:8] == MAGIC:
        return original, True
    rebuilt = tmp_path / original.name
    build_from_json(json.loads(case.read_text()), rebuilt)
    return rebuilt, False


def test_conformance_data_is_there() -> None:
    assert len(CASES) > 100, f"conformance data missing at {DATA}"


@pytest.mark.parametrize("case", CASES, ids=[c.stem for c in CASES])
def test_summary_agrees_with_the_records_and_the_mcap_library(case: Path, tmp_path: Path) -> None:
    spec = json.loads(case.read_text())
    path, original = mcap_file(case, tmp_path)
    store = LocalStore(path.parent)
    records = spec["records"]
    by_type: dict[str, list[dict]] = {}
    for record in records:
        by_type.setdefault(record["type"], []).append(fields(record))

    summary = read_mcap_summary(store, path.name)
    assert not summary.truncated

    # schemas and channels: those of the data section, by content
    schemas = {int(s["id"]): s for s in by_type.get("Schema", [])}
    assert {(s.name, s.encoding, s.data) for s in summary.schemas} == {
        (s["name"], s["encoding"], bytes(int(b) for b in s["data"])) for s in schemas.values()
    }
    ours_by_id = {s.id: s for s in summary.schemas}
    assert {(c.topic, c.message_encoding, tuple(sorted(c.metadata.items())), ours_by_id[c.schema_id].name if c.schema_id else None) for c in summary.channels} == {
        (c["topic"], c["message_encoding"], tuple(sorted(c["metadata"].items())), schemas[int(c["schema_id"])]["name"] if int(c["schema_id"]) else None)
        for c in by_type.get("Channel", [])
    }

    # messages: counts per topic and the time range
    messages = by_type.get("Message", [])
    topic_of = {int(c["id"]): c["topic"] for c in by_type.get("Channel", [])}
    expected_counts: dict[str, int] = {}
    for message in messages:
        topic = topic_of[int(message["channel_id"])]
        expected_counts[topic] = expected_counts.get(topic, 0) + 1
    assert {t.topic: t.message_count for t in summary.topics if t.message_count} == expected_counts
    assert summary.message_count == len(messages)
    times = [int(m["log_time"]) for m in messages]
    assert (summary.start_time, summary.end_time) == ((min(times), max(times)) if times else (None, None))

    # attachments and metadata
    assert [(a.name, a.media_type, a.log_time, a.create_time, a.data_size) for a in summary.attachments] == [
        (a["name"], a["media_type"], int(a["log_time"]), int(a["create_time"]), len(a["data"]))
        for a in by_type.get("Attachment", [])
    ]
    assert [m.name for m in summary.metadata] == [m["name"] for m in by_type.get("Metadata", [])]

    # where the file has a summary, the summary path is taken exactly when it is complete
    footer = by_type["Footer"][0]
    if original:
        assert summary.source == "scan" or int(footer["summary_start"]) != 0
        if summary.source == "summary":
            assert [vars(c) for c in summary.chunks] == [
                {
                    "start_offset": int(ci["chunk_start_offset"]), "length": int(ci["chunk_length"]),
                    "message_start_time": int(ci["message_start_time"]), "message_end_time": int(ci["message_end_time"]),
                    "compression": ci["compression"], "compressed_size": int(ci["compressed_size"]),
                    "uncompressed_size": int(ci["uncompressed_size"]),
                    "message_index_offsets": {int(k): int(v) for k, v in ci["message_index_offsets"].items()},
                    "message_index_length": int(ci["message_index_length"]),
                }
                for ci in by_type.get("ChunkIndex", [])
            ]
            assert summary.summary_crc_verified == (int(footer["summary_crc"]) != 0)

    # the mcap library, reading the same file locally: its seeking reader for the summary
    # section, its linear reader for the content (the seeking one relies on indexes the
    # variant may lack: it raises KeyError without repeated channels, misses unindexed metadata)
    with open(path, "rb") as handle:
        library_summary = make_reader(handle).get_summary()
    with open(path, "rb") as handle:
        library_counts: dict[str, int] = {}
        for _, channel, _ in NonSeekingReader(handle).iter_messages():
            library_counts[channel.topic] = library_counts.get(channel.topic, 0) + 1
    with open(path, "rb") as handle:
        library_attachments = [a.name for a in NonSeekingReader(handle).iter_attachments()]
    with open(path, "rb") as handle:
        library_metadata = [m.name for m in NonSeekingReader(handle).iter_metadata()]
    assert {t.topic: t.message_count for t in summary.topics if t.message_count} == library_counts
    assert [a.name for a in summary.attachments] == library_attachments
    assert [m.name for m in summary.metadata] == library_metadata
    if summary.source == "summary":
        assert library_summary is not None
        assert [chunk_info(ci) for ci in library_summary.chunk_indexes] == list(summary.chunks)
        assert {s.id for s in summary.schemas} == set(library_summary.schemas)
        assert {c.id: c.topic for c in summary.channels} == {k: c.topic for k, c in library_summary.channels.items()}
        if library_summary.statistics is not None:
            assert library_summary.statistics.message_count == summary.message_count

    # a summary larger than the tail costs exactly one more request
    if summary.source == "summary":
        reader = RangeReader.from_store(store, path.name, tail_size=40)
        small_tail = read_mcap_summary(reader)
        assert small_tail.source == "summary"
        assert small_tail.topics == summary.topics and small_tail.chunks == summary.chunks
        counting_requests = 0 if any(r["type"] == "Statistics" for r in records) or original is False and "st" in spec["meta"]["variant"]["features"] else 1
        assert reader.stats.requests <= 2 + counting_requests
