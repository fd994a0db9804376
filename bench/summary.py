"""Benchmark: MCAP summary of a large object in SeaweedFS, three ways, side by side.

- ferry:    `read_mcap_summary` over a RangeReader (one suffix GET, a second only when the
            summary is larger than the tail);
- download: download the whole object (boto3 `download_file`), then `mcap`'s reader on disk;
- seeking:  `mcap`'s SeekingReader over an unbuffered ranged stream (one GET per `read()`),
            which is what handing a remote file object to the library costs.

Usage: python -m bench.summary [--size 1GiB] [--keep DIR]   (or `ferry bench summary`)
The MCAP (chunked, zstd, several topics) is generated once into a temp dir, uploaded to a
fresh SeaweedFS, and each side runs in its own process (bench.harness).
"""

from __future__ import annotations

import argparse
import io
import os
import random
import sys
import tempfile
from pathlib import Path
from typing import Any, BinaryIO

TOPICS = ("/camera/front", "/lidar/points", "/imu", "/gps", "/tf")


def write_sample_mcap(
    out: BinaryIO,
    *,
    size: int,
    topics: tuple[str, ...] = TOPICS,
    chunk_size: int = 1024 * 1024,
    seed: int = 1,
) -> dict[str, int]:
    """Write a chunked, zstd-compressed multi-topic MCAP of about `size` bytes.

    Payloads are partly random (so zstd cannot shrink the file to nothing) and partly
    repetitive (so compression is real). Returns the message count per topic.
    """
    from mcap.writer import CompressionType, Writer

    rng = random.Random(seed)
    writer = Writer(out, chunk_size=chunk_size, compression=CompressionType.ZSTD)
    writer.start(profile="ferry-bench", library="ferry")
    schema = writer.register_schema("bench/Blob", "jsonschema", b'{"type":"object"}')
    channels = {t: writer.register_channel(t, "json", schema, {"origin": "bench"}) for t in topics}
    payload_sizes = {t: 256 * (4 ** (i % 4)) for i, t in enumerate(topics)}  # 256 B .. 16 KiB
    noise = rng.randbytes(1 << 20)
    counts = dict.fromkeys(topics, 0)
    time_ns = 1_700_000_000_000_000_000
    written = 0
    while out.tell() < size if hasattr(out, "tell") else written < size:
        for topic in topics:
            length = payload_sizes[topic]
            start = rng.randrange(0, len(noise) - length)
            data = noise[start : start + length // 2] + b"\0" * (length - length // 2)
            writer.add_message(channels[topic], time_ns, data, time_ns, counts[topic])
            counts[topic] += 1
            written += length
        time_ns += 10_000_000
    writer.finish()
    return counts


def sample_mcap_bytes(size: int, **options: Any) -> tuple[bytes, dict[str, int]]:
    buffer = io.BytesIO()
    counts = write_sample_mcap(buffer, size=size, **options)
    return buffer.getvalue(), counts
