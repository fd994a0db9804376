"""Read an MCAP file's summary through byte ranges: the tail, and at most one more GET.

1. The reader's opening suffix GET holds the last 256 KiB: Footer and magic are checked
   there without another request.
2. When the summary starts before that tail, one bounded GET fetches the difference.
3. The summary CRC is verified when the writer recorded one (non-zero).
4. A file without a summary, whose summary lacks the channels/schemas it needs, or with
   no valid Footer (truncated) is summarized by `scan_mcap` instead, and says so.
"""

from __future__ import annotations

import struct
import zlib
from io import BytesIO

from mcap.exceptions import McapError
from mcap.records import AttachmentIndex, Channel, ChunkIndex, Footer as McapFooter, MetadataIndex, Schema, Statistics
from mcap.stream_reader import StreamReader

from storage_core.errors import IntegrityError
from storage_core.errors import FormatError, NotMcapFile
from storage_core.formats.mcap_model import McapSummary, topics_of
from storage_core.formats.mcap_records import (
    FOOTER_CRC_SPAN,
    MAGIC,
    OP_CHUNK_INDEX,
    OP_MESSAGE_INDEX,
    RECORD_HEAD,
    TRAILER_SIZE,
    attachment_info,
    channel_info,
    chunk_info,
    iter_records,
    message_index_count,
    metadata_info,
    parse_chunk_index,
    parse_trailer,
    read_string,
    schema_info,
)
from storage_core.formats.mcap_scan import scan_mcap
from storage_core.ranges.reader import DEFAULT_TAIL_SIZE, RangeReader
from storage_core.stores.base import GetRangeAndTail

MIN_SIZE = len(MAGIC) + TRAILER_SIZE


def read_mcap_summary(
    source: RangeReader | GetRangeAndTail,
    key: str | None = None,
    *,
    tail_size: int = DEFAULT_TAIL_SIZE,
    allow_scan: bool = True,
) -> McapSummary:
    """Summarize an MCAP object, given a `RangeReader` or a store and key.

    With a summary present: ≤ 2 requests (the reader's tail, and one more only when the
    summary is larger than the tail), bytes ≤ summary + tail. Otherwise a streaming scan
    (`source="scan"`); `allow_scan=False` raises `FormatError` instead.
    Raises `NotMcapFile` for a non-MCAP object, `IntegrityError` for a summary whose CRC
    does not match, `PreconditionFailed` if the object is replaced while being read.
    """
    if isinstance(source, RangeReader):
        reader = source
    else:
        if key is None:
            raise TypeError("read_mcap_summary(store, key): key is required with a store")
        reader = RangeReader.from_store(source, key, tail_size=tail_size)
    summary = _from_summary(reader)
    if summary is not None:
        return summary
    if not allow_scan:
        raise FormatError(f"{reader.name}: no usable MCAP summary and scanning is not allowed", key=reader.name)
    return scan_mcap(reader)


def _from_summary(reader: RangeReader) -> McapSummary | None:
    """The summary-section result, or None when a scan is needed."""
    size = reader.size
    footer = parse_trailer(reader.pread(size - TRAILER_SIZE, size)) if size >= MIN_SIZE else None
    if footer is None:
        if reader.pread(0, len(MAGIC)) != MAGIC:
            raise NotMcapFile(f"{reader.name} is not an MCAP file (no MCAP magic at either end)", key=reader.name)
        return None  # starts like MCAP, ends without a footer: truncated
    if footer.summary_start == 0:
        return None
    footer_start = size - TRAILER_SIZE
    if not len(MAGIC) <= footer.summary_start <= footer_start or not (
        footer.summary_offset_start == 0 or footer.summary_start <= footer.summary_offset_start <= footer_start
    ):
        raise FormatError(f"{reader.name}: MCAP footer points outside the file", key=reader.name)
    section = reader.pread(footer.summary_start, size)  # one GET at most: the tail is cached
    crc_verified = False
    if footer.summary_crc != 0:
        actual = zlib.crc32(section[: footer_start + FOOTER_CRC_SPAN - footer.summary_start])
        if actual != footer.summary_crc:
            raise IntegrityError(
                f"{reader.name}: MCAP summary CRC {actual:#010x} != recorded {footer.summary_crc:#010x}",
                key=reader.name,
            )
        crc_verified = True
    try:
        records = _summary_records(section)
    except (McapError, struct.error, ValueError, UnicodeDecodeError) as exc:
        raise FormatError(f"{reader.name}: malformed MCAP summary: {exc}", key=reader.name) from exc
    return _assemble(reader, records, crc_verified)


def _summary_records(section: bytes) -> list:
    """The summary section's records: ChunkIndexes (thousands in a large file) by our
    parser, the few others by the `mcap` library's reader, which also checks the layout."""
    chunk_indexes, others = [], bytearray()
    for opcode, body in iter_records(section):
        if opcode == OP_CHUNK_INDEX:
            chunk_indexes.append(parse_chunk_index(body))
        else:
            others += RECORD_HEAD.pack(opcode, len(body))
            others += body
    return list(StreamReader(BytesIO(bytes(others) + MAGIC), skip_magic=True).records) + chunk_indexes


