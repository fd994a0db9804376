"""MCAP byte layout: the few records Ferry decodes itself, and conversions from `mcap`'s records.

Layout facts used here (MCAP spec): every record is opcode (u8) + length (u64 LE) + body;
strings are u32 length + UTF-8; the file ends with Footer (29 bytes) + magic (8 bytes).
A record's `length` can exceed the fields it holds (padding); readers skip to the length.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import dataclass

from io import BytesIO

import lz4.frame
import zstandard
from mcap.data_stream import ReadDataStream
from mcap.records import AttachmentIndex, Channel, ChunkIndex, MetadataIndex, Schema

from storage_core.errors import FormatError
from storage_core.formats.mcap_model import AttachmentInfo, ChannelInfo, ChunkInfo, MetadataInfo, SchemaInfo

MAGIC = b"\x89MCAP0\r\n"
RECORD_HEAD = struct.Struct("<BQ")  # opcode, length
FOOTER = struct.Struct("<BQQQI")  # opcode, length, summary_start, summary_offset_start, summary_crc
FOOTER_SIZE = FOOTER.size  # 29
TRAILER_SIZE = FOOTER_SIZE + len(MAGIC)  # 37
FOOTER_CRC_SPAN = 1 + 8 + 8 + 8  # footer bytes covered by summary_crc (all but the CRC itself)

OP_HEADER, OP_FOOTER, OP_SCHEMA, OP_CHANNEL, OP_MESSAGE = 0x01, 0x02, 0x03, 0x04, 0x05
OP_CHUNK, OP_MESSAGE_INDEX, OP_ATTACHMENT, OP_METADATA, OP_DATA_END = 0x06, 0x07, 0x09, 0x0C, 0x0F
OP_CHUNK_INDEX = 0x08
CHUNK_INDEX_HEAD = struct.Struct("<QQQQI")  # start time, end time, chunk offset, chunk length, map bytes
INDEX_ENTRY = struct.Struct("<HQ")  # channel id, MessageIndex offset
MESSAGE_HEAD = struct.Struct("<HIQQ")  # channel_id, sequence, log_time, publish_time
CHUNK_HEAD = struct.Struct("<QQQI")  # start time, end time, uncompressed size, uncompressed crc


@dataclass(frozen=True)
class Footer:
    summary_start: int
    summary_offset_start: int
    summary_crc: int


def parse_trailer(trailer: bytes) -> Footer | None:
    """The Footer from the last 37 bytes, or None when they are not Footer + magic."""
    if len(trailer) != TRAILER_SIZE or trailer[FOOTER_SIZE:] != MAGIC:
        return None
    opcode, length, summary_start, summary_offset_start, crc = FOOTER.unpack(trailer[:FOOTER_SIZE])
    if opcode != OP_FOOTER or length != 20:
        return None
    return Footer(summary_start, summary_offset_start, crc)


def iter_records(data: bytes | memoryview) -> Iterator[tuple[int, memoryview]]:
    """(opcode, body) of each record packed back to back in `data`, in order (a chunk's
    records, the MessageIndex records after a chunk).

    The walk moves an offset over one memoryview, so it costs the number of records, not
    their bytes; a body is a view into `data` (copy what must outlive it). It stops when
    fewer bytes than a record head remain; a body cut short by the end of `data` is
    yielded short, as slicing would.
    """
    view = memoryview(data)
    offset, size = 0, len(view)
    while offset + RECORD_HEAD.size <= size:
        opcode, length = RECORD_HEAD.unpack_from(view, offset)
        body = offset + RECORD_HEAD.size
        yield opcode, view[body : body + length]
        offset = body + length


def parse_chunk_index(body: bytes | memoryview) -> ChunkIndex:
    """A ChunkIndex record's body, parsed with a few `struct` calls: the summary of a large
    file holds thousands of them, and the `mcap` library's field-by-field reader spent
    most of a summary's time on them (about 25 ms for 2,500). Extra trailing bytes, which
    later versions of the format may add, are ignored as the library does."""
    start, end, chunk_start, chunk_length, map_bytes = CHUNK_INDEX_HEAD.unpack_from(body, 0)
    map_start = CHUNK_INDEX_HEAD.size
    map_end = map_start + map_bytes
    if map_bytes % INDEX_ENTRY.size or map_end > len(body):
        raise FormatError(f"MCAP ChunkIndex with a {map_bytes}-byte message index map")
    offsets = dict(INDEX_ENTRY.iter_unpack(body[map_start:map_end]))
    (index_length,) = struct.unpack_from("<Q", body, map_end)
    compression, position = read_string(body, map_end + 8)
    compressed_size, uncompressed_size = struct.unpack_from("<QQ", body, position)
    return ChunkIndex(
        message_start_time=start,
        message_end_time=end,
        chunk_start_offset=chunk_start,
        chunk_length=chunk_length,
        message_index_offsets=offsets,
        message_index_length=index_length,
        compression=compression,
        compressed_size=compressed_size,
        uncompressed_size=uncompressed_size,
    )


def read_string(body: bytes | memoryview, offset: int) -> tuple[str, int]:
    (length,) = struct.unpack_from("<I", body, offset)
    start = offset + 4
    if start + length > len(body):
        raise FormatError("MCAP string runs past its record")
    return bytes(body[start : start + length]).decode("utf-8", "replace"), start + length


@dataclass(frozen=True)
class ChunkHead:
    message_start_time: int
    message_end_time: int
    uncompressed_size: int
    compression: str
    records_offset: int  # within the chunk body
    records_length: int


def parse_chunk_head(body: bytes | memoryview) -> ChunkHead:
    start, end, uncompressed, _crc = CHUNK_HEAD.unpack_from(body, 0)
    compression, offset = read_string(body, CHUNK_HEAD.size)
    (records_length,) = struct.unpack_from("<Q", body, offset)
    offset += 8
    if offset + records_length > len(body):
        raise FormatError("MCAP chunk records run past the chunk")
    return ChunkHead(start, end, uncompressed, compression, offset, records_length)


def decompress_records(compression: str, data: bytes | memoryview, size: int) -> bytes | memoryview:
    """A chunk's records, decompressed to `size` bytes (`data` itself when uncompressed)."""
    if compression == "":
        return data
    if compression == "zstd":
        return zstandard.ZstdDecompressor().decompress(data, max_output_size=size)
    if compression == "lz4":
        return lz4.frame.decompress(data)
    raise FormatError(f"MCAP chunk compressed with unsupported {compression!r}")


