"""The fallback: summarize an MCAP file by one streaming pass over its data section.

Used when a file has no summary, an incomplete one, or no footer at all (a recorder that
crashed). Message counts come from the MessageIndex records after each chunk and times
from chunk headers; a chunk is decompressed only when it has no message indexes or they
name a channel whose Channel record has not been seen (it is inside that chunk). The pass
stops at DataEnd; an end of file before it, or a file that does not end with Footer +
magic, marks the result `truncated`.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import dataclass, field

import zstandard

from storage_core.errors import FormatError, NotMcapFile
from storage_core.formats.block_stream import BlockStream
from storage_core.formats.mcap_model import (
    AttachmentInfo,
    ChannelInfo,
    ChunkInfo,
    McapSummary,
    MetadataInfo,
    SchemaInfo,
    topics_of,
)
from storage_core.formats.mcap_records import (
    MAGIC,
    MESSAGE_HEAD,
    OP_ATTACHMENT,
    OP_CHANNEL,
    OP_CHUNK,
    OP_DATA_END,
    OP_FOOTER,
    OP_HEADER,
    OP_MESSAGE,
    OP_MESSAGE_INDEX,
    OP_METADATA,
    OP_SCHEMA,
    RECORD_HEAD,
    TRAILER_SIZE,
    decompress_records,
    learn_definition,
    iter_records,
    message_index_count,
    parse_chunk_head,
    parse_trailer,
    read_string,
)
from storage_core.ranges.reader import RangeReader

SCAN_BLOCK_SIZE = 8 * 1024 * 1024


@dataclass
class _Pending:
    offset: int
    length: int
    body: bytes
    index_counts: dict[int, int] = field(default_factory=dict)
    index_offsets: dict[int, int] = field(default_factory=dict)
    index_length: int = 0


@dataclass
class _State:
    schemas: dict[int, SchemaInfo] = field(default_factory=dict)
    channels: dict[int, ChannelInfo] = field(default_factory=dict)
    counts: dict[int, int] = field(default_factory=dict)
    start: int | None = None
    end: int | None = None
    chunks: list[ChunkInfo] = field(default_factory=list)
    attachments: list[AttachmentInfo] = field(default_factory=list)
    metadata: list[MetadataInfo] = field(default_factory=list)
    profile: str | None = None
    library: str | None = None

    def times(self, start: int, end: int) -> None:
        self.start = start if self.start is None else min(self.start, start)
        self.end = end if self.end is None else max(self.end, end)

    def record(self, opcode: int, body: bytes | memoryview) -> None:
        """Schema, Channel and Message records, at top level or inside a chunk."""
        if learn_definition(opcode, body, self.schemas, self.channels):
            return
        if opcode == OP_MESSAGE:
            channel_id, _, log_time, _ = MESSAGE_HEAD.unpack_from(body, 0)
            self.counts[channel_id] = self.counts.get(channel_id, 0) + 1
            self.times(log_time, log_time)


def _finish_chunk(state: _State, chunk: _Pending, *, indexes_complete: bool, decompress_all: bool) -> None:
    head = parse_chunk_head(chunk.body)
    state.chunks.append(
        ChunkInfo(
            start_offset=chunk.offset,
            length=chunk.length,
            message_start_time=head.message_start_time,
            message_end_time=head.message_end_time,
            compression=head.compression,
            compressed_size=head.records_length,
            uncompressed_size=head.uncompressed_size,
            message_index_offsets=dict(chunk.index_offsets),
            message_index_length=chunk.index_length,
        )
    )
    known = all(channel_id in state.channels for channel_id in chunk.index_counts)
    if indexes_complete and chunk.index_counts and known and not decompress_all:
        for channel_id, count in chunk.index_counts.items():
            state.counts[channel_id] = state.counts.get(channel_id, 0) + count
        if any(chunk.index_counts.values()):
            state.times(head.message_start_time, head.message_end_time)
        return
    records = memoryview(chunk.body)[head.records_offset : head.records_offset + head.records_length]
    for opcode, body in iter_records(decompress_records(head.compression, records, head.uncompressed_size)):
        state.record(opcode, body)


def _walk(stream: BlockStream, state: _State, *, decompress_all: bool) -> bool:
    """Walk top-level records after the magic; True when the file ended before DataEnd."""
    pending: _Pending | None = None
    try:
        while True:
            offset = stream.position
            opcode, length = RECORD_HEAD.unpack(stream.read(RECORD_HEAD.size))
            if opcode == OP_MESSAGE_INDEX and pending is not None:
                body = stream.read(length)
                channel_id, count = message_index_count(body)
                pending.index_counts[channel_id] = count
                pending.index_offsets[channel_id] = offset
                pending.index_length += RECORD_HEAD.size + length
                continue
            if pending is not None:
                _finish_chunk(state, pending, indexes_complete=True, decompress_all=decompress_all)
                pending = None
            if opcode == OP_CHUNK:
                pending = _Pending(offset, RECORD_HEAD.size + length, stream.read(length))
            elif opcode == OP_ATTACHMENT:
                state.attachments.append(_attachment(stream, offset, length))
            elif opcode in (OP_DATA_END, OP_FOOTER):
                return False
            elif opcode in (OP_HEADER, OP_SCHEMA, OP_CHANNEL, OP_MESSAGE, OP_METADATA):
                body = stream.read(length)
                if opcode == OP_HEADER:
                    state.profile, position = read_string(body, 0)
                    state.library, _ = read_string(body, position)
                elif opcode == OP_METADATA:
                    state.metadata.append(MetadataInfo(offset, RECORD_HEAD.size + length, read_string(body, 0)[0]))
                else:
                    state.record(opcode, body)
            else:
                stream.skip(length)  # statistics, indexes, unknown records: not needed for a scan
    except BlockStream.Ended:
        if pending is not None:  # complete chunk, but its message indexes may be cut short
            _finish_chunk(state, pending, indexes_complete=False, decompress_all=True)
        return True


def _attachment(stream: BlockStream, offset: int, length: int) -> AttachmentInfo:
    """Read an Attachment's fields and skip its data, without holding the data in memory."""
    begin = stream.position
    log_time, create_time = struct.unpack("<QQ", stream.read(16))
    (name_length,) = struct.unpack("<I", stream.read(4))
    name = stream.read(name_length).decode("utf-8", "replace")
    (type_length,) = struct.unpack("<I", stream.read(4))
    media_type = stream.read(type_length).decode("utf-8", "replace")
    (data_size,) = struct.unpack("<Q", stream.read(8))
    stream.skip(length - (stream.position - begin))
    return AttachmentInfo(offset, RECORD_HEAD.size + length, log_time, create_time, data_size, name, media_type)


