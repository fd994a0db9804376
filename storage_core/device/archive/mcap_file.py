"""An MCAP file written chunk by chunk, with the Message records packed by Ferry.

    magic ─> Header ─> { Metadata | Chunk (Channel, Message...) ─> MessageIndex... } ─> DataEnd
      ─> summary (Channels, Statistics, ChunkIndexes, MetadataIndexes, SummaryOffsets) ─> Footer ─> magic

The same layout as `mcap.writer.Writer` (chunk CRCs, data-section CRC, summary CRC, one
MessageIndex per channel after each chunk), and every record but three is serialized by
the `mcap` library's own record classes. Messages, MessageIndexes and the head of each
Chunk are packed here, one struct call per record: the library's `add_message` costs about
60 % of a 256-byte record's write (profiled: one BytesIO write and seek per field), and its
Chunk record copies the compressed chunk twice (into a BytesIO, out of it). Here a payload
is copied once, into the open chunk, a buffer rewound rather than replaced after each chunk
(a fresh bytearray per chunk cost a page fault per 4 KiB: 2.8x the `mcap` writer's page
faults at 64 KiB records, +0.5 s of system time per 512 MiB), and the compressed chunk goes
to the file as it is. Their layout is the spec's (Message: opcode 0x05, u64 length, u16
channel, u32 sequence, u64 log time, u64 publish time, data; MessageIndex: opcode 0x07, u64
length, u16 channel, u32 byte length, (u64 time, u64 offset)...; Chunk: opcode 0x06, u64
length, u64 start and end time, u64 uncompressed size, u32 uncompressed CRC, u32-prefixed
compression, u64 records length, records). Every test reads what this writes with the
official reader.

Nothing is written until a chunk is (`write_chunk`) or a Metadata record is added; the
caller decides when a chunk ends and when to fsync.
"""

from __future__ import annotations

import struct
from io import BytesIO
from typing import BinaryIO

import lz4.frame
import zstandard
from mcap.data_stream import RecordBuilder
from mcap.opcode import Opcode
from mcap.records import (
    Channel,
    ChunkIndex,
    DataEnd,
    Footer,
    Header,
    Metadata,
    MetadataIndex,
    Statistics,
    SummaryOffset,
)

from storage_core.checksums import crc32

MAGIC = b"\x89MCAP0\r\n"
COMPRESSIONS = ("zstd", "lz4", "none")
_MESSAGE = struct.Struct("<BQHIQQ")  # opcode, length, channel, sequence, log time, publish time
_MESSAGE_INDEX_HEAD = struct.Struct("<BQHI")  # opcode, length, channel, entries' byte length
_MESSAGE_FIELDS = _MESSAGE.size - 9  # what a Message record holds beyond its data
_CHUNK_HEAD = struct.Struct("<BQQQQI")  # opcode, length, start and end time, uncompressed size and CRC
_NO_TIME = (2**64, -1)


