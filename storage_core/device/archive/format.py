"""How a record lives in an MCAP archive, and how archives are named.

A record is (topic, log time, metadata `dict[str, str]`, payload bytes). It is one MCAP
Message on a channel of its topic whose `message_encoding` is `ferry.record/1`; the
message data is the metadata in MCAP's own map encoding (u32 byte length, then u32
length-prefixed UTF-8 keys and values, all little-endian) followed by the payload bytes.
An empty dict costs 4 bytes (which zstd and lz4 squeeze to almost nothing).

Message.sequence is the record's sequence number modulo 2**32. The full (u64) number is
rebuilt from the archive's first record sequence, which the archive's first Metadata
record (`ferry.archive`) carries with the archive's own sequence number; an archive holds
fewer than 2**32 records, so the rebuild is exact. Each channel is also announced in a
`ferry.channel` Metadata record outside the chunks, so records after a damaged chunk that
held their Channel record can still be given their topic.

Sequence numbers a writer may have handed out but no archive holds (a crash between
reserving them and writing them, see writer.py) are named by a `ferry.possibly_lost`
Metadata record (`first`, `last`) in the archive recovered from the writer's last open
archive, so `verify` reports them with that one file.
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass, field
from datetime import datetime, timezone

from storage_core.errors import ConfigError

RECORD_ENCODING = "ferry.record/1"
ARCHIVE_METADATA = "ferry.archive"
CHANNEL_METADATA = "ferry.channel"
POSSIBLY_LOST_METADATA = "ferry.possibly_lost"
PROFILE = "ferry.archive/1"
OPEN_SUFFIX = ".open"
ARCHIVE_SUFFIX = ".mcap"
SEQUENCE_SPAN = 2**32
DEFAULT_NAME_TEMPLATE = "%Y%m%dT%H%M%SZ-{seq:06d}"

_U32 = struct.Struct("<I")
_EMPTY_MAP = b"\0\0\0\0"


@dataclass(frozen=True)
class ArchiveRecord:
    """One record as read back: its sequence number across archives, and where it was
    read from (`archive`, the file's name)."""

    sequence: int
    topic: str
    log_time: int
    metadata: dict[str, str] = field(default_factory=dict)
    payload: bytes = b""
    archive: str = ""


@dataclass(frozen=True)
class PossiblyLost:
    """Sequences `first`..`last` (inclusive) were reserved by a writer that died, and are in
    no archive: each was either lost in the crash or never used."""

    first: int
    last: int

    @property
    def count(self) -> int:
        return self.last - self.first + 1

    def text(self) -> str:
        return f"possibly lost {self.first}..{self.last} ({self.count})"


def encode_metadata(metadata: dict[str, str] | None) -> bytes:
    """The head of a record's message data: its metadata in MCAP's map encoding."""
    if not metadata:
        return _EMPTY_MAP
    parts = [b""]
    pack = _U32.pack
    for key, value in metadata.items():
        if type(key) is not str or type(value) is not str:  # noqa: E721 - str subclasses could encode otherwise
            raise ConfigError(f"record metadata must map str to str, not {type(key).__name__} to {type(value).__name__}")
        k, v = key.encode(), value.encode()
        parts += (pack(len(k)), k, pack(len(v)), v)
    parts[0] = pack(sum(map(len, parts)))
    return b"".join(parts)


def encode_record(metadata: dict[str, str] | None, payload: bytes) -> bytes:
    """Message data for (metadata, payload): `encode_metadata(metadata) + payload`."""
    return encode_metadata(metadata) + payload


def decode_record(data: bytes | memoryview) -> tuple[dict[str, str], bytes]:
    """(metadata, payload) from message data; ValueError when the framing does not hold."""
    view = memoryview(data)
    if len(view) < 4:
        raise ValueError("record shorter than its metadata length")
    (length,) = _U32.unpack_from(view, 0)
    end = 4 + length
    if end > len(view):
        raise ValueError("record metadata runs past the record")
    metadata, offset = {}, 4
    while offset < end:
        key, offset = _string(view, offset, end)
        value, offset = _string(view, offset, end)
        metadata[key] = value
    return metadata, bytes(view[end:])


def _string(view: memoryview, offset: int, end: int) -> tuple[str, int]:
    if offset + 4 > end:
        raise ValueError("record metadata string cut short")
    (length,) = _U32.unpack_from(view, offset)
    start = offset + 4
    if start + length > end:
        raise ValueError("record metadata string runs past its map")
    return bytes(view[start : start + length]).decode("utf-8"), start + length


def full_sequence(first: int, wrapped: int) -> int:
    """A record's u64 sequence from the archive's first sequence and its Message.sequence."""
    return first + (wrapped - first) % SEQUENCE_SPAN


# --- names -------------------------------------------------------------------------------

_SEQ_FIELD = re.compile(r"\{seq(:[^}]*)?\}")


def check_template(template: str) -> str:
    """The template as used: strftime fields (UTC) and `{seq}` (with an optional format spec,
    `{seq:06d}`); a template without `{seq}` gets `-{seq:06d}` appended, so two archives
    never share a name even within one second."""
    if "/" in template or template in ("", ".", ".."):
        raise ConfigError(f"archive name template {template!r} must be a plain file name (no '/')")
    if not _SEQ_FIELD.search(template):
        template += "-{seq:06d}"
    try:
        archive_name(template, 1, datetime(2000, 1, 1, tzinfo=timezone.utc))
    except (ValueError, KeyError, IndexError) as exc:
        raise ConfigError(f"archive name template {template!r}: {exc}") from None
    return template


def archive_name(template: str, sequence: int, when: datetime) -> str:
    """NAME.mcap for archive `sequence` opened at `when` (UTC)."""
    pieces = []
    last = 0
    for match in _SEQ_FIELD.finditer(template):
        pieces.append(when.strftime(template[last : match.start()]))
        pieces.append(format(sequence, (match.group(1) or ":")[1:]))
        last = match.end()
    pieces.append(when.strftime(template[last:]))
    name = "".join(pieces)
    if "/" in name or not name.strip("."):
        raise ValueError(f"the name {name!r} is not a plain file name")
    return name + ARCHIVE_SUFFIX


__all__ = [
    "ARCHIVE_METADATA",
    "ARCHIVE_SUFFIX",
    "CHANNEL_METADATA",
    "DEFAULT_NAME_TEMPLATE",
    "OPEN_SUFFIX",
    "POSSIBLY_LOST_METADATA",
    "PROFILE",
    "RECORD_ENCODING",
    "ArchiveRecord",
    "PossiblyLost",
    "archive_name",
    "check_template",
    "decode_record",
    "encode_metadata",
    "encode_record",
    "full_sequence",
]
