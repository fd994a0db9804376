"""`ferry bench stream`: telemetry appended through the gateway and read back, against
pyarrow writing the same batches straight to one Parquet file in the store.

Sides (each in its own fresh process, bench.harness; SeaweedFS on loopback, SQLite catalog):
- `pyarrow write`   the source's batches of `--batch-rows` written with `pq.ParquetWriter`
                    (zstd) to one object through `pyarrow.fs.S3FileSystem`: no offsets, no
                    exactly-once, no checksums of its own;
- `ferry append`    `storage_core.device.stream.stream_append` of the same file to a gateway
                    (run by this process, in a thread): one framed, CRC32C'd Arrow IPC (zstd)
                    append per batch, 16 per request, up to 128 in flight; those waiting behind a running
                    commit go in the next one (one Delta commit with its app transaction plus
                    a catalog commit per group), each acknowledged in order;
- `pyarrow read`    that Parquet object read back batch by batch (`pq.ParquetFile.iter_batches`);
- `ferry read`      the stream's Delta table read back batch by batch
                    (`storage_core.streams.read.read_batches`): one file per group commit;
- `ferry read compacted` the same after `ferry stream compact` (Delta OPTIMIZE + checkpoint).

With `--repeat N` each side runs N times, interleaved (each append run to a new stream and
a new object; the reads read the first run's), and the median run is shown.
MB is the rows' Arrow size in memory (the same for every side), so MB/s and rows/s agree.
Each side also shows the CPU seconds of its own process, of this process (the gateway:
busy only during `ferry append`) and of the store: on two cores shared by all three, a
side cannot take less wall time than half their sum.
Targets (PASS/FAIL): ferry append ≥ 0.8× pyarrow write, ferry read ≥ 1.0× pyarrow read.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

# Imported here, not in the sides, so that no side's timed call pays for imports (as in
# bench.upload): the table compares appends and reads, not interpreter start-up.
import boto3  # noqa: F401 - the ferry sides resolve credentials with it
import deltalake  # noqa: F401 - imported by the ferry sides, outside their timed calls
import httpcore  # noqa: F401 - httpx imports it (and trio with it, ~0.12 s) when the ferry append side makes its client
import pyarrow.parquet as pq
from pyarrow import fs

from bench.harness import format_table, median_run, process_cpu_seconds, ratio, run_python, seaweed_server
from storage_core.device.stream import cut_batches, stream_append
from storage_core.streams.read import read_batches
from storage_core.streams.table import location_of

TARGET_APPEND = 0.8
TARGET_READ = 1.0


def make_source(path: Path, rows: int) -> int:
    """Robot telemetry like the tests' (time, seq, battery, GPS, state); returns its Arrow bytes."""
    import pyarrow as pa

    nbytes = 0
    with pq.ParquetWriter(path, _schema()) as writer:
        for start in range(0, rows, 50_000):
            n = range(start, min(rows, start + 50_000))
            table = pa.table({
                "time": pa.array([i * 1_000_000 + 1_700_000_000_000_000 for i in n], pa.timestamp("us")),
                "seq": pa.array(list(n), pa.int64()),
                "battery": pa.array([100.0 - (i % 1000) / 10.0 for i in n]),
                "lat": pa.array([48.0 + (i % 997) * 1e-5 for i in n]),
                "lon": pa.array([11.0 + (i % 991) * 1e-5 for i in n]),
                "state": pa.array([f"state-{i % 7}" for i in n]),
            }, schema=_schema())
            nbytes += table.nbytes
            writer.write_table(table)
    return nbytes


def _schema() -> Any:
    import pyarrow as pa

    return pa.schema([("time", pa.timestamp("us")), ("seq", pa.int64()), ("battery", pa.float64()),
                      ("lat", pa.float64()), ("lon", pa.float64()), ("state", pa.string())])


def _s3fs() -> Any:
    endpoint = os.environ["AWS_ENDPOINT_URL"]
    return fs.S3FileSystem(endpoint_override=endpoint, scheme="http", access_key=os.environ["AWS_ACCESS_KEY_ID"],
                           secret_key=os.environ["AWS_SECRET_ACCESS_KEY"], region=os.environ["AWS_REGION"])


# --- sides (module level: each runs in a child) -------------------------------------------------


def pyarrow_write_side(source: str, bucket: str, batch_rows: int, key: str) -> dict[str, Any]:
    rows = 0
    with pq.ParquetWriter(f"{bucket}/{key}", _schema(), filesystem=_s3fs(), compression="zstd") as writer:
        for table in cut_batches(Path(source), batch_rows):
            writer.write_table(table)
            rows += table.num_rows
    return {"rows": rows}


def ferry_append_side(source: str, gateway: str, token: str, batch_rows: int, state: str, stream: str) -> dict[str, Any]:
    report = stream_append([source], stream=stream, gateway=gateway, token=token, batch_rows=batch_rows,
                           state_file=state)
    return {"rows": report.rows_sent, "appends": report.batches_sent}


def pyarrow_read_side(bucket: str, key: str) -> dict[str, Any]:
    rows = 0
    with _s3fs().open_input_file(f"{bucket}/{key}") as handle:
        for batch in pq.ParquetFile(handle).iter_batches(batch_size=65_536):
            rows += batch.num_rows
    return {"rows": rows}


def ferry_read_side(table_uri: str) -> dict[str, Any]:
    _, batches = read_batches(location_of(table_uri))
    return {"rows": sum(b.num_rows for b in batches)}


# --- the run --------------------------------------------------------------------------------------

CPU_COLUMNS = ("side CPU s", "gateway CPU s", "store CPU s")