class McapFile:
    """Writes one MCAP file to `file` (a binary file object positioned at 0). `chunk_size`:
    about the size the caller lets a chunk grow to (its buffer is kept that large)."""

    def __init__(self, file: BinaryIO, *, compression: str, profile: str, library: str, chunk_size: int = 1 << 20) -> None:
        if compression not in COMPRESSIONS:
            raise ValueError(f"compression {compression!r} is not one of {COMPRESSIONS}")
        self.file = file
        self.compression = compression
        self._compress = {"zstd": zstandard.ZstdCompressor().compress, "lz4": lz4.frame.compress,
                          "none": lambda data: data}[compression]  # fmt: skip
        name = b"" if compression == "none" else compression.encode()
        self._compression_field = struct.pack("<I", len(name)) + name
        self.position = 0  # bytes handed to `file`
        self._crc = 0  # of the data section so far
        self._channels: dict[int, Channel] = {}
        self._keep = 2 * chunk_size + (64 << 10)  # a buffer grown past this is given back after its chunk
        # the open chunk: its first `pending` bytes; rewound, not replaced, after each chunk
        self._chunk = BytesIO()
        self._index: dict[int, list[int]] = {}  # channel -> flat [time, offset, time, offset, ...]
        self._start, self._end = _NO_TIME  # the open chunk's message time range
        self._chunk_indexes: list[ChunkIndex] = []
        self._metadata_indexes: list[MetadataIndex] = []
        self._stats = Statistics(attachment_count=0, channel_count=0, channel_message_counts={}, chunk_count=0,
                                 message_count=0, message_end_time=0, message_start_time=0, metadata_count=0,
                                 schema_count=0)  # fmt: skip
        self._write(MAGIC)
        self._write_records(Header(profile=profile, library=library))

    @property
    def pending(self) -> int:
        """Bytes in the open chunk (uncompressed)."""
        return self._chunk.tell()

    def _write(self, data: bytes | bytearray) -> None:
        self._crc = crc32(data, self._crc)
        self.file.write(data)
        self.position += len(data)

    def _write_records(self, *records) -> None:
        builder = RecordBuilder()
        for record in records:
            record.write(builder)
        self._write(builder.end())

    def add_metadata(self, name: str, values: dict[str, str]) -> None:
        """A Metadata record, written now (outside the chunk)."""
        builder = RecordBuilder()
        Metadata(name=name, metadata=values).write(builder)
        data = builder.end()
        self._metadata_indexes.append(MetadataIndex(offset=self.position, length=len(data), name=name))
        self._stats.metadata_count += 1
        self._write(data)

    def register_channel(self, topic: str, message_encoding: str) -> int:
        """A new channel (no schema), announced in the open chunk; returns its id."""
        channel = Channel(id=len(self._channels) + 1, topic=topic, message_encoding=message_encoding, schema_id=0, metadata={})
        self._channels[channel.id] = channel
        self._stats.channel_count += 1
        builder = RecordBuilder()
        channel.write(builder)
        self._chunk.write(builder.end())
        return channel.id

    def add_message(self, channel: int, log_time: int, sequence: int, head: bytes, payload: bytes = b"") -> None:
        """One Message record into the open chunk, its data `head` then `payload` (publish time
        = log time; `sequence` < 2**32)."""
        index = self._index.get(channel)
        if index is None:
            index = self._index[channel] = []
        if log_time < self._start:
            self._start = log_time
        if log_time > self._end:
            self._end = log_time
        chunk = self._chunk
        index += (log_time, chunk.tell())
        chunk.write(_MESSAGE.pack(0x05, _MESSAGE_FIELDS + len(head) + len(payload), channel, sequence, log_time, log_time))
        chunk.write(head)
        chunk.write(payload)

    def write_chunk(self) -> None:
        """Write the open chunk and its message indexes to the file (and flush it to the OS);
        nothing when it holds no message."""
        entries = {channel: flat for channel, flat in self._index.items() if flat}
        if entries:
            size = self._chunk.tell()
            chunk_start = self.position
            with self._chunk.getbuffer() as whole, whole[:size] as data:  # released before the buffer is reused
                compressed = self._compress(data)  # `data` itself without compression
                field = self._compression_field
                head = _CHUNK_HEAD.pack(0x06, _CHUNK_HEAD.size - 9 + len(field) + 8 + len(compressed), self._start,
                                        self._end, size, crc32(data)) + field + struct.pack("<Q", len(compressed))  # fmt: skip
                self._write(head)
                self._write(compressed)
                compressed_size, held = len(compressed), len(whole)
                del compressed
            offsets, indexes = {}, []
            position = self.position
            for channel, flat in entries.items():
                offsets[channel] = position
                body = struct.pack(f"<{len(flat)}Q", *flat)
                record = _MESSAGE_INDEX_HEAD.pack(0x07, 6 + len(body), channel, len(body)) + body
                indexes.append(record)
                position += len(record)
                counts = self._stats.channel_message_counts
                counts[channel] = counts.get(channel, 0) + len(flat) // 2
                self._stats.message_count += len(flat) // 2
            index_bytes = b"".join(indexes)
            self._write(index_bytes)
            stats = self._stats
            stats.message_start_time = self._start if not stats.chunk_count else min(stats.message_start_time, self._start)
            stats.message_end_time = max(stats.message_end_time, self._end)
            stats.chunk_count += 1
            self._chunk_indexes.append(ChunkIndex(
                message_start_time=self._start, message_end_time=self._end, chunk_start_offset=chunk_start,
                chunk_length=len(head) + compressed_size, message_index_offsets=offsets,
                message_index_length=len(index_bytes), compression=field[4:].decode(), compressed_size=compressed_size,
                uncompressed_size=size,
            ))  # fmt: skip
            self._chunk.seek(0)
            if held > self._keep:  # after an outsized record: bounded memory
                self._chunk = BytesIO()
            self._index = {}
            self._start, self._end = _NO_TIME
        self.file.flush()

    def finish(self) -> None:
        """The open chunk, DataEnd, the summary and the footer; flushed, not fsynced."""
        self.write_chunk()  # a chunk holding only Channel records is dropped: the summary repeats them
        self._write_records(DataEnd(data_section_crc=self._crc))
        summary_start = self.position
        builder = RecordBuilder()
        groups = []
        for opcode, records in ((Opcode.CHANNEL, list(self._channels.values())), (Opcode.STATISTICS, [self._stats]),
                                (Opcode.CHUNK_INDEX, self._chunk_indexes), (Opcode.METADATA_INDEX, self._metadata_indexes)):  # fmt: skip
            start = builder.count
            for record in records:
                record.write(builder)
            groups.append(SummaryOffset(group_opcode=opcode, group_start=summary_start + start, group_length=builder.count - start))
        offsets_start = summary_start + builder.count
        for group in groups:
            group.write(builder)
        summary = builder.end()
        crc = crc32(struct.pack("<BQQQ", Opcode.FOOTER, 20, summary_start, offsets_start), crc32(summary))
        builder = RecordBuilder()
        Footer(summary_start=summary_start, summary_offset_start=offsets_start, summary_crc=crc).write(builder)
        self.file.write(summary + builder.end() + MAGIC)
        self.position += len(summary) + 20 + 9 + len(MAGIC)
        self.file.flush()


__all__ = ["COMPRESSIONS", "McapFile"]
