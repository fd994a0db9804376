"""`ferry summarize` as a user runs it (subprocesses), against SeaweedFS and the session's Prefect API."""

from __future__ import annotations

import json

import pytest

from bench.summary import sample_mcap_bytes
from flows.ingest import ingest
from tests.flows.conftest import run_ferry
from tests.flows.test_summarize_flow import landing
from tests.integration.test_summaries import mcap_bytes, parquet_bytes

pytestmark = pytest.mark.slow  # `ferry` subprocesses and flows against a real Prefect API

KiB = 1024


def test_summarize_uri_json_takes_at_most_two_requests(ferry_env, bucket):
    data, counts = sample_mcap_bytes(2 * 1024 * KiB, chunk_size=64 * KiB)  # a summary larger than one small GET
    bucket.put("r1/rec/run.mcap", data, size=len(data))
    table = parquet_bytes(9)
    bucket.put("r1/rec/t.parquet", table, size=len(table))
    uri = f"s3://{bucket.bucket}/r1/rec/run.mcap"

    done = run_ferry(["summarize", uri, f"s3://{bucket.bucket}/r1/rec/t.parquet", "--json"], ferry_env)
    assert done.returncode == 0, done.stderr
    mcap, parquet = json.loads(done.stdout)
    assert mcap["uri"] == uri and mcap["modality"] == "mcap"
    assert mcap["requests"] <= 2 and 0 < mcap["bytes_fetched"] < len(data) // 2
    summary = mcap["summary"]
    assert summary["source"] == "summary" and summary["truncated"] is False
    assert {t["topic"]: t["message_count"] for t in summary["topics"]} == counts
    assert summary["start_time"] < summary["end_time"]
    assert parquet["summary"]["num_rows"] == 9 and parquet["requests"] <= 2


def test_summarize_uri_prints_topics_and_cost(ferry_env, bucket):
    data = mcap_bytes({"/imu": 3, "/gps": 2})
    bucket.put("a.mcap", data, size=len(data))
    done = run_ferry(["summarize", f"s3://{bucket.bucket}/a.mcap"], ferry_env)
    assert done.returncode == 0, done.stderr
    for text in ("/imu", "/gps", "test/Msg", "5 message(s)", "source: summary", "2023-11-14T22:13:20Z", "1 request(s)"):
        assert text in done.stdout


@pytest.mark.parametrize(
    ("uri", "expected"),
    [
        ("http://example.com/a.mcap", "unsupported scheme 'http'"),
        ("s3://{bucket}/missing.mcap", "no such object: s3://{bucket}/missing.mcap"),
        ("s3://{bucket}/fake.mcap", "s3://{bucket}/fake.mcap is not an MCAP file"),
        ("s3://{bucket}/video.h264", "only .mcap and .parquet"),
    ],
)
def test_summarize_uri_failures_are_one_line(ferry_env, bucket, uri, expected):
    bucket.put("fake.mcap", b"plain text\n" * 50, size=550)
    done = run_ferry(["summarize", uri.format(bucket=bucket.bucket), "--json"], ferry_env)
    assert done.returncode != 0 and done.stdout == ""
    [line] = done.stderr.strip().splitlines()
    assert line.startswith("error: ") and expected.format(bucket=bucket.bucket) in line


def test_summarize_catalog_mode_runs_the_flow(ferry_env, bucket, tmp_path):
    source = landing(tmp_path / "in", {"r1/rec/a.mcap": mcap_bytes({"/imu": 2}), "r2/rec/fake.mcap": b"x" * 300})
    ingest(str(source), to=f"s3://{bucket.bucket}")  # summarizes already; fake.mcap fails

    done = run_ferry(["summarize", "--device", "r1", "--force", "--json"], ferry_env)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert (report["objects"], report["summarized"], report["failed"]) == (1, 1, 0) and report["requests"] >= 1

    missing = run_ferry(["summarize", "--missing"], ferry_env)
    assert missing.returncode == 1
    assert "summarized 0, failed 1" in missing.stdout
    assert f"failed: s3://{bucket.bucket}/r2/rec/fake.mcap: " in missing.stderr
    assert missing.stderr.strip().splitlines()[-1] == "error: 1 of 1 object(s) could not be summarized (see summary_error)"

    bad = run_ferry(["summarize", "--since", "2026-02-01", "--until", "2026-01-01"], ferry_env)
    assert bad.returncode == 1 and bad.stderr.strip() == "error: since must be before until"
