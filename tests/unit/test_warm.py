"""The warm ferry process (ferry.cli.warm): which commands go there, what counts as other
code, and a real fork server: the caller's streams, folder and exit code, a refusal for other
Prefect settings, and a child that stops when its caller dies."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ferry.cli import warm

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(("argv", "expected"), [
    (["ingest", "landing"], True),
    (["summarize", "s3://b/k", "--json"], True),
    (["transactions", "resume", "abc"], True),
    (["transactions", "list"], False),
    (["query"], False),
    (["download", "--dest", "out"], True),
    (["ingest", "--help"], False),
    ([], False),
])
def test_which_commands_go_to_the_warm_process(argv: list[str], expected: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FERRY_WARM", "1")
    assert warm.wanted(argv) is expected
    monkeypatch.setenv("FERRY_WARM", "0")
    assert warm.wanted(argv) is False


def test_a_home_too_deep_for_a_socket_address_listens_in_a_private_folder(tmp_path: Path) -> None:
    deep = tmp_path.joinpath(*["a-rather-long-folder-name"] * 5)
    path = warm.socket_path(deep)
    assert len(str(path)) < 90 and path != deep / warm.SOCKET_NAME
    assert path.parent.stat().st_mode & 0o777 == 0o700 and path == warm.socket_path(deep)
    assert warm.socket_path(tmp_path) == tmp_path / warm.SOCKET_NAME


def test_the_code_fingerprint_sees_a_changed_source_file(tmp_path: Path) -> None:
    for package in warm.PACKAGES:
        (tmp_path / package).mkdir()
        (tmp_path / package / "m.py").write_text("x = 1\n")
    before = warm.code_fingerprint(tmp_path)
    assert warm.code_fingerprint(tmp_path) == before
    (tmp_path / "flows" / "m.py").write_text("x = 22\n")
    assert warm.code_fingerprint(tmp_path) != before


# a caller that offers ARGV to the warm process as if those commands were flow commands
CALLER = """
import json, sys
from pathlib import Path
from ferry.cli import warm
warm.WARM_COMMANDS |= {("query",), ("archive",)}
code = warm.delegate(sys.argv[2:], Path(sys.argv[1]))
sys.stderr.write(json.dumps({"delegated": code}) + "\\n")
sys.exit(0 if code is None else code)
"""


@pytest.fixture
def warm_home(tmp_path: Path):  # noqa: ANN201
    home = tmp_path / "prefect"
    home.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FERRY_", "PREFECT_"))}
    env.update(PYTHONPATH=str(ROOT), PREFECT_HOME=str(home), PREFECT_API_URL="http://127.0.0.1:9/api",
               FERRY_WARM="1", FERRY_DATABASE_URL=f"sqlite:///{tmp_path / 'catalog.db'}")
    server = subprocess.Popen([sys.executable, "-m", "ferry.cli.warm", str(home)], env=env, cwd=tmp_path,
                              stdout=subprocess.DEVNULL, stderr=(home / warm.LOG_NAME).open("ab"))
    try:
        deadline = time.monotonic() + 180
        while not (warm.read_state(home) or {}).get("listening"):
            assert server.poll() is None and time.monotonic() < deadline, (home / warm.LOG_NAME).read_text()
            time.sleep(0.1)
        yield home, env
    finally:
        warm.stop(home)
        server.wait(30)


def _caller(home: Path, env: dict[str, str], *argv: str, **options) -> subprocess.Popen:  # noqa: ANN003
    return subprocess.Popen([sys.executable, "-c", CALLER, str(home), *argv], env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, **options)


@pytest.mark.slow  # the warm process imports Prefect and every flow first
def test_a_command_runs_in_the_warm_process_with_the_callers_streams_and_code(warm_home, tmp_path: Path) -> None:  # noqa: ANN001
    home, env = warm_home
    folder = tmp_path / "elsewhere"
    folder.mkdir()
    done = _caller(home, env, "query", "--json", cwd=folder)
    stdout, stderr = done.communicate(timeout=120)
    assert done.returncode == 0 and json.loads(stdout) == [], stderr
    assert json.loads(stderr.splitlines()[-1]) == {"delegated": 0}
    assert "ferry query --json" in (home / warm.LOG_NAME).read_text()

    failed = _caller(home, env, "query", "--device", "x", "--since", "not-a-time")
    stdout, stderr = failed.communicate(timeout=120)
    assert failed.returncode == 1 and stderr.startswith("error: --since: 'not-a-time' is not an ISO 8601 time")

    # other Prefect settings: refused, the caller runs the command itself
    other = _caller(home, {**env, "PREFECT_API_URL": "http://127.0.0.1:10/api"}, "query", "--json")
    _, stderr = other.communicate(timeout=120)
    assert json.loads(stderr.splitlines()[-1]) == {"delegated": None}


@pytest.mark.slow
def test_a_caller_that_dies_takes_its_command_down(warm_home, tmp_path: Path) -> None:  # noqa: ANN001
    home, env = warm_home
    caller = _caller(home, env, "archive", "record", str(tmp_path / "archives"), stdin=subprocess.PIPE)
    deadline = time.monotonic() + 60
    while "ferry archive record" not in (home / warm.LOG_NAME).read_text():
        assert time.monotonic() < deadline
        time.sleep(0.1)
    child = int((home / warm.LOG_NAME).read_text().split(": ferry archive record")[0].rsplit("pid ", 1)[1])
    assert warm.is_alive(child)  # reading records from the caller's stdin
    caller.send_signal(signal.SIGKILL)
    caller.wait(30)
    while warm.is_alive(child):
        assert time.monotonic() < deadline, "the command outlived its caller"
        time.sleep(0.1)
    assert caller.stdin is not None
    caller.stdin.close()


def test_a_childs_caller_sees_the_end_of_its_output_before_the_prefect_drain(tmp_path: Path) -> None:
    """Once a child has sent the exit code, the caller's streams are given back: a caller
    reading stdout through a pipe sees its end while the child still drains Prefect (here,
    sleeps); what the child says afterwards goes to the warm process's log."""
    read_end, write_end = os.pipe()
    log_path = tmp_path / "warm.log"
    pid = os.fork()
    if pid == 0:  # the child, as _run_child leaves it: the caller's pipe on stdout
        try:
            log = os.open(log_path, os.O_WRONLY | os.O_CREAT, 0o600)
            os.dup2(write_end, 1)
            os.close(read_end)
            os.close(write_end)
            os.write(1, b"the report\n")
            warm._let_the_caller_go(log)
            os.write(2, b"said after the caller left\n")
            time.sleep(30)  # the drain
        finally:
            os._exit(0)
    os.close(write_end)
    try:
        with os.fdopen(read_end, "rb") as pipe:
            assert pipe.read() == b"the report\n"  # returns at the pipe's end, not the child's
        assert os.waitpid(pid, os.WNOHANG) == (0, 0)  # the end came while the child still "drains"
        deadline = time.monotonic() + 10
        while b"said after" not in log_path.read_bytes():
            assert time.monotonic() < deadline
            time.sleep(0.05)
    finally:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)


def test_tls_contexts_for_one_ca_file_are_built_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import ssl

    import certifi

    monkeypatch.setattr(ssl, "create_default_context", ssl.create_default_context)  # restored after the test
    warm._share_verified_tls_contexts()
    bundle = tmp_path / "ca.pem"
    bundle.write_bytes(Path(certifi.where()).read_bytes())
    first = ssl.create_default_context(cafile=str(bundle))
    assert ssl.create_default_context(cafile=str(bundle)) is first
    assert ssl.create_default_context(cafile=certifi.where()) is not first
    assert first.verify_mode == ssl.CERT_REQUIRED and first.check_hostname
    os.utime(bundle, ns=(1, 1))  # a CA file replaced since is read again
    assert ssl.create_default_context(cafile=str(bundle)) is not first
    assert ssl.create_default_context() is not ssl.create_default_context()  # no CA file: a new one each time
    with pytest.raises(FileNotFoundError):
        ssl.create_default_context(cafile=str(tmp_path / "missing.pem"))
