"""Read an archive record by record, checking every chunk, and resynchronise past damage.

    magic ─> Header ─> { Metadata | Chunk | MessageIndex | Channel | Schema } ... ─> DataEnd ─> summary ─> Footer

`scan_archive(path)` walks the data section. A chunk counts as intact only when its
structure holds, it decompresses to its declared size, its CRC32 matches (`mcap`'s reader
does not check it), its records fill it exactly and its time range is its messages'. A
record that fails is damaged: the walk first tries the record's own end (a chunk whose
length field is intact but whose bytes are not), and if what follows is not a record
either, scans forward to the next chunk whose opcode, length, framing and CRC all check
(or a `ferry.*` Metadata record that parses exactly). Everything between is one damaged
range (`start` inclusive, `end` exclusive), reported with the sequence numbers lost
around it. A file cut short (a crash, a torn write) ends in a damaged range to its end.

A closed archive's footer bounds the data section (its summary CRC checked); without a
valid footer the walk goes to the end of the file. Memory: the file is mapped, one chunk
is decompressed at a time.
"""

from __future__ import annotations

import mmap
import re
import struct
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import lz4.frame
import zstandard

from storage_core.checksums import crc32
from storage_core.device.archive.format import (
    ARCHIVE_METADATA,
    CHANNEL_METADATA,
    POSSIBLY_LOST_METADATA,
    RECORD_ENCODING,
    ArchiveRecord,
    PossiblyLost,
    decode_record,
    full_sequence,
)

MAGIC = b"\x89MCAP0\r\n"
HEAD = struct.Struct("<BQ")  # opcode, length
CHUNK_HEAD = struct.Struct("<QQQI")  # start time, end time, uncompressed size, uncompressed crc
MESSAGE_HEAD = struct.Struct("<HIQQ")  # channel, sequence, log time, publish time
FOOTER = struct.Struct("<BQQQI")  # opcode, length, summary start, summary offset start, summary crc
TRAILER = FOOTER.size + len(MAGIC)  # 37
OP_HEADER, OP_FOOTER, OP_SCHEMA, OP_CHANNEL, OP_MESSAGE, OP_CHUNK = 0x01, 0x02, 0x03, 0x04, 0x05, 0x06
OP_MESSAGE_INDEX, OP_ATTACHMENT, OP_METADATA, OP_DATA_END = 0x07, 0x09, 0x0C, 0x0F
_RESYNC = re.compile(rb"[\x06\x0c]")  # what resynchronisation looks for: chunks, ferry metadata
_U16, _U32, _U64 = struct.Struct("<H"), struct.Struct("<I"), struct.Struct("<Q")


class _Bad(Exception):
    """A record that does not hold; the message says why."""


@dataclass(frozen=True)
class DamagedRange:
    """Bytes [start, end) that hold no intact record. Sequences `lost_from`..`lost_to`
    (inclusive) are missing around them; `lost_to` None means up to the end of the file
    (how many is unknown), `lost_from` None means the numbering before is unknown."""

    start: int
    end: int
    reason: str
    lost_from: int | None = None
    lost_to: int | None = None

    @property
    def lost(self) -> int | None:
        """How many records are missing here, when known."""
        if self.lost_from is None or self.lost_to is None:
            return None
        return max(0, self.lost_to - self.lost_from + 1)


@dataclass
class ArchiveScan:
    """What a walk found: the archive's identity, its records' ranges, damage and problems."""

    path: Path
    size: int
    archive_sequence: int | None = None
    first_record_sequence: int | None = None
    records: int = 0
    first_sequence: int | None = None
    last_sequence: int | None = None
    start_time: int | None = None
    end_time: int | None = None
    closed: bool = False  # a valid footer and summary, reached after an intact DataEnd
    intact_end: int = 0  # end of the last intact record of the data section
    damaged: list[DamagedRange] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)  # damage outside records (CRCs of sections)
    topics: dict[str, int] = field(default_factory=dict)  # records per topic
    possibly_lost: list[PossiblyLost] = field(default_factory=list)  # named by a ferry.possibly_lost record

    @property
    def intact(self) -> bool:
        return not self.damaged and not self.problems


@dataclass(frozen=True)
class Message:
    """One intact MCAP message as stored: `wrapped` is its Message.sequence field."""

    sequence: int
    wrapped: int
    topic: str
    encoding: str
    log_time: int
    data: bytes


@dataclass(frozen=True)
class _Chunk:
    start: int
    end: int
    channels: list[tuple[int, str, str]]  # id, topic, message encoding
    messages: list[tuple[int, int, int, bytes]]  # channel, wrapped sequence, log time, data


