"""Faults from outside the process: the server restarts mid-download, the downloader is killed."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import boto3
import pytest
from botocore.config import Config

from storage_core.checksums import crc32c
from storage_core.download import DownloadSource, RetryPolicy, download
from storage_core.stores.s3 import S3Store

pytestmark = pytest.mark.slow  # restarts the session's SeaweedFS, kills a download process

MiB = 1024 * 1024


def make_source(store, key: str, data: bytes) -> DownloadSource:
    return DownloadSource(store=store, key=key, size=len(data), crc32c=crc32c(data), device_id="dev1",
                          recording="rec1", modality="video", segmented=True, relative_path="0001.mp4")


def test_server_restart_mid_download_is_ridden_out_by_retries(bucket, seaweed, tmp_path, caplog):
    data = os.urandom(12 * MiB)
    key = "dev1/rec1/video/0001.mp4"
    bucket.put(key, data, size=len(data), crc32c=crc32c(data))
    # boto3's own retries off, so the outage reaches (and is ridden out by) Ferry's per-range retries
    client = boto3.client(
        "s3", endpoint_url=seaweed.endpoint,
        config=Config(retries={"total_max_attempts": 1}, s3={"addressing_style": "path"},
                      request_checksum_calculation="when_required", response_checksum_validation="when_required"),
    )
    store = S3Store(bucket.bucket, client=client)
    starting: list[threading.Thread] = []

    def restart_once(nbytes: int) -> None:
        # after the first range: the server goes down now and comes back in the background,
        # so the next requests of the download meet a dead port
        if not starting:
            seaweed.stop()
            starting.append(threading.Thread(target=seaweed.start))
            starting[0].start()

    try:
        with caplog.at_level(logging.WARNING, logger="storage_core.download"):
            # the default budget rides out a restart of a few seconds; under a loaded CI
            # run SeaweedFS can take longer to come back, so this test gives it more time
            (path,) = download(make_source(store, key, data), tmp_path, chunk_size=MiB, max_workers=3,
                               on_progress=restart_once, retry=RetryPolicy(attempts=10))
    finally:
        for thread in starting:
            thread.join()
    assert path.read_bytes() == data
    assert any("retry" in r.getMessage() for r in caplog.records)  # the outage was met, not missed
    assert not list(tmp_path.rglob("*.part"))


CHILD = textwrap.dedent(
    """
    import sys, time
    from storage_core.download import DownloadSource, download
    from storage_core.stores.s3 import S3Store, make_client

    endpoint, bucket, key, size, crc, dest = sys.argv[1:]
    inner = S3Store(bucket, client=make_client(endpoint_url=endpoint))

    class Slow:  # a slow link, so the parent can kill us mid-download
        uri = inner.uri
        def head(self, key):
            return inner.head(key)
        def get_range(self, key, start, end, *, if_match=None):
            time.sleep(0.05)
            return inner.get_range(key, start, end, if_match=if_match)

    def started(nbytes):
        print("progress", nbytes, flush=True)

    source = DownloadSource(store=Slow(), key=key, size=int(size), crc32c=int(crc), device_id="dev1",
                            recording="rec1", modality="video", segmented=True, relative_path="0001.mp4")
    download(source, dest, chunk_size=256 * 1024, max_workers=2, on_progress=started)
    print("finished", flush=True)
    """
)


def test_killed_process_leaves_nothing_at_the_final_path_and_a_rerun_completes(bucket, s3_env, tmp_path):
    data = os.urandom(8 * MiB)  # 32 slow ranges: about a second, killed after the first
    key = "dev1/rec1/video/0001.mp4"
    bucket.put(key, data, size=len(data), crc32c=crc32c(data))
    final = tmp_path / "dev1/rec1/video/0001.mp4"
    repo = Path(__file__).resolve().parents[2]
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, s3_env.endpoint, bucket.bucket, key, str(len(data)), str(crc32c(data)),
         str(tmp_path)],
        cwd=repo, env={**os.environ, "PYTHONPATH": str(repo)}, stdout=subprocess.PIPE, text=True,
    )
    try:
        line = child.stdout.readline()
        assert line.startswith("progress"), line
        os.kill(child.pid, signal.SIGKILL)
    finally:
        child.wait()
        child.stdout.close()
    assert child.returncode == -signal.SIGKILL
    assert not final.exists()
    assert Path(str(final) + ".part").exists()  # what a killed run leaves: only the temp file

    (path,) = download(make_source(bucket, key, data), tmp_path, chunk_size=MiB)
    assert path == final and final.read_bytes() == data
    assert not list(tmp_path.rglob("*.part"))
