"""Ferry's one frame: an unambiguous, checksummed envelope for a JSON header and a body.

    offset  size  field
    0       4     magic  b"\\x89FRM"
    4       2     version (1), big-endian like every integer here
    6       2     kind (Kind: 1 an append of Arrow record batches, 2 a blob)
    8       4     header length H (≤ MAX_HEADER)
    12      8     body length B
    20      4     CRC32C of bytes [0, 20) + header: lengths are trusted only once it matches
    24      H     header, UTF-8 JSON object
    24+H    B     body
    24+H+B  4     CRC32C of every byte before it (prefix, header and body)

Frames follow each other back to back (a multi-blob download is a sequence of blob frames);
the end of the input is allowed only between two frames. Nothing is guessed: a reader that
does not find the magic refuses the bytes (`CorruptFrame`, naming the offset), as it does a
wrong checksum, an unknown version or kind, or input that ends inside a frame. The body is
never handed out before its checksum matched.

Pure: struct, json and CRC32C only, so a device can import it (tests/unit/test_structure.py).
"""

from __future__ import annotations

import enum
import io
import json
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, BinaryIO

from storage_core.checksums import crc32c
from storage_core.errors import CorruptFrame

MAGIC = b"\x89FRM"
VERSION = 1
_PREFIX = struct.Struct(">4sHHIQ")  # magic, version, kind, header length, body length
_CRC = struct.Struct(">I")
PREFIX_SIZE = _PREFIX.size + _CRC.size  # 24
TRAILER_SIZE = _CRC.size
MAX_HEADER = 64 * 1024


class Kind(enum.IntEnum):
    APPEND = 1  # header: StreamAppend fields; body: one Arrow IPC stream
    BLOB = 2  # header: the blob's metadata (name, content type); body: its bytes


@dataclass(frozen=True)
class Frame:
    kind: Kind
    header: dict[str, Any]
    body: bytes
    size: int  # bytes the frame took in its input, prefix to trailer


def encode_frame(kind: Kind, header: dict[str, Any], body: bytes | bytearray | memoryview) -> bytes:
    """One frame (see the module docstring); `header` must be a JSON object."""
    head = json.dumps(header, separators=(",", ":"), sort_keys=True).encode("utf-8")
    if len(head) > MAX_HEADER:
        raise ValueError(f"frame header of {len(head)} bytes over {MAX_HEADER}")
    prefix = _PREFIX.pack(MAGIC, VERSION, int(kind), len(head), len(body))
    header_crc = crc32c(head, crc32c(prefix))
    start = prefix + _CRC.pack(header_crc) + head
    total_crc = crc32c(body, crc32c(start))
    return b"".join((start, bytes(body), _CRC.pack(total_crc)))