@dataclass(frozen=True)
class _Metadata:
    start: int
    end: int
    name: str
    values: dict[str, str]


@dataclass(frozen=True)
class _Damage:
    start: int
    end: int
    reason: str


def _string(body: bytes | memoryview, offset: int, limit: int) -> tuple[str, int]:
    if offset + 4 > limit:
        raise _Bad("string cut short")
    (length,) = _U32.unpack_from(body, offset)
    start = offset + 4
    if start + length > limit:
        raise _Bad("string runs past its record")
    try:
        return bytes(body[start : start + length]).decode("utf-8"), start + length
    except UnicodeDecodeError:
        raise _Bad("string is not UTF-8") from None


def _map(body: bytes | memoryview, offset: int, limit: int) -> tuple[dict[str, str], int]:
    if offset + 4 > limit:
        raise _Bad("map cut short")
    (length,) = _U32.unpack_from(body, offset)
    end = offset + 4 + length
    if end > limit:
        raise _Bad("map runs past its record")
    values, offset = {}, offset + 4
    while offset < end:
        key, offset = _string(body, offset, end)
        values[key], offset = _string(body, offset, end)
    return values, end


def _parse_metadata(body: memoryview) -> tuple[str, dict[str, str]]:
    name, offset = _string(body, 0, len(body))
    values, offset = _map(body, offset, len(body))
    if offset != len(body):
        raise _Bad("metadata record with trailing bytes")
    return name, values


def _parse_channel(body: memoryview) -> tuple[int, str, str]:
    if len(body) < 4:
        raise _Bad("channel record cut short")
    (channel,) = _U16.unpack_from(body, 0)
    topic, offset = _string(body, 4, len(body))
    encoding, offset = _string(body, offset, len(body))
    _, offset = _map(body, offset, len(body))
    return channel, topic, encoding


def _decompress(compression: str, data: memoryview, size: int) -> bytes:
    try:
        if compression == "":
            return bytes(data)
        if compression == "zstd":
            return zstandard.ZstdDecompressor().decompress(data, max_output_size=size)
        if compression == "lz4":
            return lz4.frame.decompress(data)
    except (zstandard.ZstdError, RuntimeError, ValueError) as exc:
        raise _Bad(f"chunk does not decompress ({exc})") from None
    raise _Bad(f"chunk compression {compression!r} unknown")


def _parse_chunk(body: memoryview, start: int, end: int) -> _Chunk:
    if len(body) < CHUNK_HEAD.size + 12:
        raise _Bad("chunk record cut short")
    first, last, size, crc = CHUNK_HEAD.unpack_from(body, 0)
    (name_length,) = _U32.unpack_from(body, CHUNK_HEAD.size)
    if name_length > 8:
        raise _Bad("chunk compression name too long")
    compression, offset = _string(body, CHUNK_HEAD.size, len(body))
    if offset + 8 > len(body):
        raise _Bad("chunk record cut short")
    (records_length,) = _U64.unpack_from(body, offset)
    if offset + 8 + records_length != len(body):
        raise _Bad("chunk records do not fill the chunk")
    data = _decompress(compression, body[offset + 8 :], size)
    if len(data) != size:
        raise _Bad(f"chunk decompresses to {len(data)} bytes, not {size}")
    if crc and crc32(data) != crc:
        raise _Bad("chunk CRC mismatch")
    channels, messages = [], []
    view, position = memoryview(data), 0
    while position < size:
        if position + HEAD.size > size:
            raise _Bad("chunk ends inside a record head")
        opcode, length = HEAD.unpack_from(view, position)
        inner = view[position + HEAD.size : position + HEAD.size + length]
        if len(inner) != length:
            raise _Bad("chunk record runs past the chunk")
        if opcode == OP_MESSAGE:
            if length < MESSAGE_HEAD.size:
                raise _Bad("message record cut short")
            channel, sequence, log_time, _ = MESSAGE_HEAD.unpack_from(inner, 0)
            messages.append((channel, sequence, log_time, bytes(inner[MESSAGE_HEAD.size :])))
        elif opcode == OP_CHANNEL:
            channels.append(_parse_channel(inner))
        elif opcode != OP_SCHEMA:
            raise _Bad(f"record 0x{opcode:02x} inside a chunk")
        position += HEAD.size + length
    if messages and (min(m[2] for m in messages), max(m[2] for m in messages)) != (first, last):
        raise _Bad("chunk time range is not its messages'")
    return _Chunk(start, end, channels, messages)


