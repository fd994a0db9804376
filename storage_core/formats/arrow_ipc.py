"""How many bytes an Arrow IPC stream takes once decoded, read from its messages' metadata
before anything is decompressed.

A compressed IPC buffer (zstd, lz4) starts with its decompressed length, and Arrow's reader
allocates that much and believes it: 1 MB of zstd can declare gigabytes. A service that
decodes bodies a client sent checks this sum first (`decoded_bytes`) and refuses what is over
its bound, so a hostile body costs a refusal, not the process's memory.

pyarrow frames the messages (pa.ipc.MessageReader) but does not expose a record batch's
buffer list, so its flatbuffer is walked here, only as far as Arrow's Message.fbs puts it:

    Message          { version: short, header_type: ubyte, header: table, bodyLength: long, ... }
    RecordBatch      { length: long, nodes: [FieldNode], buffers: [Buffer], compression: table, ... }
    DictionaryBatch  { id: long, data: RecordBatch, isDelta: bool }
    Buffer (struct)  { offset: long, length: long }   within the message body

Anything that does not walk cleanly is a ValueError: the caller refuses the body.
"""

from __future__ import annotations

import struct
from typing import Any

from storage_core.errors import one_line

_U16 = struct.Struct("<H")
_I32 = struct.Struct("<i")
_U32 = struct.Struct("<I")
_I64 = struct.Struct("<q")
_BUFFER = struct.Struct("<qq")

_MESSAGE_HEADER = 2  # Message.header (its type is field 1)
_RECORD_BATCH_BUFFERS = 2
_RECORD_BATCH_COMPRESSION = 3
_DICTIONARY_BATCH_DATA = 1
_UNCOMPRESSED = -1  # a compressed body's buffer prefix saying "stored as is"


class _Flat:
    """Bounds-checked reads of one flatbuffer."""

    def __init__(self, data: bytes) -> None:
        self.data = data

    def _read(self, fmt: struct.Struct, pos: int) -> Any:
        if pos < 0 or pos + fmt.size > len(self.data):
            raise ValueError(f"flatbuffer read at {pos} outside its {len(self.data)} bytes")
        return fmt.unpack_from(self.data, pos)[0]

    def root(self) -> int:
        return self._read(_U32, 0)

    def field(self, table: int, index: int) -> int | None:
        """Where field `index` of the table at `table` is stored (None: absent, the default)."""
        vtable = table - self._read(_I32, table)
        size = self._read(_U16, vtable)
        slot = 4 + 2 * index
        if slot + 2 > size:
            return None
        offset = self._read(_U16, vtable + slot)
        return table + offset if offset else None

    def table(self, table: int, index: int) -> int | None:
        """The table field `index` of the table at `table` points to."""
        where = self.field(table, index)
        return None if where is None else where + self._read(_U32, where)

    def structs(self, table: int, index: int, fmt: struct.Struct) -> list[tuple[int, ...]]:
        """The vector of structs field `index` holds (empty when absent)."""
        where = self.field(table, index)
        if where is None:
            return []
        start = where + self._read(_U32, where)
        count = self._read(_U32, start)
        if start + 4 + count * fmt.size > len(self.data):
            raise ValueError(f"flatbuffer vector of {count} at {start} outside its {len(self.data)} bytes")
        return [fmt.unpack_from(self.data, start + 4 + i * fmt.size) for i in range(count)]


def _batch_bytes(flat: _Flat, batch: int, body: memoryview) -> int:
    """The decoded size of one RecordBatch table's buffers (their declared lengths)."""
    compressed = flat.field(batch, _RECORD_BATCH_COMPRESSION) is not None
    total = 0
    for offset, length in flat.structs(batch, _RECORD_BATCH_BUFFERS, _BUFFER):
        if offset < 0 or length < 0 or offset + length > len(body):
            raise ValueError(f"buffer [{offset}, +{length}) outside a message body of {len(body)} bytes")
        if not compressed or length == 0:
            total += length
            continue
        if length < _I64.size:
            raise ValueError(f"compressed buffer of {length} bytes has no length prefix")
        declared = _I64.unpack_from(body, offset)[0]
        if declared == _UNCOMPRESSED:
            total += length - _I64.size
        elif declared < 0:
            raise ValueError(f"compressed buffer declares {declared} bytes")
        else:
            total += declared
    return total


def decoded_bytes(data: bytes | memoryview) -> int:
    """The bytes the record and dictionary batches of the IPC stream `data` take once
    decoded, as their metadata declare them; ValueError for a stream this cannot walk."""
    import pyarrow as pa

    total = 0
    try:
        for message in pa.ipc.MessageReader.open_stream(pa.py_buffer(data)):
            if message.type not in ("record batch", "dictionary batch"):
                continue
            flat = _Flat(message.metadata.to_pybytes())
            header = flat.table(flat.root(), _MESSAGE_HEADER)
            if header is None:
                raise ValueError(f"a {message.type} message without its header")
            if message.type == "dictionary batch":
                header = flat.table(header, _DICTIONARY_BATCH_DATA)
                if header is None:
                    raise ValueError("a dictionary batch without its data")
            total += _batch_bytes(flat, header, memoryview(message.body) if message.body is not None else memoryview(b""))
    except (pa.ArrowException, OSError) as exc:
        raise ValueError(f"not an Arrow IPC stream: {one_line(exc)}") from exc
    return total


__all__ = ["decoded_bytes"]
