"""The warm local orchestrator: one `prefect server start` per PREFECT_HOME, started in the
background by the first `ferry` command that runs a flow while PREFECT_API_URL is not set,
left running, and reused by every later command (so the Prefect UI shows every CLI run).

    PREFECT_HOME/ferry-server.json   {"pid", "port", "started_at"}: the server this home runs
    PREFECT_HOME/server.log          its output (PrefectServer's log, appended to)
    PREFECT_HOME/ferry-server.lock   held while a server is checked, started or stopped, so
                                     two commands at once start one server, not two

A state file is trusted only as far as the facts hold: its pid must be a live
`prefect server start … --port PORT` process (a dead or recycled pid is stale) and
`/api/health` must answer; a server that is alive but silent gets the rest of its start
window, then is stopped and replaced. The port is Prefect's default 4200 when free (the
address `ferry serve` and the Prefect docs assume), else any free port.

Starting is PrefectServer's (deployments/server.py): analytics off in the child, a
one-line ConfigError naming the log when it exits or does not answer in time.
"""

from __future__ import annotations

import fcntl
import json
import os
import signal
import socket
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path

from deployments.server import PrefectServer, ServerAddresses, api_health, free_port
from storage_core.errors import ConfigError

STATE_FILE = "ferry-server.json"
LOCK_FILE = "ferry-server.lock"
DEFAULT_PORT = 4200
# `prefect server start` takes 6-12 s on an idle 2-core machine and far longer on a busy one
# (its first start also creates its database): generous, since giving up costs a whole command
START_TIMEOUT = 180.0
STOP_TIMEOUT = 20.0


@dataclass(frozen=True)
class LocalServer(ServerAddresses):
    """A server this PREFECT_HOME started (what its state file records)."""

    home: Path
    pid: int
    port: int
    started_at: str  # ISO 8601, UTC


@dataclass(frozen=True)
class ServerCheck:
    """What a look at PREFECT_HOME finds: `server` is what the state file names (None when
    there is none), `alive` whether that process still runs as a Prefect server, `health`
    None when its API answers, else why not."""

    server: LocalServer | None
    alive: bool = False
    health: str | None = "no server recorded"

    @property
    def running(self) -> bool:
        return self.server is not None and self.alive and self.health is None

    @property
    def state(self) -> str:
        """`running`, `unhealthy` (alive, API silent), `stale` (its process is gone) or `none`."""
        if self.server is None:
            return "none"
        if not self.alive:
            return "stale"
        return "running" if self.health is None else "unhealthy"


