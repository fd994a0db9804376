"""What an MCAP summary says, as small frozen dataclasses with `to_dict()` for JSON.

Times are integer nanoseconds as MCAP stores them; `None` means "no messages".
"""

from __future__ import annotations

import base64
import dataclasses
from typing import Any, Literal


def jsonable(value: Any) -> Any:
    """Dataclasses, tuples, dicts with int keys and bytes turned into JSON-ready values."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, (bytes, bytearray)):
        return base64.b64encode(bytes(value)).decode("ascii")
    return value


@dataclasses.dataclass(frozen=True)
class SchemaInfo:
    id: int
    name: str
    encoding: str
    data: bytes  # to_dict: base64


@dataclasses.dataclass(frozen=True)
class ChannelInfo:
    id: int
    topic: str
    message_encoding: str
    schema_id: int  # 0: schemaless
    metadata: dict[str, str]


@dataclasses.dataclass(frozen=True)
class TopicSummary:
    """One topic: its channels (usually one) and how many messages they carry."""

    topic: str
    message_count: int
    message_encoding: str
    schema_name: str | None
    schema_encoding: str | None
    channel_ids: tuple[int, ...]


@dataclasses.dataclass(frozen=True)
class ChunkInfo:
    start_offset: int
    length: int
    message_start_time: int
    message_end_time: int
    compression: str
    compressed_size: int
    uncompressed_size: int
    message_index_offsets: dict[int, int]
    message_index_length: int


@dataclasses.dataclass(frozen=True)
class AttachmentInfo:
    offset: int
    length: int
    log_time: int
    create_time: int
    data_size: int
    name: str
    media_type: str


@dataclasses.dataclass(frozen=True)
class MetadataInfo:
    offset: int
    length: int
    name: str


@dataclasses.dataclass(frozen=True)
class McapSummary:
    """The catalog's view of one MCAP file.

    `source` says where it came from: "summary" (the file's own summary section, read by
    ranges) or "scan" (a streaming pass over the data section: no summary, an incomplete
    one, or a truncated file). `truncated` is True when the file ends before its Footer
    (a recorder that crashed); the counts then cover what was recorded before the cut.
    `profile`/`library` come from the Header, which sits at the start of the file: the
    summary path fills them only when those bytes were already fetched (small files).
    """

    source: Literal["summary", "scan"]
    truncated: bool
    size: int
    etag: str | None
    message_count: int
    start_time: int | None
    end_time: int | None
    channel_message_counts: dict[int, int]
    topics: tuple[TopicSummary, ...]
    schemas: tuple[SchemaInfo, ...]
    channels: tuple[ChannelInfo, ...]
    chunks: tuple[ChunkInfo, ...]
    attachments: tuple[AttachmentInfo, ...]
    metadata: tuple[MetadataInfo, ...]
    summary_crc_verified: bool = False
    profile: str | None = None
    library: str | None = None

    @property
    def duration_ns(self) -> int | None:
        if self.start_time is None or self.end_time is None:
            return None
        return self.end_time - self.start_time

    def to_dict(self) -> dict[str, Any]:
        return jsonable(self)


def topics_of(
    channels: dict[int, ChannelInfo], schemas: dict[int, SchemaInfo], counts: dict[int, int]
) -> tuple[TopicSummary, ...]:
    """Group channels by topic; a topic's count is the sum over its channels."""
    by_topic: dict[str, list[ChannelInfo]] = {}
    for channel in sorted(channels.values(), key=lambda c: c.id):
        by_topic.setdefault(channel.topic, []).append(channel)
    topics = []
    for topic, members in sorted(by_topic.items()):
        schema = schemas.get(members[0].schema_id)
        topics.append(
            TopicSummary(
                topic=topic,
                message_count=sum(counts.get(c.id, 0) for c in members),
                message_encoding=members[0].message_encoding,
                schema_name=schema.name if schema else None,
                schema_encoding=schema.encoding if schema else None,
                channel_ids=tuple(c.id for c in members),
            )
        )
    return tuple(topics)


__all__ = [
    "AttachmentInfo",
    "ChannelInfo",
    "ChunkInfo",
    "McapSummary",
    "MetadataInfo",
    "SchemaInfo",
    "TopicSummary",
    "jsonable",
    "topics_of",
]
