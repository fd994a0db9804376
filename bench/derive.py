"""`ferry bench derive`: MB/s of MCAP turned into per-topic Parquet, Ferry's `topics` product
against a plain script with the `mcap` reader and `pyarrow` doing the same.

Both sides read the same MCAP file from the same disk and write zstd Parquet with the same
rows and columns per topic (log time, publish time, sequence, channel id, raw bytes, one
column per top-level JSON field); the bench checks that before it prints a ratio.
- ferry: what a user gets from `ferry derive topics --mode force`: the input read from the
  (local) store and checked against its catalogued size and CRC32C, chunk CRCs checked,
  per-topic Parquet streamed in files of at most `chunk_rows` rows, each file CRC32C'd, the
  manifest written last, the attempt committed in the catalog (SQLite).
- plain: `make_reader(f).iter_messages()`, `json.loads` per JSON message, rows kept in
  memory, one `pa.Table.from_pylist` + `pq.write_table` per topic (nested values become
  structs and lists there, JSON text in Ferry's columns).

Recordings (generated, deterministic):
- json: a robot's JSON telemetry, ROS-style: /imu 200 Hz (with a JSON Schema), /tf 100 Hz,
  /odom 50 Hz, /rosout 20 Hz, /gps 10 Hz, /diagnostics 2 Hz, /battery 1 Hz; nested
  objects and arrays, noisy floats; ~2-3x zstd.
- flat: the recording this bench used first: 8 schemaless JSON topics of one flat
  five-field object each (~190 bytes, a long padding string), ~6x zstd: the most messages
  per MB, and nothing nested (which is cheap for the plain script's `from_pylist`).
- mixed: the json recording plus a compressed camera (15 Hz, ~40 KB incompressible frames, `cdr`),
  so most bytes are raw payload, as in a real recording.

Every side runs in a fresh process (bench.harness.run_python: time of the call alone, the
process's peak RSS); sides alternate in rounds; the median round is shown.

    python -m bench.derive [--mb 64] [--rounds 3] [--workload json,mixed] [--chunk-rows N]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import sys
import tempfile
from pathlib import Path
from typing import Any

# imported once at module level: the harness times the call, not the child's imports
import pyarrow as pa  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402
from mcap.reader import make_reader  # noqa: E402

from storage_core.catalog import Catalog  # noqa: E402
from storage_core.catalog import products as catalog_products  # noqa: E402
from storage_core.config import load_settings  # noqa: E402
from storage_core.products import derive_one, plan_derive, read_manifest  # noqa: E402
from storage_core.stores.registry import open_store  # noqa: E402

WORKLOADS = ("json", "flat", "mixed")
IMU_SCHEMA = {
    "type": "object",
    "properties": {
        "stamp": {"type": "integer"}, "frame_id": {"type": "string"},
        "orientation": {"type": "object"}, "angular_velocity": {"type": "object"},
        "linear_acceleration": {"type": "object"}, "temperature": {"type": "number"},
    },
}


def _vector(rng: random.Random, scale: float) -> dict[str, float]:
    return {"x": rng.gauss(0, scale), "y": rng.gauss(0, scale), "z": rng.gauss(0, scale)}


def _quaternion(yaw: float) -> dict[str, float]:
    return {"x": 0.0, "y": 0.0, "z": math.sin(yaw / 2), "w": math.cos(yaw / 2)}


def _header(t: int, frame: str) -> dict[str, Any]:
    return {"stamp": {"sec": t // 1_000_000_000, "nanosec": t % 1_000_000_000}, "frame_id": frame}


# topic -> (rate in Hz, message encoding, payload maker(rng, t, i))
def _json_topics() -> dict[str, tuple[int, Any]]:
    words = "planner replans around obstacle at the loading dock waiting for clearance lidar ok".split()
    return {
        "/imu": (200, lambda r, t, i: {
            "stamp": t, "frame_id": "imu_link", "orientation": {**_quaternion(i * 1e-3), "w": 1.0},
            "angular_velocity": _vector(r, 0.02), "linear_acceleration": {**_vector(r, 0.2), "z": 9.81 + r.gauss(0, 0.05)},
            "temperature": round(31 + r.random(), 2)}),
        "/tf": (100, lambda r, t, i: {"transforms": [
            {"header": _header(t, "map"), "child_frame_id": child,
             "transform": {"translation": _vector(r, 5.0), "rotation": _quaternion(r.random())}}
            for child in ("odom", "base_link")]}),
        "/odom": (50, lambda r, t, i: {
            "header": _header(t, "odom"), "child_frame_id": "base_link",
            "x": i * 0.01 + r.gauss(0, 0.01), "y": r.gauss(0, 0.01), "yaw": r.gauss(0, 0.1),
            "vx": 0.5 + r.gauss(0, 0.02), "wz": r.gauss(0, 0.05), "covariance": [round(r.random(), 4) for _ in range(6)]}),
        "/rosout": (20, lambda r, t, i: {
            "level": r.choice((10, 20, 20, 20, 30)), "name": r.choice(("planner", "driver", "localizer")),
            "msg": " ".join(r.choice(words) for _ in range(r.randint(4, 14))), "file": "node.cpp", "line": r.randint(1, 900)}),
        "/gps": (10, lambda r, t, i: {
            "latitude": 48.137 + i * 1e-7 + r.gauss(0, 1e-6), "longitude": 11.575 + r.gauss(0, 1e-6),
            "altitude": 519.0 + r.gauss(0, 0.3), "status": 2, "hdop": round(0.8 + r.random(), 2), "fixed": True}),
        "/diagnostics": (2, lambda r, t, i: {
            "level": 0, "name": "base/motors", "message": "OK", "hardware_id": "mc-01",
            "values": [{"key": f"motor{k}.current", "value": f"{r.uniform(0.5, 3):.3f}"} for k in range(8)]}),
        "/battery": (1, lambda r, t, i: {
            "voltage": 48.1 - i * 1e-3, "current": -3.2 + r.gauss(0, 0.1), "percentage": max(0.0, 0.95 - i * 1e-5),
            "charging": False}),
    }


def make_recording(path: Path, *, mb: int, workload: str, seed: int = 17) -> int:
    """Write a recording of about `mb` MB (file bytes) to `path`; returns its message count."""
    from mcap.writer import Writer

    if workload == "flat":
        return _make_flat(path, mb=mb)
    rng = random.Random(seed)
    topics = _json_topics()
    with open(path, "wb") as out:
        writer = Writer(out)  # the library's defaults: 1 MiB chunks, zstd, message indexes
        writer.start(profile="", library="ferry-bench")
        imu = writer.register_schema("Imu", "jsonschema", json.dumps(IMU_SCHEMA).encode())
        channels = {name: writer.register_channel(name, "json", imu if name == "/imu" else 0) for name in topics}
        camera = writer.register_channel("/camera/compressed", "cdr", writer.register_schema("CompressedImage", "ros2msg", b"x"))
        messages, tick = 0, 0
        while out.tell() < mb * 1_000_000:  # one tick: 10 ms
            t = 1_700_000_000_000_000_000 + tick * 10_000_000
            for name, (rate, make) in topics.items():
                if tick % (100 // rate if rate <= 100 else 1) == 0:
                    for k in range(rate // 100 if rate > 100 else 1):
                        payload = json.dumps(make(rng, t + k * 5_000_000, messages)).encode()
                        writer.add_message(channels[name], log_time=t + k * 5_000_000, publish_time=t + k * 5_000_000 + 1_000,
                                           data=payload, sequence=messages)
                        messages += 1
            if workload == "mixed" and tick % 7 == 0:  # ~15 Hz
                frame = rng.randbytes(rng.randint(30_000, 50_000))
                writer.add_message(camera, log_time=t, publish_time=t + 2_000, data=frame, sequence=messages)
                messages += 1
            tick += 1
        writer.finish()
    return messages


def _make_flat(path: Path, *, mb: int) -> int:
    from mcap.writer import Writer

    with open(path, "wb") as out:
        writer = Writer(out)
        writer.start(profile="", library="ferry-bench")
        channels = [writer.register_channel(f"/sensor/{i}", "json", 0) for i in range(8)]
        i = 0
        while out.tell() < mb * 1_000_000:
            payload = json.dumps({"x": i * 0.1, "n": i, "ok": i % 2 == 0, "label": f"s{i % 97}", "pad": "p" * 120}).encode()
            writer.add_message(channels[i % 8], log_time=i * 1000, data=payload, publish_time=i * 1000, sequence=i)
            i += 1
        writer.finish()
    return i


def plain_side(mcap_path: str, out: str) -> dict[str, Any]:
    """The script a user writes with the mcap reader and pyarrow (module level: it runs in a child)."""
    topics: dict[str, list[dict]] = {}
    with open(mcap_path, "rb") as f:
        for _, channel, message in make_reader(f).iter_messages(log_time_order=False):
            row = {"log_time": message.log_time, "publish_time": message.publish_time, "sequence": message.sequence,
                   "channel_id": channel.id, "data": message.data}
            if channel.message_encoding == "json":
                row.update(json.loads(message.data))
            topics.setdefault(channel.topic, []).append(row)
    Path(out).mkdir(parents=True, exist_ok=True)
    shape = {}
    for i, (topic, items) in enumerate(topics.items()):
        table = pa.Table.from_pylist(items)
        pq.write_table(table, Path(out) / f"{i}.parquet", compression="zstd")
        shape[topic] = (table.num_rows, sorted(table.column_names))
    return {"shape": shape}


def ferry_side(catalog_url: str, chunk_rows: int) -> dict[str, Any]:
    """`ferry derive topics --mode force` on the one recording, as a library call."""
    catalog = Catalog(catalog_url)
    settings = load_settings()
    options = {"chunk_rows": chunk_rows}
    [item] = plan_derive(catalog, "topics", options=options, mode="force", settings=settings)
    outcome = derive_one(catalog, item, options=options, mode="force", settings=settings)
    catalog.dispose()
    return {"key": outcome.key, "files": outcome.files}


def ferry_shape(catalog_url: str, key: str) -> dict[str, tuple[int, list[str]]]:
    """Rows and column names per topic of the committed product (after the timed call)."""
    from urllib.parse import unquote

    catalog = Catalog(catalog_url)
    committed = catalog_products.get_product(catalog, key).committed
    store, _ = open_store(committed.store_uri, load_settings())
    shape = {}
    for dataset, files in read_manifest(store, committed.prefix).datasets().items():
        shape[unquote(dataset)] = (sum(f.rows for f in files), sorted(name for name, _ in files[0].schema))
    catalog.dispose()
    return shape


def _catalogue(root: Path, mcap: Path) -> tuple[str, str]:
    """Put `mcap` into a local store and catalogue it as an ingest would: (store URI, catalog URL)."""
    from storage_core.catalog.models import Device, Recording, StoredObject
    from storage_core.checksums import crc32c_of_stream
    from storage_core.stores.local import LocalStore

    store = LocalStore(root / "store")
    key = "in/dev/rec/x.mcap"
    target = root / "store" / "in" / "dev" / "rec" / "x.mcap"
    target.parent.mkdir(parents=True, exist_ok=True)
    os.link(mcap, target)  # the very bytes the plain side reads
    with open(target, "rb") as f:
        crc, size = crc32c_of_stream(f)
    url = f"sqlite:///{root / 'catalog.db'}"
    catalog = Catalog(url)
    with catalog.session() as session:
        session.add(Device(id="dev"))
        session.flush()
        rec = Recording(device_id="dev", name="rec")
        session.add(rec)
        session.flush()
        session.add(StoredObject(recording_id=rec.id, store_uri=store.uri, key=key, relative_path="x.mcap",
                                 modality="mcap", size=size, crc32c=crc, etag=store.head(key).etag))
    catalog.dispose()
    return store.uri, url


def run_workload(root: Path, workload: str, *, mb: int, rounds: int, chunk_rows: int) -> list:
    from bench.harness import format_table, median_run, run_python

    mcap = root / f"{workload}.mcap"
    messages = make_recording(mcap, mb=mb, workload=workload)
    size = mcap.stat().st_size
    store_uri, catalog_url = _catalogue(root / workload, mcap)
    env = {"FERRY_STORE": store_uri, "FERRY_HOME": str(root / "home")}
    runs: dict[str, list] = {"ferry": [], "plain": []}
    for r in range(rounds):
        for side in ("ferry", "plain") if r % 2 == 0 else ("plain", "ferry"):
            if side == "ferry":
                result = run_python("ferry", ferry_side, catalog_url, chunk_rows, nbytes=size, env=env)
            else:
                result = run_python("plain", plain_side, str(mcap), str(root / f"plain-{workload}-{r}"), nbytes=size)
            runs[side].append(result)
    os.environ.update(env)
    ferry, plain_shape = ferry_shape(catalog_url, runs["ferry"][-1].extra["key"]), runs["plain"][0].extra["shape"]
    same = ferry == plain_shape
    results = [median_run(runs["ferry"]), median_run(runs["plain"])]
    title = (f"derive topics, {workload}: {size / 1e6:.1f} MB, {messages:,} messages, {len(plain_shape)} topics; "
             f"median of {rounds} rounds; same rows and columns per topic: {'yes' if same else 'NO'}")
    print(format_table(title, results, baseline="plain", extra_columns=("cpu_seconds", "runs_mb_per_s")))
    if not same:
        for topic in sorted(set(ferry) | set(plain_shape)):
            if ferry.get(topic) != plain_shape.get(topic):
                print(f"  {topic}: ferry {ferry.get(topic)} plain {plain_shape.get(topic)}")
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="ferry bench derive", description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=int, default=64, help="size of each MCAP input (MB, about)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--workload", default=",".join(WORKLOADS), help=f"comma-separated: {', '.join(WORKLOADS)}")
    parser.add_argument("--chunk-rows", type=int, default=250_000, help="Ferry's rows per Parquet file (its default)")
    args = parser.parse_args(argv)
    workloads = [w for w in args.workload.split(",") if w]
    unknown = set(workloads) - set(WORKLOADS)
    if unknown:
        parser.error(f"unknown workload {', '.join(sorted(unknown))}")
    with tempfile.TemporaryDirectory(prefix="ferry-bench-derive-") as tmp:
        for workload in workloads:
            run_workload(Path(tmp), workload, mb=args.mb, rounds=args.rounds, chunk_rows=args.chunk_rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