def _parse_at(buf, pos: int, limit: int):
    """The intact record at `pos` (a _Chunk, _Metadata, or ('skip'|'data_end', end)), or _Bad."""
    if pos + HEAD.size > limit:
        raise _Bad("record head cut short")
    opcode, length = HEAD.unpack_from(buf, pos)
    end = pos + HEAD.size + length
    if end > limit:
        raise _Bad(f"record 0x{opcode:02x} of {length} bytes cut short")
    body = memoryview(buf)[pos + HEAD.size : end]
    if opcode == OP_CHUNK:
        return _parse_chunk(body, pos, end)
    if opcode == OP_METADATA:
        name, values = _parse_metadata(body)
        return _Metadata(pos, end, name, values)
    if opcode == OP_MESSAGE_INDEX:
        if length < 6 or _U32.unpack_from(body, 2)[0] != length - 6 or (length - 6) % 16:
            raise _Bad("message index record malformed")
        return ("skip", end)
    if opcode == OP_CHANNEL:
        channel = _parse_channel(body)
        return _Chunk(pos, end, [channel], [])
    if opcode == OP_DATA_END:
        if length != 4:
            raise _Bad("data end record malformed")
        return ("data_end", end)
    if opcode in (OP_SCHEMA, OP_ATTACHMENT):
        return ("skip", end)
    if opcode == OP_HEADER and pos == len(MAGIC):
        _string(body, 0, length)
        return ("skip", end)
    raise _Bad(f"no record here (opcode 0x{opcode:02x})")


def _resync(buf, pos: int, limit: int) -> int:
    """The next position from `pos` where an intact chunk or ferry metadata record starts
    (`limit` when none does)."""
    while True:
        match = _RESYNC.search(buf, pos, limit)
        if match is None:
            return limit
        candidate = match.start()
        if candidate + HEAD.size <= limit:
            opcode, length = HEAD.unpack_from(buf, candidate)
            if candidate + HEAD.size + length <= limit:
                try:
                    found = _parse_at(buf, candidate, limit)
                    if not isinstance(found, _Metadata) or found.name.startswith("ferry."):
                        return candidate
                except _Bad:
                    pass
        pos = candidate + 1


def _after(buf, pos: int, limit: int) -> bool:
    """Whether an intact record (or the end of the data section) follows at `pos`."""
    if pos == limit:
        return True
    try:
        _parse_at(buf, pos, limit)
        return True
    except _Bad:
        return False


def _footer(buf, size: int) -> tuple[int | None, str | None]:
    """(where the data section ends, a problem) from a valid footer; (None, None) without one."""
    if size < len(MAGIC) * 2 + TRAILER or buf[size - len(MAGIC) : size] != MAGIC:
        return None, None
    opcode, length, summary_start, _, crc = FOOTER.unpack_from(buf, size - TRAILER)
    if opcode != OP_FOOTER or length != 20 or summary_start > size - TRAILER:
        return None, None
    if summary_start == 0:
        return size - TRAILER, None
    if crc and crc32(memoryview(buf)[summary_start : size - TRAILER + 25]) != crc:
        return None, "summary CRC mismatch"
    return summary_start, None


def walk(buf, size: int) -> Iterator[_Chunk | _Metadata | _Damage | tuple[str, int]]:
    """Every intact record and damaged range of the data section in file order; last a
    ('closed', data CRC ok 0/1) or ('open', end of intact data) marker."""
    if size == 0:
        yield ("open", 0)
        return
    limit, problem = _footer(buf, size)
    if problem:
        yield _Damage(-1, -1, problem)
    bounded = limit is not None
    limit = size if limit is None else limit
    if bytes(buf[: len(MAGIC)]) != MAGIC:
        resume = _resync(buf, 0, limit)
        yield _Damage(0, resume, "no MCAP magic")
        pos = resume
    else:
        pos = len(MAGIC)
    intact_end = pos
    while pos < limit:
        try:
            found = _parse_at(buf, pos, limit)
        except _Bad as bad:
            end = None
            if pos + HEAD.size <= limit:
                _, length = HEAD.unpack_from(buf, pos)
                end = pos + HEAD.size + length
            if end is None or end > limit or not _after(buf, end, limit):
                end = _resync(buf, pos + 1, limit)
            yield _Damage(pos, end, str(bad))
            pos = end
            continue
        if isinstance(found, tuple):
            kind, end = found
            if kind == "data_end":
                (stored,) = _U32.unpack_from(buf, pos + HEAD.size)
                crc_ok = not stored or crc32(memoryview(buf)[:pos]) == stored
                yield ("closed" if bounded and end == limit else "data_end", int(crc_ok))
                if bounded and end == limit:
                    return
            pos = intact_end = end
            continue
        yield found
        pos = intact_end = found.end
    yield ("open", intact_end)