def _assemble(reader: RangeReader, records: list, crc_verified: bool) -> McapSummary | None:
    schemas = {r.id: schema_info(r) for r in records if isinstance(r, Schema) and r.id != 0}
    channels = {r.id: channel_info(r) for r in records if isinstance(r, Channel)}
    statistics = next((r for r in records if isinstance(r, Statistics)), None)
    chunk_indexes = [r for r in records if isinstance(r, ChunkIndex)]
    if not any(isinstance(r, McapFooter) for r in records):
        raise FormatError(f"{reader.name}: MCAP summary does not end with its Footer", key=reader.name)

    referenced = {c for ci in chunk_indexes for c in ci.message_index_offsets}
    if statistics is not None:
        referenced |= set(statistics.channel_message_counts)
        if statistics.channel_count > len(channels) or statistics.schema_count > len(schemas):
            return None  # channels/schemas not repeated in the summary: only a scan finds them
        attachments = sum(isinstance(r, AttachmentIndex) for r in records)
        metadata = sum(isinstance(r, MetadataIndex) for r in records)
        if statistics.attachment_count > attachments or statistics.metadata_count > metadata:
            return None  # attachments/metadata exist but are not indexed: list them by a scan
    if not referenced <= channels.keys() or any(
        c.schema_id != 0 and c.schema_id not in schemas for c in channels.values()
    ):
        return None

    if statistics is not None:
        counts = {k: v for k, v in statistics.channel_message_counts.items()}
        total = statistics.message_count
        start, end = (statistics.message_start_time, statistics.message_end_time) if total else (None, None)
    elif chunk_indexes and all(ci.message_index_length for ci in chunk_indexes):
        counts, start, end = _count_from_message_indexes(reader, chunk_indexes)
        total = sum(counts.values())
    else:
        return None  # no statistics and no message indexes: counting needs the data section

    header = _cached_header(reader)
    return McapSummary(
        source="summary",
        truncated=False,
        size=reader.size,
        etag=reader.etag,
        message_count=total,
        start_time=start,
        end_time=end,
        channel_message_counts=dict(sorted(counts.items())),
        topics=topics_of(channels, schemas, counts),
        schemas=tuple(schemas[k] for k in sorted(schemas)),
        channels=tuple(channels[k] for k in sorted(channels)),
        chunks=tuple(chunk_info(r) for r in chunk_indexes),
        attachments=tuple(attachment_info(r) for r in records if isinstance(r, AttachmentIndex)),
        metadata=tuple(metadata_info(r) for r in records if isinstance(r, MetadataIndex)),
        summary_crc_verified=crc_verified,
        profile=header[0] if header else None,
        library=header[1] if header else None,
    )


def _count_from_message_indexes(
    reader: RangeReader, chunk_indexes: list[ChunkIndex]
) -> tuple[dict[int, int], int | None, int | None]:
    """Per-channel counts from the MessageIndex records after each chunk (fetched in parallel)."""
    spans = [(ci.chunk_start_offset + ci.chunk_length, ci.chunk_start_offset + ci.chunk_length + ci.message_index_length) for ci in chunk_indexes]
    reader.prefetch_ranges(spans)
    counts: dict[int, int] = {}
    start = end = None
    for ci, (span_start, span_end) in zip(chunk_indexes, spans):
        in_chunk = 0
        try:
            for opcode, body in iter_records(reader.pread(span_start, span_end)):
                if opcode == OP_MESSAGE_INDEX:
                    channel_id, count = message_index_count(body)
                    counts[channel_id] = counts.get(channel_id, 0) + count
                    in_chunk += count
        except (McapError, struct.error, ValueError) as exc:
            raise FormatError(f"{reader.name}: malformed MCAP message index after the chunk at "
                              f"{ci.chunk_start_offset}: {exc}", key=reader.name) from exc
        if in_chunk:
            start = ci.message_start_time if start is None else min(start, ci.message_start_time)
            end = ci.message_end_time if end is None else max(end, ci.message_end_time)
    return counts, start, end


def _cached_header(reader: RangeReader) -> tuple[str, str] | None:
    """(profile, library) when the file's start is already cached; never costs a request."""
    head = reader.cached(0, min(reader.size, 4096))
    if head is None or head[: len(MAGIC)] != MAGIC or len(head) < len(MAGIC) + RECORD_HEAD.size:
        return None
    try:
        profile, position = read_string(head, len(MAGIC) + RECORD_HEAD.size)
        library, _ = read_string(head, position)
    except (struct.error, FormatError):
        return None
    return profile, library


__all__ = ["read_mcap_summary"]
