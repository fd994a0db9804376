"""The `topics` product: each MCAP recording as one Parquet dataset per topic.

Every message becomes a row: `log_time`, `publish_time` (uint64 ns), `sequence` (uint32),
`channel_id` (uint16), `data` (the raw bytes); for JSON-encoded channels with `decode` on,
also one column per top-level field. A topic's decoded columns and their types are fixed
once, from the channel's JSON Schema (`properties`) when it has one, else from the first
message: integers → int64, numbers → float64, strings, booleans; any other value (objects,
arrays, null) → its JSON text. A value that does not fit its column is null there (the raw
bytes keep it); fields first seen later are left to the raw bytes.

Streaming with bounded memory: messages are read in file order (the mcap library's
NonSeekingReader, chunk CRCs checked) through a buffered stream; a topic's rows are written
as one Parquet file when it reaches `chunk_rows` rows or `chunk_bytes`, and the largest
topic is written early whenever all buffered topics together reach `buffer_bytes`. Each
input's bytes are CRC32C'd as they are read and compared with the catalog's checksum, so a
product is derived from exactly the bytes its lineage names.
"""

from __future__ import annotations

import io
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO
from urllib.parse import quote

import pyarrow as pa
import pyarrow.parquet as pq
from mcap.exceptions import McapError
from mcap.reader import NonSeekingReader

from storage_core.catalog.products import InputObject
from storage_core.checksums import crc32c
from storage_core.errors import IntegrityError, NotMcapFile, one_line
from storage_core.products.lineage import OptionSpec, ProductDefinition
from storage_core.products.publish import AttemptWriter

MiB = 1024 * 1024
READ_BUFFER = 1 * MiB

TOPICS = ProductDefinition(
    name="topics",
    code_version="1",
    code_files=(Path(__file__),),
    options=(
        OptionSpec("decode", True, tracked=True, description="decode JSON channels into columns"),
        OptionSpec("compression", "zstd", tracked=False, choices=("zstd", "lz4", "snappy", "none")),
        OptionSpec("chunk_rows", 250_000, tracked=False, description="rows per Parquet file (at most)"),
    ),
    input_modality="mcap",
)

BASE_SCHEMA = pa.schema([
    ("log_time", pa.uint64()),
    ("publish_time", pa.uint64()),
    ("sequence", pa.uint32()),
    ("channel_id", pa.uint16()),
    ("data", pa.binary()),
])
_JSON_TEXT = pa.string()  # the type of a decoded field that is not a scalar
_SCHEMA_TYPES = {"integer": pa.int64(), "number": pa.float64(), "string": pa.string(), "boolean": pa.bool_()}
_INT64 = (-(2**63), 2**63 - 1)


def dataset_name(topic: str) -> str:
    """A topic as one key segment: percent-encoded (`/imu/data` → `%2Fimu%2Fdata`), so
    no topic's folder nests inside another's."""
    if not topic:
        return "(empty)"  # quote() never makes parentheses, so no topic collides with it
    name = quote(topic, safe="")
    return name.replace(".", "%2E") if name in (".", "..") else name


def _value_type(value: Any) -> pa.DataType:
    if isinstance(value, bool):
        return pa.bool_()
    if isinstance(value, int):
        return pa.int64()
    if isinstance(value, float):
        return pa.float64()
    if isinstance(value, str):
        return pa.string()
    return _JSON_TEXT


def _schema_fields(schema_data: bytes) -> list[tuple[str, pa.DataType]] | None:
    try:
        document = json.loads(schema_data or b"null")
    except (ValueError, UnicodeDecodeError):
        return None
    properties = document.get("properties") if isinstance(document, dict) else None
    if not isinstance(properties, dict) or not properties:
        return None
    fields = []
    for name, spec in properties.items():
        kind = spec.get("type") if isinstance(spec, dict) else None
        if isinstance(kind, list):
            kinds = [k for k in kind if k != "null"]
            kind = kinds[0] if len(kinds) == 1 else None
        fields.append((name, _SCHEMA_TYPES.get(kind, _JSON_TEXT)))
    return fields