@contextmanager
def mapped(path: Path):
    """The file's bytes, mapped read-only (an empty file maps to b'')."""
    with open(path, "rb") as handle:
        size = handle.seek(0, 2)
        if size == 0:
            yield b"", 0
            return
        with mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as buf:
            yield buf, size


class ArchiveReader:
    """The records of one archive file in order, with its scan filled in as they are read."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def records(self, scan: ArchiveScan | None = None) -> Iterator[ArchiveRecord]:
        """Every intact record in file order; `scan` (when given) collects what the walk finds."""
        for message in self.messages(scan):
            if message.encoding == RECORD_ENCODING:
                try:
                    metadata, payload = decode_record(message.data)
                except ValueError:
                    metadata, payload = {}, message.data
            else:  # an MCAP file of another writer: its message data is the payload
                metadata, payload = {}, message.data
            yield ArchiveRecord(message.sequence, message.topic, message.log_time, metadata, payload, self.path.name)

    def messages(self, scan: ArchiveScan | None = None) -> Iterator[Message]:
        """Every intact message in file order, undecoded (what recovery copies)."""
        with mapped(self.path) as (buf, size):
            scan = scan if scan is not None else ArchiveScan(self.path, size)
            scan.size = size
            topics: dict[int, tuple[str, str]] = {}
            first = 0
            last_seen: int | None = None
            pending: list[_Damage] = []  # damage whose following sequence is not known yet
            for item in walk(buf, size):
                if isinstance(item, _Damage):
                    if item.start < 0:
                        scan.problems.append(item.reason)
                    else:
                        pending.append(item)
                elif isinstance(item, tuple):
                    kind, value = item
                    if kind in ("closed", "data_end") and not value:
                        scan.problems.append("data section CRC mismatch")
                    if kind == "closed":
                        scan.closed, scan.intact_end = True, size
                    elif kind == "open":
                        scan.intact_end = value
                elif isinstance(item, _Metadata):
                    if item.name == ARCHIVE_METADATA:
                        try:
                            scan.archive_sequence = int(item.values["archive_sequence"])
                            first = scan.first_record_sequence = int(item.values["first_record_sequence"])
                        except (KeyError, ValueError):
                            pass
                    elif item.name == POSSIBLY_LOST_METADATA:
                        try:
                            scan.possibly_lost.append(PossiblyLost(int(item.values["first"]), int(item.values["last"])))
                        except (KeyError, ValueError):
                            pass
                    elif item.name == CHANNEL_METADATA:
                        try:
                            topics.setdefault(int(item.values["id"]), (item.values["topic"], RECORD_ENCODING))
                        except (KeyError, ValueError):
                            pass
                else:
                    for channel, topic, encoding in item.channels:
                        topics[channel] = (topic, encoding)
                    for channel, wrapped, log_time, data in item.messages:
                        sequence = full_sequence(first, wrapped)
                        topic, encoding = topics.get(channel, (f"?channel-{channel}", ""))
                        if pending:
                            self._settle(scan, pending, last_seen, sequence)
                        last_seen = sequence
                        scan.records += 1
                        if scan.first_sequence is None:
                            scan.first_sequence = sequence
                        scan.last_sequence = sequence
                        scan.start_time = log_time if scan.start_time is None else min(scan.start_time, log_time)
                        scan.end_time = log_time if scan.end_time is None else max(scan.end_time, log_time)
                        scan.topics[topic] = scan.topics.get(topic, 0) + 1
                        yield Message(sequence, wrapped, topic, encoding, log_time, data)
            if pending:
                self._settle(scan, pending, last_seen, None)

    @staticmethod
    def _settle(scan: ArchiveScan, pending: list[_Damage], before: int | None, after: int | None) -> None:
        """Damage between the records numbered `before` and `after` gets the gap between them."""
        lost_from = None if before is None else before + 1
        if before is None and after is not None and scan.first_record_sequence is not None:
            lost_from = scan.first_record_sequence
        lost_to = None if after is None else after - 1
        for damage in pending:
            scan.damaged.append(DamagedRange(damage.start, damage.end, damage.reason, lost_from, lost_to))
        pending.clear()


def scan_archive(path: str | Path) -> ArchiveScan:
    """Walk one archive (closed, open or damaged) and report what it holds."""
    scan = ArchiveScan(Path(path), 0)
    for _ in ArchiveReader(path).records(scan):
        pass
    return scan


__all__ = ["ArchiveReader", "ArchiveScan", "DamagedRange", "Message", "mapped", "scan_archive", "walk"]
