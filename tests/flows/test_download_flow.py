"""The download flow and `ferry query` / `ferry download` on a real Prefect API, SeaweedFS
and SQLite: a landing folder is ingested, then restored and compared byte for byte."""

from __future__ import annotations

import json

import pytest
from pydantic import ValidationError

from flows.download import DownloadParams, download
from flows.ingest import ingest
from storage_core.download import WritePlanError
from tests.flows.conftest import MiB, run_ferry, write_landing

pytestmark = pytest.mark.slow  # flows and `ferry` subprocesses against a real Prefect API

FILES = {
    "robot-01/run-a/log.mcap": 7 * MiB,
    "robot-01/run-a/video/front/0000.h264": 300_000,
    "robot-01/run-a/video/front/0001.h264": 200_000,
    "robot-02/run-b/telemetry.parquet": 90_000,
}
RESTORED = {
    "robot-01/run-a/mcap.mcap": "robot-01/run-a/log.mcap",
    "robot-01/run-a/video/front/0000.h264": "robot-01/run-a/video/front/0000.h264",
    "robot-01/run-a/video/front/0001.h264": "robot-01/run-a/video/front/0001.h264",
    "robot-02/run-b/parquet.parquet": "robot-02/run-b/telemetry.parquet",
}


@pytest.fixture
def ingested(ferry_env, bucket, tmp_path):
    source = write_landing(tmp_path / "landing", FILES)
    ingest(str(source), to=f"s3://{bucket.bucket}/fleet")
    return source


def test_download_flow_restores_everything_verified_and_reports_it(ingested, tmp_path):
    dest = tmp_path / "restore"
    report = download(DownloadParams(dest=str(dest)))
    assert report.files == 4 and report.files_kept == 0 and report.bytes_fetched == sum(FILES.values())
    for restored, original in RESTORED.items():
        assert (dest / restored).read_bytes() == (ingested / original).read_bytes()
    # a second run keeps every identical file and moves nothing
    again = download(DownloadParams(dest=str(dest)))
    assert again.files_kept == 4 and again.bytes_fetched == 0
    # without resume, existing files are refused before any write
    with pytest.raises(WritePlanError, match="already exists"):
        download(DownloadParams(dest=str(dest), resume=False))


def test_download_flow_selects_by_device_and_modality(ingested, tmp_path):
    dest = tmp_path / "videos"
    report = download(DownloadParams(dest=str(dest), device_id="robot-01", modality="video", layout="by_modality"))
    assert report.files == 2
    assert sorted(str(p.relative_to(dest)) for p in dest.rglob("*") if p.is_file()) == [
        "video/robot-01/run-a/front/0000.h264", "video/robot-01/run-a/front/0001.h264"]


def test_download_params_are_validated_like_the_ui_form_would_be():
    with pytest.raises(ValidationError, match="absolute path"):
        DownloadParams(dest="relative/dir")
    with pytest.raises(ValidationError, match="since must be before until"):
        DownloadParams(dest="/tmp/x", since="2026-11-21T10:00", until="2026-11-21T09:00")
    with pytest.raises(ValidationError):
        DownloadParams(dest="/tmp/x", layout="sideways")


def test_cli_query_and_download(ingested, ferry_env, tmp_path):
    result = run_ferry(["query", "--device", "robot-01", "--json"], ferry_env)
    assert result.returncode == 0, result.stderr
    [rec] = json.loads(result.stdout)
    assert (rec["device_id"], rec["recording"], rec["files"], rec["modalities"]) == ("robot-01", "run-a", 3, ["mcap", "video"])

    dest = tmp_path / "out"
    result = run_ferry(["download", "--dest", str(dest), "--json"], ferry_env)
    assert result.returncode == 0, result.stderr
    outcome = json.loads(result.stdout)
    assert outcome["files"] == 4 and outcome["bytes_fetched"] == sum(FILES.values())
    assert [str(p) for p in sorted(dest / r for r in RESTORED)] == sorted(outcome["paths"])

    # again: refused in one line naming the way out, nothing touched; --resume keeps them
    result = run_ferry(["download", "--dest", str(dest)], ferry_env)
    assert result.returncode == 1 and result.stderr.count("\n") == 1, result.stderr
    assert "already exists" in result.stderr and "Traceback" not in result.stderr
    result = run_ferry(["download", "--dest", str(dest), "--resume", "--json"], ferry_env)
    assert result.returncode == 0 and json.loads(result.stdout)["files_kept"] == 4


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["query", "--since", "yesterday"], "is not an ISO 8601 time"),
        (["query", "--since", "2026-11-21T10:00", "--until", "2026-11-21T09:00"], "empty time window"),
        (["download", "--dest", "/tmp/x", "--layout", "sideways"], "by_recording, by_modality or flat"),
        (["download", "--dest", "/tmp/x", "--device", "nobody"], "nothing in the catalog matches"),
    ],
)
def test_cli_bad_input_is_one_line(args, message, ferry_env):
    result = run_ferry(args, ferry_env)
    assert result.returncode != 0
    assert message in result.stderr and "Traceback" not in result.stderr, result.stderr