def _fit(value: Any, kind: pa.DataType) -> Any:
    """`value` as a cell of a `kind` column, or None when it does not fit."""
    if value is None:
        return None
    if kind == pa.bool_():
        return value if isinstance(value, bool) else None
    if kind == pa.int64():
        ok = isinstance(value, int) and not isinstance(value, bool) and _INT64[0] <= value <= _INT64[1]
        return value if ok else None
    if kind == pa.float64():
        return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None
    if kind == pa.string() and isinstance(value, str):
        return value
    return json.dumps(value, sort_keys=True, ensure_ascii=False)


@dataclass
class _TopicBuffer:
    dataset: str
    decoded: list[tuple[str, str, pa.DataType]] | None  # (field, column, type); None: not decoded
    columns: dict[str, list[Any]] = field(default_factory=dict)
    rows: int = 0
    bytes: int = 0
    parts: int = 0

    def __post_init__(self) -> None:
        self.schema = pa.schema(list(BASE_SCHEMA) + [(column, kind) for _, column, kind in self.decoded or ()])
        self.clear()

    def clear(self) -> None:
        self.columns = {name: [] for name in self.schema.names}
        self.rows = self.bytes = 0

    def add(self, message: Any, channel_id: int) -> None:
        c = self.columns
        c["log_time"].append(message.log_time)
        c["publish_time"].append(message.publish_time)
        c["sequence"].append(message.sequence)
        c["channel_id"].append(channel_id)
        c["data"].append(message.data)
        if self.decoded:
            try:
                value = json.loads(message.data)
            except (ValueError, UnicodeDecodeError):
                value = None
            if not isinstance(value, dict):
                value = {}
            for name, column, kind in self.decoded:
                c[column].append(_fit(value.get(name), kind))
        self.rows += 1
        self.bytes += len(message.data) + 32

    def table(self) -> pa.Table:
        return pa.table({name: pa.array(values, type=self.schema.field(name).type) for name, values in self.columns.items()},
                        schema=self.schema)


def _columns_for(fields: list[tuple[str, pa.DataType]]) -> list[tuple[str, str, pa.DataType]]:
    taken = set(BASE_SCHEMA.names)
    out = []
    for name, kind in fields:
        column = name if name not in taken else f"json.{name}"
        taken.add(column)
        out.append((name, column, kind))
    return out


class _Raw(io.RawIOBase):
    """A store's streaming body as a raw stream (for io.BufferedReader), CRC32C'd as read."""

    def __init__(self, body: BinaryIO) -> None:
        self.body = body
        self.crc = 0
        self.size = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview) -> int:
        data = self.body.read(len(buffer))
        n = len(data)
        buffer[:n] = data
        self.crc = crc32c(data, self.crc)
        self.size += n
        return n


@dataclass(frozen=True)
class TopicsResult:
    messages: int
    topics: int
    files: int
    input_bytes: int


