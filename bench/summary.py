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
import time
from pathlib import Path
from typing import Any, BinaryIO

# imported once at module level: the harness times the call, not the child's imports
from mcap.reader import SeekingReader, make_reader  # noqa: E402

from storage_core.formats import read_mcap_summary  # noqa: E402
from storage_core.ranges import RangeReader  # noqa: E402
from storage_core.stores.s3 import S3Store, make_client  # noqa: E402

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
    while written < size:
        for topic in topics:
            length = payload_sizes[topic]
            start = rng.randrange(0, len(noise) - length)
            data = noise[start : start + length // 2] + b"\0" * (length - length // 2)
            writer.add_message(channels[topic], time_ns, data, time_ns, counts[topic])
            counts[topic] += 1
            written += length // 2 + 40  # the zero half compresses to almost nothing
        time_ns += 10_000_000
    writer.finish()
    return counts


def sample_mcap_bytes(size: int, **options: Any) -> tuple[bytes, dict[str, int]]:
    buffer = io.BytesIO()
    counts = write_sample_mcap(buffer, size=size, **options)
    return buffer.getvalue(), counts


# --- sides (module level: each runs in its own process) ------------------------------------
def _store(endpoint: str, bucket: str):
    return S3Store(bucket, client=make_client(endpoint_url=endpoint))


def ferry_side(endpoint: str, bucket: str, key: str) -> dict[str, Any]:
    store = _store(endpoint, bucket)  # client setup (~0.2 s) is not what is compared
    began = time.perf_counter()
    reader = RangeReader.from_store(store, key)
    summary = read_mcap_summary(reader)
    return {"requests": reader.stats.requests, "bytes": reader.stats.bytes_fetched,
            "messages": summary.message_count, "source": summary.source, "op_seconds": time.perf_counter() - began}


def download_side(endpoint: str, bucket: str, key: str, scratch: str) -> dict[str, Any]:
    from bench.harness import S3Target

    path = os.path.join(scratch, "download.mcap")
    client = S3Target(endpoint, bucket, os.environ["AWS_ACCESS_KEY_ID"], os.environ["AWS_SECRET_ACCESS_KEY"]).client()
    began = time.perf_counter()
    client.download_file(bucket, key, path)
    size = os.path.getsize(path)
    with open(path, "rb") as handle:
        summary = make_reader(handle).get_summary()
    os.unlink(path)
    assert summary is not None and summary.statistics is not None
    return {"requests": -1, "bytes": size, "messages": summary.statistics.message_count, "source": "download",
            "op_seconds": time.perf_counter() - began}


class _UnbufferedRanges:
    """One ranged GET per read(): what a naive remote file object costs `mcap`.

    Deliberately not an io.RawIOBase: `mcap` would wrap that in a BufferedReader."""

    def __init__(self, store: Any, key: str, size: int) -> None:
        self.store, self.key, self.size, self.position, self.requests, self.bytes = store, key, size, 0, 0, 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = 0) -> int:
        self.position = {0: 0, 1: self.position, 2: self.size}[whence] + offset
        return self.position

    def tell(self) -> int:
        return self.position

    def read(self, size: int = -1) -> bytes:
        end = self.size if size is None or size < 0 else min(self.size, self.position + size)
        if end <= self.position:
            return b""
        data = self.store.get_range(self.key, self.position, end)
        self.requests += 1
        self.bytes += len(data)
        self.position = end
        return data


def seeking_side(endpoint: str, bucket: str, key: str) -> dict[str, Any]:
    store = _store(endpoint, bucket)
    began = time.perf_counter()
    stream = _UnbufferedRanges(store, key, store.head(key).size)
    summary = SeekingReader(stream).get_summary()  # type: ignore[arg-type]
    assert summary is not None and summary.statistics is not None
    return {"requests": stream.requests + 1, "bytes": stream.bytes,
            "messages": summary.statistics.message_count, "source": "seeking", "op_seconds": time.perf_counter() - began}


def main(argv: list[str] | None = None) -> int:
    from bench.harness import add_size_argument, run_python, seaweed_server

    parser = argparse.ArgumentParser(prog="ferry bench summary", description=__doc__.splitlines()[0])
    add_size_argument(parser, default="1GiB")
    parser.add_argument("--skip-seeking", action="store_true", help="skip the slow SeekingReader side")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="ferry-bench-summary-") as scratch, seaweed_server() as target:
        path = Path(scratch, "sample.mcap")
        with open(path, "wb") as out:
            write_sample_mcap(out, size=int(args.size * 1.27))  # measured: the file is ~0.79x the payload
        size = path.stat().st_size
        key = "bench/sample.mcap"
        target.client().upload_file(str(path), target.bucket, key)
        from storage_core.formats.mcap_records import TRAILER_SIZE, parse_trailer

        with open(path, "rb") as handle:
            handle.seek(-TRAILER_SIZE, 2)
            footer = parse_trailer(handle.read())
        assert footer is not None
        summary_size = size - footer.summary_start
        path.unlink()

        common = (target.endpoint, target.bucket, key)
        results = [run_python("ferry", ferry_side, *common, nbytes=size, env=target.env),
                   run_python("download+mcap", download_side, *common, scratch, nbytes=size, env=target.env)]
        if not args.skip_seeking:
            results.append(run_python("mcap SeekingReader", seeking_side, *common, nbytes=size, env=target.env))

    print(f"MCAP summary of a {size / 2**30:.2f} GiB object in SeaweedFS (summary section {summary_size:,} bytes)")
    print("seconds: the operation after the S3 client exists; with setup: the whole call in its process")
    print(f"{'side':<20} {'requests':>9} {'bytes fetched':>15} {'seconds':>9} {'with setup':>11} {'peak RSS MiB':>13}")
    for r in results:
        requests = "n/a" if r.extra["requests"] < 0 else str(r.extra["requests"])
        print(f"{r.name:<20} {requests:>9} {r.extra['bytes']:>15,} {r.extra['op_seconds']:>9.3f} {r.seconds:>11.3f} {r.peak_rss_mib:>13.0f}")
    ferry = results[0]
    for other in results[1:]:
        print(f"ferry is {other.extra['op_seconds'] / ferry.extra['op_seconds']:,.0f}x faster than {other.name}"
              f" ({other.seconds / ferry.seconds:,.1f}x with client setup)")
    ok = ferry.extra["requests"] <= 2 and ferry.extra["bytes"] <= summary_size + 256 * 1024
    ok = ok and all(r.extra["messages"] == ferry.extra["messages"] for r in results)
    print(f"target (<= 2 requests, bytes <= summary + 256 KiB, same message count): {'met' if ok else 'NOT met'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
