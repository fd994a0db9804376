"""The object-store contract: small capabilities, each a Protocol, plus the metadata types.

Byte ranges everywhere: `start` inclusive, `end` exclusive. Functions ask for the narrowest
capability they need (`def read_summary(store: GetRange, ...)`); `ObjectStore` is all of them.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import BinaryIO, Protocol, runtime_checkable


@dataclass(frozen=True)
class ObjectMeta:
    key: str
    size: int
    etag: str
    last_modified: datetime | None = None
    crc32c: int | None = None  # when the store knows it (S3 single PUTs with a checksum)


@dataclass(frozen=True)
class Tail:
    """The answer to a suffix range request: the last bytes of an object and its identity."""

    data: bytes
    start: int  # offset of data[0] within the object
    size: int  # whole-object size
    etag: str


@dataclass(frozen=True)
class StoredPart:
    part_number: int
    size: int
    etag: str


@dataclass(frozen=True)
class PendingUpload:
    key: str
    upload_id: str
    initiated: datetime | None


@runtime_checkable
class Head(Protocol):
    def head(self, key: str) -> ObjectMeta: ...


@runtime_checkable
class GetRange(Protocol):
    def get_range(self, key: str, start: int, end: int, *, if_match: str | None = None) -> bytes:
        """Bytes [start, end). Raises PreconditionFailed when `if_match` no longer matches."""
        ...

    def get_tail(self, key: str, length: int, *, if_match: str | None = None) -> Tail:
        """The last `length` bytes (fewer if the object is smaller), size and ETag in one request."""
        ...


@runtime_checkable
class GetRangeInto(Protocol):
    def get_range_into(self, key: str, start: int, buffer: memoryview, *, if_match: str | None = None) -> int:
        """Read bytes [start, start + len(buffer)) into `buffer`; return how many arrived (fewer
        only past the object's end). The download path's way to reuse one buffer per worker."""
        ...


@runtime_checkable
class OpenRead(Protocol):
    def open_read(self, key: str, *, if_match: str | None = None) -> BinaryIO:
        """A streaming reader over the whole object; close it when done."""
        ...


@runtime_checkable
class List(Protocol):
    def list(self, prefix: str = "") -> Iterator[ObjectMeta]: ...


@runtime_checkable
class Put(Protocol):
    def put(self, key: str, source: BinaryIO | bytes, *, size: int, crc32c: int | None = None) -> ObjectMeta:
        """Store `size` bytes atomically: readers see the old object or the whole new one."""
        ...

    def delete(self, key: str) -> None: ...


@runtime_checkable
class Multipart(Protocol):
    multipart_threshold: int  # objects larger than this go multipart

    def create_multipart(self, key: str) -> str: ...

    def upload_part(self, key: str, upload_id: str, part_number: int, data: bytes, *, crc32c: int) -> str:
        """Send one part; the store verifies `crc32c` when it can. Returns the part's ETag."""
        ...

    def list_parts(self, key: str, upload_id: str) -> list[StoredPart]: ...

    def complete_multipart(self, key: str, upload_id: str, parts: list[tuple[int, str]]) -> ObjectMeta:
        """Assemble parts given as (part_number, etag), in order."""
        ...

    def abort_multipart(self, key: str, upload_id: str) -> None: ...

    def list_multipart_uploads(self, prefix: str = "") -> list[PendingUpload]: ...


@runtime_checkable
class Presign(Protocol):
    def presign_put(self, key: str, *, expires_in: int, crc32c: int | None = None) -> str: ...

    def presign_get(self, key: str, *, expires_in: int) -> str: ...

    def presign_upload_part(
        self, key: str, upload_id: str, part_number: int, *, expires_in: int, crc32c: int | None = None
    ) -> str: ...


class ObjectStore(Head, GetRange, OpenRead, List, Put, Multipart, Presign, Protocol):
    """Every capability; `uri` names the store root (`file:///dir` or `s3://bucket`)."""

    uri: str


__all__ = [
    "GetRange",
    "GetRangeInto",
    "Head",
    "List",
    "Multipart",
    "ObjectMeta",
    "ObjectStore",
    "OpenRead",
    "PendingUpload",
    "Presign",
    "Put",
    "StoredPart",
    "Tail",
]