def read_state(home: Path) -> LocalServer | None:
    """The server recorded under `home`, or None (no state file, or one that does not parse)."""
    try:
        data = json.loads((home / STATE_FILE).read_text())
        datetime.fromisoformat(data["started_at"])  # checked here, used when waiting for a start
        return LocalServer(home=home, pid=int(data["pid"]), port=int(data["port"]), started_at=data["started_at"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _write_state(server: LocalServer) -> None:
    record = {k: v for k, v in asdict(server).items() if k != "home"}
    tmp = server.home / f"{STATE_FILE}.tmp"
    tmp.write_text(json.dumps(record) + "\n")
    os.replace(tmp, server.home / STATE_FILE)  # a reader sees the old file or the new one, never half


def _remove_state(home: Path) -> None:
    (home / STATE_FILE).unlink(missing_ok=True)


def is_server_process(pid: int, port: int) -> bool:
    """True when `pid` is a live (not zombie) `prefect server start` on `port`. Where there
    is no /proc, a live pid is taken at its word."""
    try:
        os.waitpid(pid, os.WNOHANG)  # reap it if this process started it and it has exited
    except ChildProcessError:
        pass
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return False  # someone else's process: the pid was recycled
    proc = Path(f"/proc/{pid}")
    if not proc.exists():
        return True
    try:
        args = (proc / "cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    # a zombie's cmdline is empty; a recycled pid runs something else
    return b"prefect" in b" ".join(args) and b"server" in args and str(port).encode() in args


def check_local_server(home: Path, *, health_timeout: float = 2.0) -> ServerCheck:
    """Look at what `home` records, without changing anything."""
    server = read_state(home)
    if server is None:
        return ServerCheck(None)
    if not is_server_process(server.pid, server.port):
        return ServerCheck(server, alive=False, health="its process is gone")
    return ServerCheck(server, alive=True, health=api_health(server.api_url, timeout=health_timeout))


@contextmanager
def _home_lock(home: Path) -> Iterator[None]:
    home.mkdir(parents=True, exist_ok=True)
    with open(home / LOCK_FILE, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _port_free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def ensure_local_server(
    home: Path,
    *,
    on_start: Callable[[str], None] | None = None,
    timeout: float = START_TIMEOUT,
) -> LocalServer:
    """The running server of `home`: the recorded one when it answers, else a new one
    started in the background and recorded (`on_start` gets one progress line first).

    A recorded server that is alive but silent gets what is left of its start window; then
    it is stopped and replaced. A stale record (process gone) is replaced. Raises a one-line
    ConfigError naming the log when a new server does not come up; no child is left then."""
    with _home_lock(home):
        check = check_local_server(home)
        if check.running:
            return check.server  # type: ignore[return-value]
        if check.alive and check.server is not None:
            started = datetime.fromisoformat(check.server.started_at)
            left = timeout - (datetime.now(timezone.utc) - started).total_seconds()
            if _wait_healthy(check.server, left):
                return check.server
            _terminate(check.server)
        _remove_state(home)
        return _start(home, on_start, timeout)


def _wait_healthy(server: LocalServer, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and is_server_process(server.pid, server.port):
        if api_health(server.api_url, timeout=1.0) is None:
            return True
        time.sleep(0.2)
    return False


def _start(home: Path, on_start: Callable[[str], None] | None, timeout: float) -> LocalServer:
    port = DEFAULT_PORT if _port_free(DEFAULT_PORT) else free_port()
    process = PrefectServer(home, port=port)
    if on_start is not None:
        on_start(
            f"starting a local Prefect server on {process.ui_url} (log: {process.log_path}); "
            f"it keeps running for later commands (`ferry server stop` stops it) …"
        )
    try:
        process.start(timeout=timeout)
    except ConfigError:
        if port != DEFAULT_PORT or _port_free(DEFAULT_PORT):
            raise
        # another program took 4200 between the check and the bind: once more, elsewhere
        process = PrefectServer(home, port=free_port())
        process.start(timeout=timeout)
    assert process.process is not None
    server = LocalServer(home=home, pid=process.process.pid, port=process.port,
                         started_at=datetime.now(timezone.utc).isoformat(timespec="seconds"))
    _write_state(server)
    # left running on purpose: the child has a session of its own, so this command's exit
    # (or its terminal closing) does not stop it; `stop_local_server` does
    process.process = None
    return server


def _terminate(server: LocalServer, timeout: float = STOP_TIMEOUT) -> None:
    """SIGTERM the server's process group, SIGKILL after `timeout`; returns once it is gone."""
    for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 5.0)):
        if not is_server_process(server.pid, server.port):
            return
        try:
            os.killpg(server.pid, sig)  # the server is its group's leader (a session of its own)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            if not is_server_process(server.pid, server.port):
                return
            time.sleep(0.1)
    raise ConfigError(f"the local Prefect server (pid {server.pid}) did not stop; see {server.log_path}")


def stop_local_server(home: Path) -> ServerCheck:
    """Stop the server `home` records (if its process still runs) and remove the record.
    Returns what was found before stopping."""
    with _home_lock(home):
        check = check_local_server(home, health_timeout=0.5)
        if check.server is not None and check.alive:
            _terminate(check.server)
        _remove_state(home)
        return check


__all__ = [
    "DEFAULT_PORT",
    "LocalServer",
    "ServerCheck",
    "check_local_server",
    "ensure_local_server",
    "is_server_process",
    "read_state",
    "stop_local_server",
]
