"""The warm local orchestrator (deployments/local_server.py): with PREFECT_API_URL unset,
`ferry server start|status|stop` and flow commands start one real `prefect server start`
under PREFECT_HOME, reuse it, see through stale state, and stop it."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from deployments.local_server import DEFAULT_PORT, STATE_FILE, is_server_process, read_state, stop_local_server
from deployments.server import api_health
from ferry.cli import warm

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def cli_env(tmp_path: Path) -> Iterator[dict[str, str]]:
    """A user's environment without PREFECT_API_URL, PREFECT_HOME in tmp; the default port
    held by this test, so the server must find another (and no test takes 4200). Whatever
    server and warm ferry process the test started are stopped afterwards."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FERRY_", "PREFECT_"))}
    home = tmp_path / "prefect"
    env.update(PYTHONPATH=str(ROOT), PREFECT_HOME=str(home), FERRY_HOME=str(tmp_path / "ferry"),
               FERRY_STORE=f"file://{tmp_path / 'store'}")
    holder = socket.socket()
    try:
        holder.bind(("127.0.0.1", DEFAULT_PORT))
    except OSError:
        pass  # taken already: the same situation
    try:
        yield env
    finally:
        holder.close()
        warm.stop(home)
        stop_local_server(home)


def warm_process(home: Path, *, timeout: float = 180) -> int:
    """The pid of the warm ferry process of `home` once it listens (it imports Prefect first)."""
    return warm.wait_listening(home, timeout=timeout)


def commands_run_warm(home: Path) -> list[str]:
    """The commands the warm process of `home` ran (its log's lines)."""
    return [line.split(": ", 1)[1] for line in (home / warm.LOG_NAME).read_text().splitlines() if ": ferry " in line]


def ferry(args: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "ferry.cli", *args], env=env, cwd=cwd, capture_output=True,
                          text=True, timeout=400)


def ferry_json(args: list[str], env: dict[str, str], cwd: Path) -> dict:
    done = ferry([*args, "--json"], env, cwd)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


@pytest.mark.slow  # starts a real Prefect server (6-12 s idle, more on a busy machine)
def test_start_status_stale_state_and_stop(cli_env: dict[str, str], tmp_path: Path) -> None:
    home = Path(cli_env["PREFECT_HOME"])
    assert ferry_json(["server", "status"], cli_env, tmp_path)["state"] == "none"

    # a state file left by a server that is gone: seen as stale, and replaced on start
    home.mkdir(parents=True)
    (home / STATE_FILE).write_text(json.dumps({"pid": dead_pid(), "port": 9, "started_at": "2026-01-01T00:00:00+00:00"}))
    stale = ferry_json(["server", "status"], cli_env, tmp_path)
    assert stale["state"] == "stale" and not stale["running"]

    started = ferry(["server", "start", "--json"], cli_env, tmp_path)
    assert started.returncode == 0, started.stderr
    assert "starting a local Prefect server" in started.stderr and str(home / "server.log") in started.stderr
    status = ferry_json(["server", "status"], cli_env, tmp_path)
    assert status["state"] == "running" and status["pid"] == json.loads(started.stdout)["pid"]
    assert status["api_url"] != f"http://127.0.0.1:{DEFAULT_PORT}/api"  # 4200 is held by this test
    assert api_health(status["api_url"]) is None
    assert status["ui_url"] == status["api_url"].removesuffix("/api")

    # a second start finds it running: same process, no progress line
    again = ferry(["server", "start", "--json"], cli_env, tmp_path)
    assert again.returncode == 0 and "starting" not in again.stderr
    assert json.loads(again.stdout)["pid"] == status["pid"]

    server = read_state(home)
    assert server is not None and is_server_process(server.pid, server.port)
    warm_pid = warm_process(home)  # started beside the server
    assert ferry_json(["server", "status"], cli_env, tmp_path)["warm"]["pid"] == warm_pid
    stopped = ferry_json(["server", "stop"], cli_env, tmp_path)
    assert stopped["stopped"] and stopped["pid"] == server.pid
    assert not is_server_process(server.pid, server.port)
    assert not warm.is_alive(warm_pid) and not warm.socket_path(home).exists()
    assert api_health(server.api_url, timeout=1.0) is not None
    assert not (home / STATE_FILE).exists()
    assert ferry_json(["server", "status"], cli_env, tmp_path)["state"] == "none"