class TopicsWriter:
    """Turns MCAP inputs into per-topic Parquet files through an AttemptWriter."""

    def __init__(self, writer: AttemptWriter, *, decode: bool, compression: str, chunk_rows: int,
                 chunk_bytes: int = 32 * MiB, buffer_bytes: int = 128 * MiB,
                 on_chunk: Callable[[], None] | None = None) -> None:
        self.writer = writer
        self.decode = decode
        self.compression = None if compression == "none" else compression
        self.chunk_rows = chunk_rows
        self.chunk_bytes = chunk_bytes
        self.buffer_bytes = buffer_bytes
        self.on_chunk = on_chunk
        self.topics: dict[str, _TopicBuffer] = {}
        self.buffered = 0
        self.messages = 0
        self.files = 0

    def _buffer_for(self, schema: Any, channel: Any, message: Any) -> _TopicBuffer:
        buffer = self.topics.get(channel.topic)
        if buffer is None:
            decoded = None
            if self.decode and channel.message_encoding == "json":
                fields = _schema_fields(schema.data) if schema is not None and schema.encoding == "jsonschema" else None
                if fields is None:
                    try:
                        first = json.loads(message.data)
                    except (ValueError, UnicodeDecodeError):
                        first = None
                    fields = [(k, _value_type(v)) for k, v in first.items()] if isinstance(first, dict) else []
                decoded = _columns_for(fields)
            buffer = self.topics[channel.topic] = _TopicBuffer(dataset_name(channel.topic), decoded)
        return buffer

    def _flush(self, buffer: _TopicBuffer) -> None:
        if not buffer.rows:
            return
        table = buffer.table()
        out = io.BytesIO()
        pq.write_table(table, out, compression=self.compression)
        schema = tuple((f.name, str(f.type)) for f in table.schema)
        self.writer.put_file(f"{buffer.dataset}/part-{buffer.parts:05d}.parquet", out.getvalue(),
                             dataset=buffer.dataset, rows=buffer.rows, schema=schema)
        self.buffered -= buffer.bytes
        buffer.parts += 1
        buffer.clear()
        self.files += 1
        if self.on_chunk is not None:
            self.on_chunk()

    def add_input(self, body: BinaryIO, source: InputObject) -> None:
        """Read one MCAP input to its end; IntegrityError when its bytes are not the ones
        the catalog recorded, NotMcapFile when they are not MCAP."""
        raw = _Raw(body)
        stream = io.BufferedReader(raw, READ_BUFFER)
        try:
            for schema, channel, message in NonSeekingReader(stream, validate_crcs=True).iter_messages(log_time_order=False):
                buffer = self._buffer_for(schema, channel, message)
                before = buffer.bytes
                buffer.add(message, channel.id)
                self.buffered += buffer.bytes - before
                self.messages += 1
                if buffer.rows >= self.chunk_rows or buffer.bytes >= self.chunk_bytes:
                    self._flush(buffer)
                elif self.buffered >= self.buffer_bytes:
                    self._flush(max(self.topics.values(), key=lambda b: b.bytes))
            while stream.read(READ_BUFFER):  # the reader stops at the footer; the CRC covers every byte
                pass
        except (McapError, EOFError, ValueError) as exc:
            raise NotMcapFile(f"{source.uri}: not a readable MCAP file ({one_line(exc)})") from exc
        if (raw.size, raw.crc) != (source.size, source.crc32c):
            raise IntegrityError(f"{source.uri}: its bytes are not the ones catalogued (size or CRC32C differs)")

    def finish(self) -> TopicsResult:
        for buffer in self.topics.values():
            self._flush(buffer)
        return TopicsResult(messages=self.messages, topics=len(self.topics), files=self.files, input_bytes=0)


def write_topics(
    inputs: Sequence[InputObject],
    open_input: Callable[[InputObject], BinaryIO],
    writer: AttemptWriter,
    *,
    decode: bool,
    compression: str,
    chunk_rows: int,
    on_chunk: Callable[[], None] | None = None,
    chunk_bytes: int = 32 * MiB,
    buffer_bytes: int = 128 * MiB,
) -> TopicsResult:
    """Every message of `inputs` (in order) into `writer`'s per-topic Parquet files."""
    topics = TopicsWriter(writer, decode=decode, compression=compression, chunk_rows=chunk_rows,
                          chunk_bytes=chunk_bytes, buffer_bytes=buffer_bytes, on_chunk=on_chunk)
    input_bytes = 0
    for source in inputs:
        body = open_input(source)
        try:
            topics.add_input(body, source)
        finally:
            body.close()
        input_bytes += source.size
    result = topics.finish()
    return TopicsResult(result.messages, result.topics, result.files, input_bytes)


__all__ = ["BASE_SCHEMA", "TOPICS", "TopicsResult", "dataset_name", "write_topics"]
