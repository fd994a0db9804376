"""A local `prefect server start` on 127.0.0.1 (or another address of this machine), and the one question every client asks
first: is the Prefect API at this URL answering?

Used by `ferry serve --start-server` and by the tests' session-wide server. The server's
own database is `PREFECT_API_DATABASE_CONNECTION_URL` when set (PostgreSQL beyond a
laptop), else SQLite under its PREFECT_HOME; never Ferry's catalog database (DESIGN.md).
Prefect opens it with an async driver only (`postgresql+asyncpg://`, `sqlite+aiosqlite://`),
so a URL in the catalog's form (`postgresql+psycopg://`) is refused before the child starts.
Nothing phones home: analytics are off in the child's environment.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from storage_core.errors import ConfigError

QUIET_ENV = {"PREFECT_SERVER_ANALYTICS_ENABLED": "false", "DO_NOT_TRACK": "1"}
# Prefect reads the first of these that is set; the second, older name is the one README uses.
DATABASE_URL_VARS = ("PREFECT_SERVER_DATABASE_CONNECTION_URL", "PREFECT_API_DATABASE_CONNECTION_URL")
# how a URL's scheme begins → the one scheme (async driver) Prefect's server opens that database with
ASYNC_SCHEMES = {"postgres": "postgresql+asyncpg", "sqlite": "sqlite+aiosqlite"}
PORT_ATTEMPTS = 3  # starts on a fresh free port when the one picked was taken meanwhile
_ERROR_LINE = re.compile(r"^[A-Za-z_][\w.]*(Error|Exception)\b.*")


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port free on `host` right now (the OS picks it), for a server about to start.
    The one helper of the project: the SeaweedFS runner and the test gateway use it too."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def api_health(api_url: str, *, timeout: float = 2.0) -> str | None:
    """None when `{api_url}/health` answers true, else the reason it does not (one line)."""
    try:
        with urllib.request.urlopen(api_url.rstrip("/") + "/health", timeout=timeout) as response:
            body = response.read().decode(errors="replace").strip()
            return None if body == "true" else f"answered {body[:60]!r} instead of true"
    except urllib.error.HTTPError as exc:
        return f"HTTP {exc.code}"
    except (OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        return str(reason) or type(exc).__name__


def require_api(api_url: str) -> None:
    """Raise a one-line ConfigError when no Prefect API answers at `api_url`."""
    reason = api_health(api_url)
    if reason is not None:
        raise ConfigError(
            f"no Prefect API at {api_url} ({reason}); start one with `prefect server start` "
            f"or `ferry serve --start-server`, or set PREFECT_API_URL"
        )


def database_url_problem(env: Mapping[str, str]) -> str | None:
    """None when the server's database URL in `env` (if any) names a driver Prefect can use,
    else a one-line reason naming the variable and its scheme (never the rest of the URL,
    which may hold a password)."""
    for name in DATABASE_URL_VARS:
        url = env.get(name)
        if url:
            scheme = url.split("://", 1)[0]
            if scheme in ASYNC_SCHEMES.values():
                return None
            fits = [s for start, s in ASYNC_SCHEMES.items() if scheme.startswith(start)] or ASYNC_SCHEMES.values()
            hint = " or ".join(f"{s}://" for s in fits)
            return f"{name} starts with {scheme}:// but Prefect's server needs an async driver: use {hint}…"
    return None


def last_error_line(log: str) -> str:
    """The last `SomeError: …` line of a server log (why it stopped), else its last line."""
    lines = [line.strip() for line in log.splitlines() if line.strip()]
    errors = [line for line in lines if _ERROR_LINE.match(line)]
    return (errors or lines or ["(empty log)"])[-1]


class ServerAddresses:
    """Where a local server on `host`:`port` with state under `home` answers and logs."""

    home: Path
    port: int
    host: str = "127.0.0.1"

    @property
    def api_url(self) -> str:
        return f"http://{self.host}:{self.port}/api"

    @property
    def ui_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def log_path(self) -> Path:
        return self.home / "server.log"


@dataclass
class PrefectServer(ServerAddresses):
    """`prefect server start` as a child process on 127.0.0.1, with its own PREFECT_HOME.

    `env` is added to this process's environment for the child (e.g. a throwaway
    `PREFECT_API_DATABASE_CONNECTION_URL`, faster scheduler loops in tests). The process
    group is terminated by `stop`, also when `start` fails."""

    home: Path
    port: int = 0
    host: str = "127.0.0.1"  # another address: a bridge that other hosts reach (bench/netns.py)
    env: Mapping[str, str] = field(default_factory=dict)
    ui: bool = True
    process: subprocess.Popen[bytes] | None = None
    _log_start: int = field(default=0, init=False, repr=False)

    def child_env(self) -> dict[str, str]:
        env = {**os.environ, **QUIET_ENV, "PREFECT_HOME": str(self.home), **self.env}
        env.pop("PREFECT_API_URL", None)  # the server must not think it is a client of another
        env["PREFECT_UI_API_URL"] = self.api_url
        return env

    def start(self, timeout: float = 120.0) -> None:
        """Start the child and wait until its API answers. ConfigError, with no child left
        running, when its database URL names a sync driver, it exits (the log's last error
        line), or it does not answer within `timeout`. A port picked here (`port` 0) that
        another process took before the server could bind it is replaced by a new one."""
        problem = database_url_problem(self.child_env())
        if problem is not None:
            raise ConfigError(problem)
        chosen = not self.port  # a port picked here: another process may take it before the server binds it
        for attempt in range(PORT_ATTEMPTS if chosen else 1):
            if chosen:
                self.port = free_port(self.host)
            try:
                return self._start(timeout)
            except ConfigError:
                if attempt + 1 == PORT_ATTEMPTS or not chosen or not self._port_was_taken():
                    raise

    def _port_was_taken(self) -> bool:
        return "already in use" in self._this_starts_log().lower()  # Prefect's own check, or the bind

    def _this_starts_log(self) -> str:
        """What the server logged since this start began (the log is appended to)."""
        with open(self.log_path, "rb") as log:
            log.seek(self._log_start)
            return log.read().decode(errors="replace")

    def _start(self, timeout: float) -> None:
        env = self.child_env()
        self.home.mkdir(parents=True, exist_ok=True)
        args = [
            sys.executable, "-m", "prefect", "server", "start",
            "--host", self.host, "--port", str(self.port), "--analytics-off",
            "--ui" if self.ui else "--no-ui",
        ]  # fmt: skip
        with open(self.log_path, "ab") as log:
            self._log_start = log.tell()  # the log is appended to; this start's lines begin here
            self.process = subprocess.Popen(
                args, env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                start_new_session=True,
            )  # fmt: skip
        try:
            self.wait_ready(timeout)
        except BaseException:
            self.stop()
            raise

    def wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        reason = "not started"
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                tail = self._this_starts_log()[-20_000:]
                raise ConfigError(
                    f"prefect server exited with {self.process.returncode}: {last_error_line(tail)} (log: {self.log_path})"
                )
            reason = api_health(self.api_url, timeout=1.0)
            if reason is None:
                return
            time.sleep(0.2)
        raise ConfigError(f"prefect server did not answer on {self.api_url} within {timeout:g}s ({reason}); see {self.log_path}")

    def stop(self) -> None:
        if self.process is None:
            return
        stop_group(self.process)
        self.process = None


def stop_group(process: subprocess.Popen, *, signum: int = signal.SIGTERM, timeout: float = 20) -> None:
    """Stop a process that leads its own session (started with start_new_session=True) and
    everything it started: `signum` to the group, SIGKILL after `timeout` seconds."""
    try:
        os.killpg(process.pid, signum)
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    except ProcessLookupError:
        pass


__all__ = [
    "PrefectServer", "ServerAddresses", "api_health", "database_url_problem", "free_port", "last_error_line", "require_api",
    "stop_group"]
