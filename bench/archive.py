"""Benchmark: recording records into MCAP, Ferry's rolling archive vs the `mcap` Python writer.

Sides, each in its own process (bench.harness), writing the same records (topic, log time,
metadata {"i": N}, payload) framed the same way (storage_core.device.archive.format), into
the same MCAP layout: zstd (level 3) chunks of 1 MiB, chunk CRCs and the data-section CRC,
message and chunk indexes, statistics (the `COMPARED` line the bench prints):
- mcap:         `mcap.writer.Writer`, one file, flushed and fsynced at the end (nothing is
                durable before that);
- ferry-group:  `ArchiveWriter`, durability `group` (at most 100 ms of records plus one
                fsync at risk: an fdatasync every 100 ms while records stream in), no roll;
- ferry-close:  `ArchiveWriter`, durability `close` (durable at close, as the mcap side).
What differs is each writer's own doing: Ferry packs records into a reused chunk buffer,
takes its CRCs from zlib-ng (the mcap library from zlib) and, in group mode, fsyncs on a
thread of its own with each chunk's write-back started as it is written.
Throughput counts payload bytes; overhead per record is (file bytes - payload bytes) / records.
`cpu s` is the side's CPU time (user + system, every thread) for the same interval as its
wall time: on a shared machine, `x mcap cpu` (the mcap side's CPU over this side's) says
what the wall-time ratio may blur.
Rounds alternate the sides, each round starting with the next side (the machine is shared,
and whoever follows a big fsync may pay for it); the median round of each side is shown.

Usage: python -m bench.archive [--records-256 200000] [--records-64k 2000] [--rounds 3]
       (or `ferry bench archive`)
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from mcap.writer import CompressionType, Writer

from storage_core.device.archive import ArchiveWriter
from storage_core.device.archive.format import RECORD_ENCODING, encode_record

CHUNK_SIZE = 1024 * 1024
COMPARED = "both sides: zstd level 3, 1 MiB chunks, chunk + data-section CRCs, indexes and statistics; fsync before the clock stops"


def _payloads(count: int, size: int):
    """Random payloads (incompressible, so file bytes minus payload bytes is the format's overhead)."""
    for i in range(count):
        yield i, os.urandom(size)


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)  # the process: every thread
    return usage.ru_utime + usage.ru_stime


def mcap_side(folder: str, count: int, size: int) -> dict[str, Any]:
    path = Path(folder, "mcap.mcap")
    records = list(_payloads(count, size))
    started, cpu = time.perf_counter(), _cpu()
    with open(path, "wb") as handle:
        writer = Writer(handle, chunk_size=CHUNK_SIZE, compression=CompressionType.ZSTD, enable_crcs=True, enable_data_crcs=True)
        writer.start()
        channel = writer.register_channel("/bench", RECORD_ENCODING, 0)
        for i, payload in records:
            now = time.time_ns()
            writer.add_message(channel, now, encode_record({"i": str(i)}, payload), now, i)
        writer.finish()
        handle.flush()
        os.fsync(handle.fileno())
    return {"op_seconds": time.perf_counter() - started, "op_cpu": _cpu() - cpu, "file_bytes": path.stat().st_size}


def ferry_side(folder: str, count: int, size: int, durability: str) -> dict[str, Any]:
    target = Path(folder, f"ferry-{durability}")
    records = list(_payloads(count, size))
    started, cpu = time.perf_counter(), _cpu()
    with ArchiveWriter(target, durability=durability, compression="zstd", chunk_size=CHUNK_SIZE) as writer:
        for i, payload in records:
            writer.write(payload, topic="/bench", metadata={"i": str(i)})
    seconds, cpu = time.perf_counter() - started, _cpu() - cpu
    return {"op_seconds": seconds, "op_cpu": cpu, "file_bytes": sum(p.stat().st_size for p in target.glob("*.mcap"))}


def _count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a count (0 or more)")
    return value


def main(argv: list[str] | None = None) -> int:
    from bench.harness import run_python

    parser = argparse.ArgumentParser(prog="ferry bench archive", description=__doc__.splitlines()[0])
    parser.add_argument("--records-256", type=_count, default=200_000, help="records of 256 B (default 200000; 0 skips)")
    parser.add_argument("--records-64k", type=_count, default=2_000, help="records of 64 KiB (default 2000; 0 skips)")
    parser.add_argument("--rounds", type=_count, default=3)
    args = parser.parse_args(argv)

    sides = [("mcap", mcap_side, ()), ("ferry-group", ferry_side, ("group",)), ("ferry-close", ferry_side, ("close",))]
    for size, count in ((256, args.records_256), (64 * 1024, args.records_64k)):
        if not count or not args.rounds:
            continue
        runs: dict[str, list[dict[str, Any]]] = {name: [] for name, _, _ in sides}
        for round_ in range(args.rounds):
            for name, func, extra in sides[round_ % len(sides) :] + sides[: round_ % len(sides)]:
                with tempfile.TemporaryDirectory(prefix="ferry-bench-archive-") as scratch:
                    result = run_python(name, func, scratch, count, size, *extra, nbytes=count * size)
                    runs[name].append(result.extra)
        payload_bytes = count * size
        print(f"\n{count:,} records of {size:,} B payload (+ metadata {{'i': N}}); median of {args.rounds} rounds")
        print(COMPARED)
        print(f"{'side':<13} {'records/s':>11} {'MB/s':>8} {'x mcap':>7} {'cpu s':>7} {'x mcap cpu':>10} {'file bytes':>13}"
              f" {'overhead B/record':>18} {'vs mcap':>8}")  # fmt: skip
        base = statistics.median(r["op_seconds"] for r in runs["mcap"])
        base_cpu = statistics.median(r["op_cpu"] for r in runs["mcap"])
        base_overhead = None
        for name, _, _ in sides:
            seconds = statistics.median(r["op_seconds"] for r in runs[name])
            cpu = statistics.median(r["op_cpu"] for r in runs[name])
            file_bytes = int(statistics.median(r["file_bytes"] for r in runs[name]))
            overhead = (file_bytes - payload_bytes) / count
            base_overhead = overhead if base_overhead is None else base_overhead
            cpu_ratio = base_cpu / cpu if cpu else float("nan")  # a side quicker than the CPU clock's tick
            print(f"{name:<13} {count / seconds:>11,.0f} {payload_bytes / 1e6 / seconds:>8.1f} {base / seconds:>7.2f}"
                  f" {cpu:>7.2f} {cpu_ratio:>10.2f} {file_bytes:>13,} {overhead:>18.1f} {(file_bytes / (payload_bytes + base_overhead * count) - 1) * 100:>7.2f}%")
    return 0


if __name__ == "__main__":
    sys.exit(main())