def message_index_count(body: bytes | memoryview) -> tuple[int, int]:
    """(channel_id, number of messages) of a MessageIndex record body."""
    channel_id, records_length = struct.unpack_from("<HI", body, 0)
    return channel_id, records_length // 16


def schema_info(record: Schema) -> SchemaInfo:
    return SchemaInfo(record.id, record.name, record.encoding, bytes(record.data))


def channel_info(record: Channel) -> ChannelInfo:
    return ChannelInfo(record.id, record.topic, record.message_encoding, record.schema_id, dict(record.metadata))


def learn_definition(opcode: int, body: bytes | memoryview, schemas: dict[int, SchemaInfo],
                     channels: dict[int, ChannelInfo]) -> bool:
    """Take a Schema or Channel record into `schemas` / `channels` (schema id 0 means "no
    schema" and is not kept); False for any other record."""
    if opcode == OP_SCHEMA:
        schema = schema_info(Schema.read(ReadDataStream(BytesIO(body))))
        if schema.id != 0:
            schemas[schema.id] = schema
        return True
    if opcode == OP_CHANNEL:
        channel = channel_info(Channel.read(ReadDataStream(BytesIO(body))))
        channels[channel.id] = channel
        return True
    return False


def chunk_info(record: ChunkIndex) -> ChunkInfo:
    return ChunkInfo(
        start_offset=record.chunk_start_offset,
        length=record.chunk_length,
        message_start_time=record.message_start_time,
        message_end_time=record.message_end_time,
        compression=record.compression,
        compressed_size=record.compressed_size,
        uncompressed_size=record.uncompressed_size,
        message_index_offsets=dict(record.message_index_offsets),
        message_index_length=record.message_index_length,
    )


def attachment_info(record: AttachmentIndex) -> AttachmentInfo:
    return AttachmentInfo(
        record.offset, record.length, record.log_time, record.create_time, record.data_size, record.name, record.media_type
    )


def metadata_info(record: MetadataIndex) -> MetadataInfo:
    return MetadataInfo(record.offset, record.length, record.name)


__all__ = [
    "CHUNK_HEAD",
    "FOOTER_CRC_SPAN",
    "FOOTER_SIZE",
    "MAGIC",
    "MESSAGE_HEAD",
    "RECORD_HEAD",
    "TRAILER_SIZE",
    "ChunkHead",
    "Footer",
    "attachment_info",
    "channel_info",
    "chunk_info",
    "decompress_records",
    "iter_records",
    "learn_definition",
    "message_index_count",
    "metadata_info",
    "parse_chunk_head",
    "parse_trailer",
    "read_string",
    "schema_info",
]
