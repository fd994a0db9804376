"""The object-store contract: small capabilities, each a Protocol, plus the metadata types.

Byte ranges everywhere: `start` inclusive, `end` exclusive. Functions ask for the narrowest
capability they need (`def upload_object(store: Put | Multipart, source_store: GetRange, ...)`).

A store declares only the capabilities it has: one that cannot presign has no `presign_*`
methods at all rather than methods that raise. Code that can use an optional capability
asks for it with `isinstance(store, Presign)` (every capability is `runtime_checkable`),
never with `isinstance` of a store class, so a wrapper store works like the store it wraps.

`ObjectStore` is what every store has (`open_store` returns one). Beyond it, `Presign`
`Copy` (an S3Store: URLs a device uses without credentials, server-side copies), `DeleteMany`
(an S3Store: a batch of keys a request), `PutEmptyMany` (an S3Store: thousands of empty
objects without botocore's cost per request) and `CopyFile` / `CopyRange` (a
LocalStore: its objects are local files, so the kernel copies them) are optional.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
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
        """Bytes [start, end) (fewer only past the object's end). Raises PreconditionFailed
        when `if_match` no longer matches."""
        ...


@runtime_checkable
class GetTail(Protocol):
    def get_tail(self, key: str, length: int, *, if_match: str | None = None) -> Tail:
        """The last `length` bytes (fewer if the object is smaller), size and ETag in one request."""
        ...


class GetRangeAndTail(GetRange, GetTail, Protocol):
    """A tail, then ranges: how a RangeReader reads a stored object (format summaries)."""


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
        """Store `size` bytes atomically: readers see the old object or the whole new one.
        With `crc32c`, bytes that do not match it are refused (IntegrityError) and nothing is stored."""
        ...


@runtime_checkable
class Delete(Protocol):
    def delete(self, key: str) -> None:
        """Remove `key`; a key that does not exist is not an error."""
        ...


@runtime_checkable
class DeleteMany(Protocol):
    def delete_many(self, keys: list[str]) -> None:
        """Remove every key in as few requests as the store allows (S3: 1,000 a request);
        keys that do not exist are not an error. StorageError names the first key refused."""
        ...


@runtime_checkable
class PutEmptyMany(Protocol):
    def put_empty_many(self, keys: list[str], *, max_in_flight: int) -> None:
        """An empty object at every key, replacing what is there, `max_in_flight` requests
        at a time, each lean enough that thousands take about the store's own time. Every
        key is tried; StorageError then names how many and the first key refused."""
        ...


@runtime_checkable
class Multipart(Protocol):
    multipart_threshold: int  # objects larger than this go multipart

    def create_multipart(self, key: str) -> str: ...

    def upload_part(self, key: str, upload_id: str, part_number: int, data: bytes, *, crc32c: int) -> str:
        """Send one part; the store verifies `crc32c` when it can. Returns the part's ETag."""
        ...

    def list_parts(self, key: str, upload_id: str) -> list[StoredPart]: ...

    def complete_multipart(self, key: str, upload_id: str, parts: list[tuple[int, str]], *,
                           if_match: str | None = None, if_none_match: bool = False) -> ObjectMeta:
        """Assemble parts given as (part_number, etag), in order; with `if_match` only over
        the object of that ETag, with `if_none_match` only where no object is
        (PreconditionFailed otherwise, the upload left as it was)."""
        ...

    def abort_multipart(self, key: str, upload_id: str) -> None: ...

    def list_multipart_uploads(self, prefix: str = "") -> list[PendingUpload]: ...


@runtime_checkable
class Presign(Protocol):
    """URLs that let a holder without credentials read or write one key until they expire."""

    def presign_put(self, key: str, *, expires_in: int, crc32c: int | None = None, size: int | None = None,
                    content_type: str | None = None, if_none_match: bool = False) -> str:
        """Each option given is signed: a request with another checksum, length or type, or
        without `If-None-Match: *`, is refused by the store."""
        ...

    def presign_get(self, key: str, *, expires_in: int) -> str: ...

    def presign_upload_part(
        self, key: str, upload_id: str, part_number: int, *, expires_in: int, crc32c: int | None = None,
        size: int | None = None,
    ) -> str: ...


@runtime_checkable
class Copy(Protocol):
    def copy(self, source: ObjectMeta, key: str, *, if_match: str | None = None, if_none_match: bool = False) -> ObjectMeta:
        """Copy the object version `source` describes (refused if its key now holds another
        ETag) within the store, server-side, on the condition given for `key` (as for
        `complete_multipart`): PreconditionFailed, and nothing changes, when either fails.
        The copy keeps the source's size and checksum; its meta is returned without
        another request."""
        ...


@runtime_checkable
class CopyFile(Protocol):
    def copy_file(
        self,
        key: str,
        source_fd: int,
        *,
        size: int,
        on_progress: Callable[[int], None] | None = None,
        before_commit: Callable[[], None] | None = None,
    ) -> ObjectMeta:
        """Store bytes [0, size) of the open local file `source_fd` as `key`, copied by the
        kernel where it can (the bytes do not pass through Python); the result's `crc32c` is
        read back from the copy, so it covers what was stored.

        `before_commit` runs once the copy is durable and before it becomes visible (a
        caller re-checks its source there; raising leaves nothing). A source shorter than
        `size` fails `before_commit`, or else is an IntegrityError."""
        ...


@runtime_checkable
class CopyRange(OpenRead, Protocol):
    def copy_range(self, source: BinaryIO, start: int, end: int, fd: int) -> tuple[int, int]:
        """Copy bytes [start, end) of `source`, an object this store's `open_read` opened,
        into the local file `fd` at the same offsets, by the kernel where it can. Returns
        (the CRC32C of the bytes now in `fd`, read back: open `fd` for reading too; the bytes
        copied, fewer when the object ends first).

        `source` pins the object: ranges copied from it read the object as it was opened,
        even if its key is replaced meanwhile. An OSError of the copy is raised as it is:
        it may be the destination's (ENOSPC), which only the caller can name."""
        ...


class ObjectStore(Head, GetRange, GetTail, GetRangeInto, OpenRead, List, Put, Delete, Multipart, Protocol):
    """What every store has; `uri` names the store root (`file:///dir` or `s3://bucket`).
    `Presign`, `CopyFile` and `CopyRange` are optional: ask for them with isinstance."""

    uri: str


__all__ = [
    "Copy",
    "CopyFile",
    "CopyRange",
    "Delete",
    "DeleteMany",
    "GetRange",
    "GetRangeAndTail",
    "GetRangeInto",
    "GetTail",
    "Head",
    "List",
    "Multipart",
    "ObjectMeta",
    "ObjectStore",
    "OpenRead",
    "PendingUpload",
    "Presign",
    "Put",
    "PutEmptyMany",
    "StoredPart",
    "Tail",
]