def scan_mcap(reader: RangeReader, *, block_size: int = SCAN_BLOCK_SIZE) -> McapSummary:
    """Summarize by streaming the file from its start (see the module docstring).

    Raises `NotMcapFile` when the file does not start with the MCAP magic, `FormatError`
    when a record is malformed. Blocks stream through; memory stays near `block_size`
    times the reader's parallelism plus one chunk.
    """
    for decompress_all in (False, True):
        stream = BlockStream(reader.iter_blocks(0, reader.size, block_size=block_size))
        try:
            magic = stream.read(len(MAGIC))
        except BlockStream.Ended:
            magic = b""
        if magic != MAGIC:
            raise NotMcapFile(f"{reader.name} is not an MCAP file (no MCAP magic at its start)", key=reader.name)
        state = _State()
        try:
            truncated = _walk(stream, state, decompress_all=decompress_all)
        except (struct.error, ValueError, KeyError, zstandard.ZstdError, RuntimeError) as exc:
            if isinstance(exc, FormatError):
                raise
            raise FormatError(f"{reader.name}: malformed MCAP record: {exc}", key=reader.name) from exc
        # a channel whose schema was defined in a chunk we did not open: open them all (rare)
        if decompress_all or all(c.schema_id == 0 or c.schema_id in state.schemas for c in state.channels.values()):
            break
    # data complete but no Footer + magic at the end: the file was still cut short
    trailer = reader.pread(reader.size - TRAILER_SIZE, reader.size) if reader.size >= TRAILER_SIZE else b""
    truncated = truncated or parse_trailer(trailer) is None
    return McapSummary(
        source="scan",
        truncated=truncated,
        size=reader.size,
        etag=reader.etag,
        message_count=sum(state.counts.values()),
        start_time=state.start,
        end_time=state.end,
        channel_message_counts=dict(sorted(state.counts.items())),
        topics=topics_of(state.channels, state.schemas, state.counts),
        schemas=tuple(state.schemas[k] for k in sorted(state.schemas)),
        channels=tuple(state.channels[k] for k in sorted(state.channels)),
        chunks=tuple(state.chunks),
        attachments=tuple(state.attachments),
        metadata=tuple(state.metadata),
        profile=state.profile,
        library=state.library,
    )


__all__ = ["SCAN_BLOCK_SIZE", "scan_mcap"]