def _cpu(target: Any, run: Any, name: str, *args: Any, **kwargs: Any) -> Any:
    """`run(name, ...)`'s Result, with the CPU seconds its side's process, this process (the
    gateway's, idle but for the ferry append) and the store spent meanwhile: on two cores
    shared by all three, their sum is what bounds the side's wall time."""
    gateway, store = process_cpu_seconds(os.getpid()), process_cpu_seconds(target.server_pid)
    result = run(name, *args, **kwargs)
    result.extra.update({"side CPU s": f"{result.extra['cpu_seconds']:.2f}",
                         "gateway CPU s": f"{process_cpu_seconds(os.getpid()) - gateway:.2f}",
                         "store CPU s": f"{process_cpu_seconds(target.server_pid) - store:.2f}"})
    return result



def _serve(app: Any) -> tuple[str, Any, threading.Thread]:
    import uvicorn

    from deployments.server import free_port

    port = free_port("127.0.0.1")
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        if not thread.is_alive():
            raise RuntimeError("the gateway did not start")
        time.sleep(0.05)
    return f"http://127.0.0.1:{port}", server, thread


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="ferry bench stream", description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=200_000, help="rows appended (default 200,000)")
    parser.add_argument("--batch-rows", type=int, default=5_000, help="rows per append (default 5,000)")
    parser.add_argument("--repeat", type=int, default=1,
                        help="runs per side, interleaved (each append run to a new stream and object); the median is shown")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="ferry-bench-stream-") as scratch, seaweed_server(auth=True) as target:
        # SeaweedFS allocates a bucket's volumes at its first write (~0.2 s): paid here, not by
        # whichever side writes first (pyarrow write, which paid it alone until now)
        target.client().put_object(Bucket=target.bucket, Key="warm-up", Body=b"x")
        saved = {k: os.environ.get(k) for k in target.env}
        os.environ.update(target.env)  # this process's gateway reaches the store the usual way
        try:
            source = Path(scratch, "telemetry.parquet")
            nbytes = make_source(source, args.rows)

            from ferry.gateway.app import create_app
            from storage_core.catalog import Catalog
            from storage_core.catalog.devices import add_device_token
            from storage_core.catalog.streams import get_stream
            from storage_core.config import load_settings
            from storage_core.keys import parse_uri
            from storage_core.streams.commit import compact_stream

            catalog = Catalog(f"sqlite:///{scratch}/catalog.db")
            token = add_device_token(catalog, "bench-robot").token
            app = create_app(catalog, destination=parse_uri(f"s3://{target.bucket}/lake"), emitter=lambda event: None,
                             settings=load_settings())
            url, server, thread = _serve(app)
            try:
                def side(name: str, func: Any, *side_args: Any) -> Any:
                    return _cpu(target, run_python, name, func, *side_args, nbytes=nbytes, env=target.env)

                writes, appends = [], []
                for run in range(args.repeat):  # interleaved, so drift in the machine hits both sides
                    writes.append(side("pyarrow write", pyarrow_write_side, str(source), target.bucket, args.batch_rows,
                                       f"direct/telemetry-{run}.parquet"))
                    appends.append(side("ferry append", ferry_append_side, str(source), url, token, args.batch_rows,
                                        f"{scratch}/state-{run}.json", f"bench-{run}"))
                results = [median_run(writes), median_run(appends)]
                info = get_stream(catalog, "bench-robot/bench-0")
                direct, plain, compacted = [], [], []
                for _ in range(args.repeat):
                    direct.append(side("pyarrow read", pyarrow_read_side, target.bucket, "direct/telemetry-0.parquet"))
                    plain.append(side("ferry read", ferry_read_side, info.table_uri))
                started = time.perf_counter()
                compact_stream(catalog, "bench-robot/bench-0")
                compact_seconds = time.perf_counter() - started
                for _ in range(args.repeat):
                    compacted.append(side("ferry read compacted", ferry_read_side, info.table_uri))
                reads = [median_run(direct), median_run(plain), median_run(compacted)]
            finally:
                server.should_exit = True
                thread.join(timeout=10)
        finally:
            for key, value in saved.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value

    for r in (*results, *reads):
        if r.extra.get("rows") != args.rows:
            print(f"{r.name}: {r.extra.get('rows')} rows, not {args.rows}", file=sys.stderr)
            return 1
    title = f"{args.rows:,} telemetry rows ({nbytes / 1e6:.1f} MB in Arrow), batches of {args.batch_rows:,}"
    print(format_table(f"append: {title}", results, baseline="pyarrow write", extra_columns=(*CPU_COLUMNS, "appends")))
    print(format_table(f"read: {title}", reads, baseline="pyarrow read", extra_columns=CPU_COLUMNS))
    for r in (*results, *reads):
        print(f"{r.name}: {args.rows / r.seconds:,.0f} rows/s")
    print(f"ferry stream compact (between the two ferry reads): {compact_seconds:.2f} s")
    append_ratio = ratio(results, "ferry append", "pyarrow write")
    read_ratio = ratio(reads, "ferry read", "pyarrow read")
    compacted_ratio = ratio(reads, "ferry read compacted", "pyarrow read")
    print(f"{'PASS' if append_ratio >= TARGET_APPEND else 'FAIL'} ferry append {append_ratio:.2f}x pyarrow write (target {TARGET_APPEND}x)")
    print(f"{'PASS' if read_ratio >= TARGET_READ else 'FAIL'} ferry read {read_ratio:.2f}x pyarrow read (target {TARGET_READ}x)")
    print(f"{'PASS' if compacted_ratio >= TARGET_READ else 'FAIL'} ferry read compacted {compacted_ratio:.2f}x pyarrow read "
          f"(target {TARGET_READ}x)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