@pytest.mark.slow  # a real Prefect server and two `ferry ingest` subprocesses importing Prefect
def test_ingest_starts_the_server_and_the_next_ingest_reuses_it(cli_env: dict[str, str], tmp_path: Path) -> None:
    landing = tmp_path / "landing" / "cam-1" / "run-1"
    landing.mkdir(parents=True)
    (landing / "a.txt").write_bytes(b"hello\n")

    first = ferry(["ingest", str(tmp_path / "landing"), "--json"], cli_env, tmp_path)
    assert first.returncode == 0, first.stderr
    assert json.loads(first.stdout)["files_stored"] == 1
    assert "starting a local Prefect server" in first.stderr
    server = read_state(Path(cli_env["PREFECT_HOME"]))
    assert server is not None and is_server_process(server.pid, server.port)

    # the next one runs in the warm ferry process the first one left: same output, same exit
    home = Path(cli_env["PREFECT_HOME"])
    warm_process(home)
    (landing / "b.txt").write_bytes(b"again\n")
    second = ferry(["ingest", str(tmp_path / "landing"), "--json"], cli_env, tmp_path)
    assert second.returncode == 0, second.stderr
    assert "starting" not in second.stderr
    assert json.loads(second.stdout)["files_stored"] == 1
    assert read_state(home) == server  # same pid, same port
    assert commands_run_warm(home) == [f"ferry ingest {tmp_path / 'landing'} --json"]

    # a failure there is the same one line and exit code, on this command's stderr
    missing = ferry(["ingest", str(tmp_path / "no-such-landing")], cli_env, tmp_path)
    assert missing.returncode == 1 and missing.stderr.startswith("error: ") and len(missing.stderr.splitlines()) == 1
    assert len(commands_run_warm(home)) == 2

    # both runs were recorded by that server: the UI shows them
    request = urllib.request.Request(f"{server.api_url}/flow_runs/filter", data=b"{}", method="POST",
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        runs = json.loads(response.read())
    assert len([r for r in runs if r["state_type"] == "COMPLETED"]) >= 2

    # the CLI's own flow runs send no heartbeats (ending a run waited up to 1 s for Prefect's
    # heartbeat thread), unless the user asks for them
    (landing / "c.txt").write_bytes(b"beat\n")
    asked = ferry(["ingest", str(tmp_path / "landing"), "--json"],
                  {**cli_env, "PREFECT_API_URL": server.api_url, "PREFECT_FLOWS_HEARTBEAT_FREQUENCY": "30"}, tmp_path)
    assert asked.returncode == 0, asked.stderr
    request = urllib.request.Request(f"{server.api_url}/flow_runs/filter", method="POST",
                                     data=json.dumps({"sort": "EXPECTED_START_TIME_DESC", "limit": 1}).encode(),
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        beating = {json.loads(response.read())[0]["id"]}
    deadline = time.monotonic() + 60
    while not (beats := _heartbeat_runs(server.api_url)) >= beating:
        assert time.monotonic() < deadline, f"no heartbeat of the run that asked for them: {beats}"
        time.sleep(0.5)
    assert beats == beating, "a run that did not ask for heartbeats sent them"


def _heartbeat_runs(api_url: str) -> set[str]:
    """The flow runs that sent Prefect a heartbeat event."""
    body = json.dumps({"filter": {"event": {"name": ["prefect.flow-run.heartbeat"]}}, "limit": 50}).encode()
    request = urllib.request.Request(f"{api_url}/events/filter", data=body, method="POST",
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        events = json.loads(response.read())["events"]
    return {e["resource"]["prefect.resource.id"].removeprefix("prefect.flow-run.") for e in events}


def test_a_dead_or_recycled_pid_is_stale_and_stop_forgets_it(tmp_path: Path) -> None:
    for pid in (dead_pid(), os.getpid()):  # gone, or alive but not a Prefect server (a recycled pid)
        (tmp_path / STATE_FILE).write_text(json.dumps({"pid": pid, "port": 4321, "started_at": "2026-01-01T00:00:00+00:00"}))
        assert not is_server_process(pid, 4321)
        found = stop_local_server(tmp_path)
        assert found.state == "stale" and not found.alive
        assert not (tmp_path / STATE_FILE).exists()
    assert os.getpid() > 0  # this process survived its own pid being "stopped"


def test_a_state_file_that_does_not_parse_is_no_server(tmp_path: Path) -> None:
    for text in ("{", '{"pid": 1}', '{"pid": 1, "port": 2, "started_at": "yesterday"}'):
        (tmp_path / STATE_FILE).write_text(text)
        assert read_state(tmp_path) is None