def _read_exact(stream: BinaryIO, n: int) -> bytes:
    chunks, left = [], n
    while left:
        chunk = stream.read(left)
        if not chunk:
            break
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def read_frame(stream: BinaryIO, *, offset: int = 0, max_body: int | None = None) -> Frame | None:
    """The next frame of `stream`, verified; None at a clean end (between frames).
    `offset` is where the frame starts in the whole input (for the error's message);
    `max_body` refuses a larger body before reading it."""
    first = _read_exact(stream, PREFIX_SIZE)
    if not first:
        return None
    if len(first) < PREFIX_SIZE:
        raise CorruptFrame(f"truncated frame at offset {offset}: {len(first)} of {PREFIX_SIZE} prefix bytes", offset=offset)
    magic, version, kind, head_len, body_len = _PREFIX.unpack_from(first)
    if magic != MAGIC:
        raise CorruptFrame(f"no frame at offset {offset}: magic {magic!r}, expected {MAGIC!r}", offset=offset)
    if head_len > MAX_HEADER:
        raise CorruptFrame(f"corrupt frame at offset {offset}: header length {head_len} over {MAX_HEADER}", offset=offset)
    head = _read_exact(stream, head_len)
    if len(head) < head_len:
        raise CorruptFrame(f"truncated frame at offset {offset}: header ends early", offset=offset)
    (header_crc,) = _CRC.unpack_from(first, _PREFIX.size)
    if crc32c(head, crc32c(first[: _PREFIX.size])) != header_crc:
        raise CorruptFrame(f"corrupt frame at offset {offset}: header checksum mismatch", offset=offset)
    # lengths, version and kind are now known to be what the writer wrote
    if version != VERSION:
        raise CorruptFrame(f"frame at offset {offset} has version {version}; this reader knows {VERSION}", offset=offset)
    try:
        kind = Kind(kind)
        header = json.loads(head.decode("utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise CorruptFrame(f"frame at offset {offset}: unknown kind {kind} or a header that is not JSON", offset=offset) from exc
    if not isinstance(header, dict):
        raise CorruptFrame(f"frame at offset {offset}: the header is not a JSON object", offset=offset)
    if max_body is not None and body_len > max_body:
        raise CorruptFrame(f"frame at offset {offset}: body of {body_len} bytes over {max_body}", offset=offset)
    body = _read_exact(stream, body_len)
    trailer = _read_exact(stream, TRAILER_SIZE)
    if len(body) < body_len or len(trailer) < TRAILER_SIZE:
        raise CorruptFrame(f"truncated frame at offset {offset}: body ends early", offset=offset)
    if crc32c(body, crc32c(head, crc32c(first))) != _CRC.unpack(trailer)[0]:
        raise CorruptFrame(f"corrupt frame at offset {offset}: body checksum mismatch", offset=offset)
    return Frame(kind, header, body, PREFIX_SIZE + head_len + body_len + TRAILER_SIZE)


def iter_frames(stream: BinaryIO, *, max_body: int | None = None) -> Iterator[Frame]:
    """Every frame of `stream`, each verified before it is yielded; a stream that ends
    inside a frame raises CorruptFrame after the last whole one."""
    offset = 0
    while (frame := read_frame(stream, offset=offset, max_body=max_body)) is not None:
        offset += frame.size
        yield frame


def decode_frame(data: bytes | bytearray | memoryview, *, max_body: int | None = None) -> Frame:
    """Exactly one frame and nothing after it (what a request body must be)."""
    stream = io.BytesIO(data)
    frame = read_frame(stream, max_body=max_body)
    if frame is None:
        raise CorruptFrame("no frame at offset 0: empty input", offset=0)
    rest = stream.read(1)
    if rest:
        end = stream.tell() - 1
        raise CorruptFrame(f"trailing bytes after the frame at offset {end}", offset=end)
    return frame


# --- CRC32C block framing on the way out ------------------------------------------------------

BLOCK = 4096


def encode_blocks(chunks: Iterator[bytes] | list[bytes], *, block: int = BLOCK) -> Iterator[bytes]:
    """[block data bytes][4-byte CRC32C] repeated, the last block shorter (the seed's
    download framing), from any chunking of the input; memory: one block."""
    pending = bytearray()
    for chunk in chunks:
        pending += chunk
        while len(pending) >= block:
            data = bytes(pending[:block])
            del pending[:block]
            yield data + _CRC.pack(crc32c(data))
    if pending:
        yield bytes(pending) + _CRC.pack(crc32c(bytes(pending)))


def decode_blocks(chunks: Iterator[bytes], *, block: int = BLOCK) -> Iterator[bytes]:
    """The data of a block-framed byte sequence, each block verified before it is yielded:
    a mismatch raises CorruptFrame naming the block's data offset."""
    full = block + TRAILER_SIZE
    pending = bytearray()
    offset = 0

    def check(raw: bytes) -> bytes:
        nonlocal offset
        data, (crc,) = raw[:-TRAILER_SIZE], _CRC.unpack(raw[-TRAILER_SIZE:])
        if crc32c(data) != crc:
            raise CorruptFrame(f"corrupt block at data offset {offset}: CRC32C mismatch", offset=offset)
        offset += len(data)
        return data

    for chunk in chunks:
        pending += chunk
        while len(pending) > full:  # a block of exactly `full` may still be the last one
            raw = bytes(pending[:full])
            del pending[:full]
            yield check(raw)
    if pending:
        if len(pending) <= TRAILER_SIZE:
            raise CorruptFrame(f"truncated block at data offset {offset}", offset=offset)
        if len(pending) > full:
            raise CorruptFrame(f"corrupt block at data offset {offset}: over {block} data bytes", offset=offset)
        yield check(bytes(pending))


__all__ = [
    "BLOCK",
    "MAGIC",
    "MAX_HEADER",
    "PREFIX_SIZE",
    "TRAILER_SIZE",
    "VERSION",
    "Frame",
    "Kind",
    "decode_blocks",
    "decode_frame",
    "encode_blocks",
    "encode_frame",
    "iter_frames",
    "read_frame",
]
