"""Every message of an MCAP stream, front to back, a chunk at a time as columns per topic.

The `mcap` library's readers build a Python object per record and read each field with its
own call; a derive reads every message, so Ferry walks a decompressed chunk itself: one
`struct` call per record head and one per message head, the payload a slice. Messages come
in file order (within a chunk, per topic, in the order they were written), as the
library's `iter_messages(log_time_order=False)` yields them. Chunk CRCs (CRC32 of the
decompressed records, when the writer set one) are checked. Schema and Channel records are
taken wherever they appear (top level or inside chunks) before the messages after them.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

import zstandard

from storage_core.checksums import crc32
from storage_core.errors import FormatError, NotMcapFile
from storage_core.formats.block_stream import BlockStream
from storage_core.formats.mcap_model import ChannelInfo, SchemaInfo
from storage_core.formats.mcap_records import (
    CHUNK_HEAD,
    MAGIC,
    MESSAGE_HEAD,
    OP_CHANNEL,
    OP_CHUNK,
    OP_DATA_END,
    OP_FOOTER,
    OP_MESSAGE,
    OP_SCHEMA,
    RECORD_HEAD,
    decompress_records,
    learn_definition,
    parse_chunk_head,
)

TOP_LEVEL_BATCH = 10_000  # messages outside chunks (unchunked files) are handed on in batches of this many


@dataclass
class TopicMessages:
    """One topic's messages from one chunk (or run of top-level messages), as columns."""

    channel_id: list[int] = field(default_factory=list)
    log_time: list[int] = field(default_factory=list)
    publish_time: list[int] = field(default_factory=list)
    sequence: list[int] = field(default_factory=list)
    data: list[bytes] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.data)


class McapMessages:
    """Reads an MCAP stream (its blocks) to its end; `batches()` yields, per chunk, the
    messages of each topic (by topic name). `schemas` and `channels` hold every record seen so far, so a
    batch's channel ids are always known. FormatError (NotMcapFile without the magic) when
    the bytes are not a readable MCAP file; the blocks are read to their end either way
    only when the data section ends well (DataEnd or Footer)."""

    def __init__(self, blocks: Iterator[bytes], *, name: str) -> None:
        self.stream = BlockStream(blocks)
        self.name = name
        self.schemas: dict[int, SchemaInfo] = {}
        self.channels: dict[int, ChannelInfo] = {}

    def batches(self) -> Iterator[dict[str, TopicMessages]]:
        stream = self.stream
        try:
            if stream.read(len(MAGIC)) != MAGIC:
                raise NotMcapFile(f"{self.name} is not an MCAP file (no MCAP magic at its start)", key=self.name)
            pending: dict[str, TopicMessages] = {}  # top-level messages, not yet handed on
            while True:
                opcode, length = RECORD_HEAD.unpack(stream.read(RECORD_HEAD.size))
                if opcode == OP_CHUNK:
                    if pending:
                        yield pending
                        pending = {}
                    batch = self._chunk(stream.read(length))
                    if batch:
                        yield batch
                elif opcode in (OP_MESSAGE, OP_SCHEMA, OP_CHANNEL):
                    self._record(opcode, stream.read(length), pending)
                    if opcode == OP_MESSAGE and sum(map(len, pending.values())) >= TOP_LEVEL_BATCH:
                        yield pending
                        pending = {}
                elif opcode in (OP_DATA_END, OP_FOOTER):
                    break
                else:
                    stream.skip(length)  # message indexes, attachments, metadata, summary records
            if pending:
                yield pending
        except BlockStream.Ended:
            raise FormatError(f"{self.name}: the MCAP data section ends early (truncated)", key=self.name) from None
        except (ValueError, KeyError, UnicodeDecodeError, zstandard.ZstdError, RuntimeError) as exc:  # struct.error: a ValueError; lz4: RuntimeError
            if isinstance(exc, FormatError):
                raise
            raise FormatError(f"{self.name}: malformed MCAP record: {exc}", key=self.name) from exc
        stream.drain()

    def _chunk(self, body: bytes) -> dict[str, TopicMessages]:
        head = parse_chunk_head(body)
        (expected_crc,) = CHUNK_HEAD.unpack_from(body, 0)[3:]
        records = memoryview(body)[head.records_offset : head.records_offset + head.records_length]
        data = decompress_records(head.compression, records, head.uncompressed_size)
        if len(data) != head.uncompressed_size:
            raise FormatError(f"{self.name}: an MCAP chunk decompresses to {len(data)} bytes, "
                              f"its header says {head.uncompressed_size}", key=self.name)
        if expected_crc and crc32(data) != expected_crc:
            raise FormatError(f"{self.name}: an MCAP chunk's CRC does not match its records", key=self.name)
        return self._walk(bytes(data))

    def _walk(self, data: bytes) -> dict[str, TopicMessages]:
        """A chunk's records: the hot loop of a derive (one pass, locals only)."""
        batch: dict[str, TopicMessages] = {}
        by_channel: dict[int, TopicMessages] = {}
        head, message_head = RECORD_HEAD.unpack_from, MESSAGE_HEAD.unpack_from
        position, size = 0, len(data)
        while position + RECORD_HEAD.size <= size:
            opcode, length = head(data, position)
            body = position + RECORD_HEAD.size
            position = body + length
            if position > size:
                raise FormatError(f"{self.name}: an MCAP record runs past its chunk", key=self.name)
            if opcode == OP_MESSAGE:
                channel_id, sequence, log_time, publish_time = message_head(data, body)
                messages = by_channel.get(channel_id)
                if messages is None:
                    messages = by_channel[channel_id] = self._topic(batch, channel_id)
                messages.channel_id.append(channel_id)
                messages.log_time.append(log_time)
                messages.publish_time.append(publish_time)
                messages.sequence.append(sequence)
                messages.data.append(data[body + MESSAGE_HEAD.size : position])
            elif opcode in (OP_SCHEMA, OP_CHANNEL):
                self._record(opcode, data[body:position], batch)
        return batch

    def _topic(self, batch: dict[str, TopicMessages], channel_id: int) -> TopicMessages:
        channel = self.channels.get(channel_id)
        if channel is None:
            raise FormatError(f"{self.name}: a message on channel {channel_id}, never defined", key=self.name)
        return batch.setdefault(channel.topic, TopicMessages())

    def _record(self, opcode: int, body: bytes, batch: dict[str, TopicMessages]) -> None:
        if not learn_definition(opcode, body, self.schemas, self.channels):
            self._walk_one(body, batch)

    def _walk_one(self, body: bytes, batch: dict[str, TopicMessages]) -> None:
        channel_id, sequence, log_time, publish_time = MESSAGE_HEAD.unpack_from(body, 0)
        messages = self._topic(batch, channel_id)
        messages.channel_id.append(channel_id)
        messages.log_time.append(log_time)
        messages.publish_time.append(publish_time)
        messages.sequence.append(sequence)
        messages.data.append(body[MESSAGE_HEAD.size :])


__all__ = ["TOP_LEVEL_BATCH", "TopicMessages", "McapMessages"]
