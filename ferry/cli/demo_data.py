"""A small, realistic landing folder for `ferry demo`: several devices, each recording with
an MCAP log (chunked, zstd, several topics), raw video segments and a Parquet telemetry file."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from mcap.writer import CompressionType, Writer

MiB = 1024 * 1024
TOPICS = ("/camera/front/info", "/imu", "/gps/fix", "/odom")


def _write_mcap(path: Path, *, seconds: int, rng: random.Random, start_ns: int) -> None:
    with open(path, "wb") as stream:
        writer = Writer(stream, compression=CompressionType.ZSTD, chunk_size=256 * 1024)
        writer.start(profile="", library="ferry-demo")
        schema = writer.register_schema(name="json", encoding="jsonschema", data=b'{"type":"object"}')
        channels = {t: writer.register_channel(topic=t, message_encoding="json", schema_id=schema) for t in TOPICS}
        rates = {"/camera/front/info": 30, "/imu": 200, "/gps/fix": 10, "/odom": 50}
        for topic, hz in rates.items():
            for n in range(seconds * hz):
                t = start_ns + n * (1_000_000_000 // hz)
                payload = json.dumps({"seq": n, "value": rng.random(), "topic": topic}).encode()
                writer.add_message(channels[topic], log_time=t, data=payload, publish_time=t)
        writer.finish()


def _write_parquet(path: Path, *, rows: int, rng: random.Random, start_ns: int) -> None:
    table = pa.table(
        {
            "t_ns": pa.array([start_ns + i * 10_000_000 for i in range(rows)], pa.int64()),
            "speed_mps": pa.array([rng.uniform(0, 15) for _ in range(rows)], pa.float32()),
            "battery_v": pa.array([rng.uniform(44, 52) for _ in range(rows)], pa.float32()),
        }
    )
    pq.write_table(table, path, row_group_size=max(1, rows // 4))


def make_landing(root: Path, *, devices: int = 3, recordings: int = 2, seed: int = 7) -> Path:
    """Write (deterministically, from `seed`) DEVICE/RECORDING/{log.mcap, telemetry.parquet, video/front/NNNN.h264} under `root`."""
    rng = random.Random(seed)
    start = 1_790_000_000_000_000_000
    for d in range(devices):
        for r in range(recordings):
            folder = root / f"robot-{d + 1:02d}" / f"2026-11-21T0{r + 8}-00-00"
            (folder / "video" / "front").mkdir(parents=True, exist_ok=True)
            begin = start + (d * recordings + r) * 3_600_000_000_000
            _write_mcap(folder / "log.mcap", seconds=20, rng=rng, start_ns=begin)
            _write_parquet(folder / "telemetry.parquet", rows=2_000, rng=rng, start_ns=begin)
            for segment in range(3):
                # raw video stands in as incompressible bytes of a plausible segment size
                (folder / "video" / "front" / f"{segment:04d}.h264").write_bytes(rng.randbytes(2 * MiB + rng.randrange(MiB)))
    return root


__all__ = ["make_landing"]
