"""A local `prefect server start` on 127.0.0.1, and the one question every client asks
first: is the Prefect API at this URL answering?

Used by `ferry serve --start-server` and by the tests' session-wide server. The server's
own database is `PREFECT_API_DATABASE_CONNECTION_URL` when set (PostgreSQL beyond a
laptop), else SQLite under its PREFECT_HOME; never Ferry's catalog database (DESIGN.md).
Nothing phones home: analytics are off in the child's environment.
"""

from __future__ import annotations

import os
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


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
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


@dataclass
class PrefectServer:
    """`prefect server start` as a child process on 127.0.0.1, with its own PREFECT_HOME.

    `env` is added to this process's environment for the child (e.g. a throwaway
    `PREFECT_API_DATABASE_CONNECTION_URL`, faster scheduler loops in tests). The process
    group is terminated by `stop`, also when `start` fails."""

    home: Path
    port: int = 0
    env: Mapping[str, str] = field(default_factory=dict)
    ui: bool = True
    process: subprocess.Popen[bytes] | None = None

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/api"

    @property
    def ui_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def log_path(self) -> Path:
        return self.home / "server.log"

    def child_env(self) -> dict[str, str]:
        env = {**os.environ, **QUIET_ENV, "PREFECT_HOME": str(self.home), **self.env}
        env.pop("PREFECT_API_URL", None)  # the server must not think it is a client of another
        env["PREFECT_UI_API_URL"] = self.api_url
        return env

    def start(self, timeout: float = 120.0) -> None:
        self.home.mkdir(parents=True, exist_ok=True)
        if not self.port:
            self.port = free_port()
        args = [
            sys.executable, "-m", "prefect", "server", "start",
            "--host", "127.0.0.1", "--port", str(self.port), "--analytics-off",
            "--ui" if self.ui else "--no-ui",
        ]  # fmt: skip
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                args, env=self.child_env(), stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
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
                tail = self.log_path.read_text(errors="replace")[-2000:]
                raise ConfigError(f"prefect server exited with {self.process.returncode}: {tail.strip().splitlines()[-1:]}")
            reason = api_health(self.api_url, timeout=1.0)
            if reason is None:
                return
            time.sleep(0.2)
        raise ConfigError(f"prefect server did not answer on {self.api_url} within {timeout:g}s ({reason}); see {self.log_path}")

    def stop(self) -> None:
        if self.process is None:
            return
        try:
            os.killpg(self.process.pid, signal.SIGTERM)
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()
        except ProcessLookupError:
            pass
        self.process = None


__all__ = ["PrefectServer", "api_health", "free_port", "require_api"]
