"""`ferry stream append|show|read` end to end: a client SIGKILLed mid-way and rerun, lost
acknowledgements, reads verified."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from storage_core.catalog.streams import get_stream
from storage_core.device.frame import decode_blocks
from storage_core.device.stream import stream_append
from storage_core.errors import CatalogUnavailable, CorruptFrame
from storage_core.streams.read import open_dataset
from storage_core.streams.table import location_of
from tests.streams.conftest import telemetry
from tests.streams.test_stream_append import committed

ROOT = Path(__file__).resolve().parents[2]


def ferry(*args: str, env: dict[str, str], **kwargs) -> subprocess.Popen:  # noqa: ANN003
    return subprocess.Popen([sys.executable, "-m", "ferry.cli", *args], cwd=env["FERRY_HOME"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, **kwargs)


@pytest.fixture
def cli_env(gateway, tmp_path: Path, sqlite_url: str) -> dict[str, str]:  # noqa: ANN001
    env = {k: v for k, v in os.environ.items() if not k.startswith("FERRY_")}
    env.update(PYTHONPATH=os.pathsep.join([str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]),
               FERRY_HOME=str(tmp_path), FERRY_DATABASE_URL=sqlite_url, FERRY_DEVICE_TOKEN=gateway.token)
    return env


def _kill_and_rerun(gateway, cli_env, source: Path, rows: int, batch: int) -> None:  # noqa: ANN001
    # a small window, so that the kill finds appends committed and others not yet sent
    args = ("stream", "append", "state", str(source), "--gateway", gateway.url, "--batch-rows", str(batch),
            "--inflight", "4", "--json")
    first = ferry(*args, env=cli_env)
    deadline = time.monotonic() + 600
    while True:  # kill once some, not all, appends are committed
        info = get_stream(gateway.catalog, "cam-1/state")
        if info is not None and info.committed_end >= rows // 3:
            break
        assert first.poll() is None, first.stderr.read().decode()
        assert time.monotonic() < deadline
        time.sleep(0.05)
    first.send_signal(signal.SIGKILL)
    first.wait()
    killed_at = get_stream(gateway.catalog, "cam-1/state").committed_end
    assert killed_at < rows
    for run in range(2):
        done = ferry(*args, env=cli_env)
        stdout, stderr = done.communicate(timeout=900)
        assert done.returncode == 0, stderr.decode()
        report = json.loads(stdout)
        assert report["committed_end"] == rows
        if run == 0:  # only what was not committed (an append in flight at the kill may land after it)
            assert 0 < report["rows_sent"] <= rows - killed_at
        else:
            assert (report["rows_sent"], report["batches_sent"]) == (0, 0)
    table = committed(gateway, "cam-1/state")
    assert table.num_rows == rows
    assert table.equals(telemetry(rows))  # each row once, in order, equal to the source


@pytest.mark.slow
def test_a_killed_client_reruns_to_exactly_the_source(gateway, cli_env, parquet_source) -> None:  # noqa: ANN001
    _kill_and_rerun(gateway, cli_env, parquet_source(20_000), 20_000, 1_000)


@pytest.mark.soak
def test_200k_rows_killed_client_soak(gateway, cli_env, parquet_source) -> None:  # noqa: ANN001
    _kill_and_rerun(gateway, cli_env, parquet_source(200_000), 200_000, 5_000)


def test_lost_acknowledgements_are_acknowledged_as_duplicates(gateway, parquet_source, tmp_path, monkeypatch) -> None:  # noqa: ANN001
    """The gateway fails after the table commit: once before the catalog's commit (the
    table's app transaction catches the catalog up), once before answering."""
    import ferry.gateway.streams as routes
    from storage_core.catalog.streams import LockedStream

    real_record, real_append = LockedStream.record, routes.append_frames
    faults = {"record": 1, "answer": 1}

    def record_then_fail(self, append, **kwargs):  # noqa: ANN001, ANN202
        if append.first_offset == 2_000 and faults["record"]:
            faults["record"] -= 1
            raise CatalogUnavailable("catalog connection dropped after the table commit")
        return real_record(self, append, **kwargs)

    def commit_then_die(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        results = real_append(*args, **kwargs)
        if any(getattr(r, "first_offset", None) == 6_000 for r in results) and faults["answer"]:
            faults["answer"] -= 1
            raise ConnectionResetError("the gateway died before answering")
        return results

    monkeypatch.setattr(LockedStream, "record", record_then_fail)
    monkeypatch.setattr(routes, "append_frames", commit_then_die)
    report = stream_append([parquet_source(10_000)], stream="state", gateway=gateway.url, token=gateway.token,
                           batch_rows=2_000, state_file=tmp_path / "s.json")
    assert faults == {"record": 0, "answer": 0}
    # each fault leaves at least one append committed but unanswered (a group commit may
    # hold the appends in flight behind it too): sent again, acknowledged as duplicates
    assert report.committed_end == 10_000 and report.batches_sent + report.duplicates == 5
    assert report.duplicates >= 2
    assert committed(gateway, "cam-1/state").equals(telemetry(10_000))
    assert get_stream(gateway.catalog, "cam-1/state").committed_end == 10_000


@pytest.mark.slow
def test_read_as_arrow_and_framed(gateway, cli_env, parquet_source, tmp_path) -> None:  # noqa: ANN001
    stream_append([parquet_source(12_000)], stream="state", gateway=gateway.url, token=gateway.token,
                  batch_rows=5_000, state_file=tmp_path / "s.json")
    expected = telemetry(12_000)
    for fmt in ("arrow", "framed"):
        out = tmp_path / f"out.{fmt}"
        done = ferry("stream", "read", "cam-1/state", "--format", fmt, "--out", str(out), env=cli_env)
        _, stderr = done.communicate(timeout=300)
        assert done.returncode == 0, stderr.decode()
        raw = out.read_bytes()
        if fmt == "framed":
            raw = b"".join(decode_blocks(raw[i:i + 10_000] for i in range(0, len(raw), 10_000)))
            bad = bytearray(out.read_bytes())
            bad[5_000] ^= 1
            with pytest.raises(CorruptFrame, match="data offset 4096"):
                b"".join(decode_blocks([bytes(bad)]))
        table = pa.ipc.open_stream(io.BytesIO(raw)).read_all()
        assert table.sort_by("seq").equals(expected)
    shown = ferry("stream", "show", "cam-1/state", "--json", env=cli_env)
    stdout, _ = shown.communicate(timeout=120)
    info = json.loads(stdout)
    assert (info["rows"], info["table_format"]) == (12_000, "delta")
    columns = ferry("stream", "read", "cam-1/state", "--columns", "seq,state", "--format", "csv", env=cli_env)
    stdout, stderr = columns.communicate(timeout=120)
    assert columns.returncode == 0, stderr.decode()
    assert stdout.decode().splitlines()[0] == '"seq","state"' and len(stdout.decode().splitlines()) == 12_001
    missing = ferry("stream", "show", "cam-9/none", env=cli_env)
    _, stderr = missing.communicate(timeout=120)
    assert missing.returncode == 1 and stderr.decode().startswith("error: no stream 'cam-9/none'")


def test_read_through_the_local_cache(gateway, cli_env, parquet_source, tmp_path) -> None:  # noqa: ANN001
    stream_append([parquet_source(12_000)], stream="state", gateway=gateway.url, token=gateway.token,
                  batch_rows=5_000, state_file=tmp_path / "s.json")
    for _ in range(2):  # filled, then read from the cache
        read = ferry("stream", "read", "cam-1/state", "--cache", "always", "--format", "parquet",
                     "--out", str(tmp_path / "out.parquet"), env=cli_env)
        _, stderr = read.communicate(timeout=300)
        assert read.returncode == 0, stderr.decode()
        assert pq.read_table(tmp_path / "out.parquet").sort_by("seq").equals(telemetry(12_000))
    cached = [p for p in (Path(cli_env["FERRY_HOME"]) / "cache").rglob("*") if p.is_file() and p.suffix != ".json"]
    files = open_dataset(location_of(get_stream(gateway.catalog, "cam-1/state").table_uri)).files
    assert len(cached) == len(files) > 0  # one verified copy per file the Delta log names
    bad = ferry("stream", "read", "cam-1/state", "--cache", "sometimes", env=cli_env)
    _, stderr = bad.communicate(timeout=120)
    assert bad.returncode == 1
    assert stderr.decode().splitlines() == ["error: --cache must be one of adaptive, always, never (got 'sometimes')"]


@pytest.mark.slow
def test_compaction_keeps_the_rows_and_the_offset_rules(gateway, cli_env, parquet_source, tmp_path) -> None:  # noqa: ANN001
    source, state = parquet_source(10_000), tmp_path / "s.json"
    stream_append([source], stream="state", gateway=gateway.url, token=gateway.token, batch_rows=1_000, state_file=state,
                  per_request=1)
    commits = get_stream(gateway.catalog, "cam-1/state").table_version + 1  # a file each (a group commit's appends share one)
    done = ferry("stream", "compact", "cam-1/state", "--json", env=cli_env)
    stdout, stderr = done.communicate(timeout=300)
    assert done.returncode == 0, stderr.decode()
    assert json.loads(stdout)["numFilesRemoved"] == commits > 1
    assert committed(gateway, "cam-1/state").equals(telemetry(10_000))
    # a repeated append is still a duplicate, and the stream goes on after the compaction
    from storage_core.device.stream import StreamClient, encode_append

    client = StreamClient(gateway.url, gateway.token)
    try:
        again = client.append("cam-1", "state", encode_append("state", 1, 9_000, telemetry(1_000, start=9_000), "zstd"))
        assert again["result"] == "duplicate"
        more = client.append("cam-1", "state", encode_append("state", 1, 10_000, telemetry(500, start=10_000), "zstd"))
        assert more["committed_end"] == 10_500
    finally:
        client.close()
    assert committed(gateway, "cam-1/state").equals(telemetry(10_500))
