"""Every side of `ferry bench`'s peer jobs works end to end, at tiny sizes, against the
session's SeaweedFS (access keys on, no bucket created on write) and Prefect API: s5cmd,
rclone and aws-cli as installed by the `bench` extra, `python -m ferry.cli` and curl. Each
side's bytes are checked inside the bench (BenchmarkFailed otherwise). No timings asserted."""

from __future__ import annotations

import pytest

from bench.harness import S3Target
from bench.peers import PEERS, Job, PeerBench, find_binary, format_job
from tests.conftest import ACCESS_KEY, SECRET_KEY

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]  # eight `ferry` runs and twelve peer runs

JOBS = [Job("upload", 20, 8 * 1024), Job("download", 20, 8 * 1024), Job("upload", 1, 6 * 2**20), Job("download", 1, 6 * 2**20)]


def test_every_side_moves_the_bytes_of_every_job(seaweed, bucket, prefect_api, tmp_path) -> None:
    missing = [p for p in PEERS if find_binary(p) is None]
    if missing:
        pytest.skip(f"peers not installed: {', '.join(missing)} (pip install -e '.[bench]')")
    target = S3Target(seaweed.endpoint, bucket.bucket, ACCESS_KEY, SECRET_KEY)
    bench = PeerBench(target, tmp_path, prefect_api)
    bench.warm_up()  # the ferry side runs in the warm ferry process, as a user's later commands do
    try:
        for job in JOBS:
            report = bench.run(job, repeat=1)
            sides = {r.name: r for r in report.results}
            assert sorted(sides) == sorted([*PEERS, "ferry", *([] if job.many else ["curl"])]), format_job(report)
            assert all(r.nbytes == job.nbytes and r.seconds > 0 and r.peak_rss_bytes > 0 for r in sides.values())
            assert sides["ferry"].extra["phase s"] >= 0  # ferry's own report of its transfer phase
            assert not report.skipped
            assert report.job.title in format_job(report)
        log = (tmp_path / "ferry-home" / "prefect" / "ferry-warm.log").read_text()
        assert log.count(": ferry ingest ") >= 2  # the upload jobs' ingests ran there
    finally:
        bench.stop_warm()
