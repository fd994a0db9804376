"""Side-by-side benchmark utilities: every side in its own fresh process, reported as ratios.

How a side is measured
- `run_python(name, func, *args, nbytes=...)` runs `func(*args)` in a fresh interpreter
  (`python -m bench.harness`, not a fork, so nothing of the parent's memory is counted).
  `seconds` is the wall time of the call alone, taken inside the child (interpreter start and
  imports are excluded); `peak_rss_bytes` is the child's own VmHWM read at its end (its whole
  life: the interpreter, whatever `func` imports, every thread; not grandchildren). `func`
  must be importable by name: a module-level function of an importable module
  (`bench.upload.boto3_side`); arguments and the return value are pickled. If `func` returns
  a dict, it becomes `Result.extra`.
- `run_command(name, argv, nbytes=...)` times an external command (curl, cp) from spawn to
  exit. Its peak RSS comes from GNU `time -f %M` (the largest of the command and the children
  it waited for) or, without /usr/bin/time, from sampling its VmHWM every 5 ms.
- Both put the side's CPU time (user + system seconds) in `extra["cpu_seconds"]` (for
  commands only with GNU time): on a small machine where client and server share cores,
  CPU per byte explains throughput.
- Why not `os.wait4`'s `ru_maxrss` of our own child: Linux carries the parent's peak RSS over
  fork/vfork + exec into it (a 500 MiB parent makes `sleep` report 515 MiB), so it measures
  the benchmark driver, not the side.
- A side that fails raises `BenchmarkFailed` with the child's exit status and stderr tail.

Reporting
- `Result.mb_per_s` is decimal MB (10^6 bytes) per second, as in /work/shared/FACTS.md;
  RSS is shown in MiB.
- `format_table(title, results, baseline="curl")` prints one row per side with MB/s, the ratio
  to the baseline row (this side's MB/s / baseline's MB/s, so > 1 means faster), seconds and
  peak RSS; `extra_columns=("cpu_seconds",)` adds columns taken from `Result.extra`.

Setup helpers
- `make_random_file(path, size)` writes incompressible bytes in 8 MiB chunks (bounded memory).
- `seaweed_server()` is a context manager yielding an `S3Target` (endpoint, bucket, dummy
  credentials, `client()`, `url(key)`) for a fresh `weed mini` on free 127.0.0.1 ports in a
  temp dir with a fresh bucket; access is anonymous unless `auth=True`. Stopped and removed
  on exit. `process_cpu_seconds(target.server_pid)` before/after a side gives the server's
  CPU for it (client and server share the cores on one machine); `machine_busy_seconds()`
  before/after, minus both, is what other work on the machine took meanwhile (noise).
- `parse_size("1GiB")`, `add_size_argument(parser)` for `--size 1GiB / 256MiB / 1000000`.
- `settle()` flushes dirty pages between sides so one side's writeback does not slow the next.
- `S3Target.env` holds the AWS variables a user would set: pass `env=target.env` to
  `run_python` so the side's own client finds endpoint and credentials the usual way.
- `ratio(results, "ferry", "boto3")` is one side's MB/s over another's.

On a shared machine, run sides in interleaved rounds (a, b, a, b, ...) and compare ratios
within a round; wall times drift by 2x when someone else's tests run.

Example
    from bench.harness import run_python, run_command, format_table, make_random_file

    def copy_side(src, dst):           # module level, so the child can import it
        shutil.copyfile(src, dst)

    results = [run_command("cp", ["cp", src, dst1], nbytes=size),
               run_python("shutil", copy_side, src, dst2, nbytes=size)]
    print(format_table("local copy, 1 GiB", results, baseline="cp"))
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import pickle
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from storage_core.errors import BenchmarkFailed
from storage_core.units import parse_size  # re-exported: the benchmarks take sizes from it

MiB = 1024 * 1024
GiB = 1024 * MiB
CHUNK = 8 * MiB




@dataclass(frozen=True)
class Result:
    name: str
    seconds: float
    nbytes: int
    peak_rss_bytes: int
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def mb_per_s(self) -> float:
        return self.nbytes / 1e6 / self.seconds if self.seconds > 0 else float("inf")

    @property
    def peak_rss_mib(self) -> float:
        return self.peak_rss_bytes / MiB


# --- running sides -------------------------------------------------------------------------


def _wait(process: subprocess.Popen[bytes]) -> int:
    process.wait()
    return process.returncode


def _function_ref(func: Callable[..., Any]) -> tuple[str, str]:
    module = func.__module__
    if module == "__main__":  # run as `python -m pkg.mod`: the child must import it by its real name
        spec = getattr(sys.modules["__main__"], "__spec__", None)
        if spec is None:
            raise ValueError(f"{func.__qualname__} lives in a script; move it into an importable module")
        module = spec.name
    if "<locals>" in func.__qualname__ or "<lambda>" in func.__qualname__:
        raise ValueError(f"{func.__qualname__} must be a module-level function")
    return module, func.__qualname__


def run_python(
    name: str,
    func: Callable[..., Any],
    *args: Any,
    nbytes: int,
    env: dict[str, str] | None = None,
    timeout: float | None = None,
) -> Result:
    """Run `func(*args)` in a fresh interpreter; time the call, read the child's peak RSS."""
    module, qualname = _function_ref(func)
    with tempfile.TemporaryDirectory(prefix="ferry-bench-") as scratch:
        request = Path(scratch, "request.pickle")
        answer = Path(scratch, "answer.pickle")
        request.write_bytes(pickle.dumps((module, qualname, args)))
        child_env = {**os.environ, **(env or {})}
        # the child must find the same packages as we do, wherever it was started from
        child_env["PYTHONPATH"] = os.pathsep.join(p for p in [*sys.path, child_env.get("PYTHONPATH", "")] if p)
        process = subprocess.Popen(
            [sys.executable, "-m", "bench.harness", "--child", str(request), str(answer)],
            env=child_env,
            stderr=subprocess.PIPE,
        )
        stderr = _drain_stderr(process, timeout)
        code = _wait(process)
        if code != 0 or not answer.exists():
            raise BenchmarkFailed(f"{name}: child exited with {code}\n{stderr[-4000:]}")
        outcome = pickle.loads(answer.read_bytes())
    if outcome["error"] is not None:
        raise BenchmarkFailed(f"{name}: {outcome['error']}")
    value = outcome["value"]
    extra = dict(value) if isinstance(value, dict) else {}
    extra["cpu_seconds"] = round(outcome["cpu_seconds"], 2)
    return Result(name, outcome["seconds"], nbytes, outcome["vm_hwm_bytes"], extra)


def _drain_stderr(process: subprocess.Popen[bytes], timeout: float | None) -> str:
    """Read the child's stderr to its end (without reaping it), echoing it so progress shows;
    kill the child if it outlives `timeout` seconds."""
    assert process.stderr is not None
    timer = threading.Timer(timeout, process.kill) if timeout is not None else None
    if timer is not None:
        timer.start()
    chunks: list[bytes] = []
    try:
        for line in process.stderr:
            chunks.append(line)
            sys.stderr.buffer.write(line)
            sys.stderr.flush()
    finally:
        process.stderr.close()
        if timer is not None:
            timer.cancel()
    return b"".join(chunks).decode(errors="replace")


def run_command(
    name: str,
    argv: Sequence[str],
    *,
    nbytes: int,
    env: dict[str, str] | None = None,
    whole_env: bool = False,
    keep_stdout: bool = False,
    timeout: float | None = None,
) -> Result:
    """Time an external command from spawn to exit. `env` is added to this process's
    environment, or with `whole_env` is the command's whole environment (so a side sees no
    variable it was not given). Its stdout is discarded, or with `keep_stdout` written to a
    file and returned as `extra["stdout"]` (a pipe read after exit could fill and stall it).
    A `ferry` command that ran in the warm ferry process (ferry.cli.warm) adds that process's
    peak RSS and CPU seconds to its own (FERRY_WARM_REPORT)."""
    child_env = dict(env or {}) if whole_env else {**os.environ, **(env or {})}
    with tempfile.TemporaryDirectory(prefix="ferry-bench-") as scratch:
        warm_report = Path(scratch, "warm.json")
        child_env["FERRY_WARM_REPORT"] = str(warm_report)
        report = Path(scratch, "maxrss")
        timer = [GNU_TIME, "-q", "-o", str(report), "-f", "%M %U %S"] if os.access(GNU_TIME, os.X_OK) else []
        out_path = Path(scratch, "stdout")
        started = time.perf_counter()
        with open(out_path, "wb") if keep_stdout else open(os.devnull, "wb") as out:
            process = subprocess.Popen([*timer, *argv], env=child_env, stdout=out, stderr=subprocess.PIPE)
            sampler = None if timer else _HwmSampler(process.pid)
            stderr = _drain_stderr(process, timeout)
            code = _wait(process)
        seconds = time.perf_counter() - started
        if code != 0:
            raise BenchmarkFailed(f"{name}: {' '.join(argv)} exited with {code}\n{stderr[-4000:]}")
        extra: dict[str, Any] = {"argv": list(argv)}
        if keep_stdout:
            extra["stdout"] = out_path.read_text(errors="replace")
        if sampler is not None:
            peak, extra["rss_from"] = sampler.stop(), "VmHWM sampled"
        else:
            maxrss, user, system = report.read_text().split()[-3:]
            peak, extra["rss_from"] = int(maxrss) * 1024, "GNU time %M"
            extra["cpu_seconds"] = round(float(user) + float(system), 2)
        if warm_report.exists():
            warm = json.loads(warm_report.read_text())
            peak = max(peak, int(warm["maxrss_kib"]) * 1024)
            extra["rss_from"] += " + the warm ferry process's child"
            extra["cpu_seconds"] = round(extra.get("cpu_seconds", 0.0) + float(warm["cpu_s"]), 2)
            extra["warm"] = True
    return Result(name, seconds, nbytes, peak, extra)


GNU_TIME = "/usr/bin/time"


def run_cp(source: str | os.PathLike[str], dest: str | os.PathLike[str], *, sync: bool, nbytes: int) -> Result:
    """Time `cp source dest` (side "cp"), or with `sync dest` after it (side "cp + sync": as
    durable as Ferry's fsync)."""
    script = 'cp "$1" "$2" && sync "$2"' if sync else 'cp "$1" "$2"'
    return run_command("cp + sync" if sync else "cp", ["sh", "-c", script, "sh", str(source), str(dest)], nbytes=nbytes)


class _HwmSampler:
    """Polls /proc/<pid>/status for VmHWM until stopped: a lower bound for very short spikes."""

    def __init__(self, pid: int, interval: float = 0.005) -> None:
        self._path, self._interval = Path(f"/proc/{pid}/status"), interval
        self.peak = 0
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()

    def _poll(self) -> None:
        while not self._done.is_set():
            try:
                for line in self._path.read_text().splitlines():
                    if line.startswith("VmHWM:"):
                        self.peak = max(self.peak, int(line.split()[1]) * 1024)
            except (OSError, ValueError):
                pass
            self._done.wait(self._interval)

    def stop(self) -> int:
        self._done.set()
        self._thread.join()
        return self.peak


def _child_main(request: str, answer: str) -> int:
    module, qualname, args = pickle.loads(Path(request).read_bytes())
    target: Any = importlib.import_module(module)
    for part in qualname.split("."):
        target = getattr(target, part)
    outcome: dict[str, Any] = {"value": None, "seconds": 0.0, "error": None}
    cpu_before = _cpu_seconds()
    started = time.perf_counter()
    try:
        outcome["value"] = target(*args)
        outcome["seconds"] = time.perf_counter() - started
        outcome["cpu_seconds"] = _cpu_seconds() - cpu_before
    except BaseException:  # report any failure to the parent, which raises BenchmarkFailed
        outcome["error"] = traceback.format_exc()
    outcome["vm_hwm_bytes"] = _vm_hwm()
    Path(answer).write_bytes(pickle.dumps(outcome))
    return 0


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _vm_hwm() -> int:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


# --- reporting -----------------------------------------------------------------------------


def median_run(runs: Sequence[Result]) -> Result:
    """The run with the median time (odd counts) or the faster of the middle two, with the
    peak RSS of all runs (a memory bound must hold in every run) and every run's MB/s."""
    ordered = sorted(runs, key=lambda r: r.seconds)
    chosen = ordered[(len(ordered) - 1) // 2]
    peak = max(r.peak_rss_bytes for r in runs)
    spread = [round(r.mb_per_s, 1) for r in runs]
    return Result(chosen.name, chosen.seconds, chosen.nbytes, peak, {**chosen.extra, "runs_mb_per_s": spread})


def format_table(
    title: str, results: Sequence[Result], *, baseline: str, extra_columns: Sequence[str] = ()
) -> str:
    """A plain-text table: MB/s, ratio to the `baseline` row's MB/s, seconds, peak RSS MiB,
    then one column per `extra_columns` key of `Result.extra` (blank where a side lacks it)."""
    by_name = {r.name: r for r in results}
    if baseline not in by_name:
        raise ValueError(f"baseline {baseline!r} is not one of {sorted(by_name)}")
    base = by_name[baseline].mb_per_s
    header = ("side", "MB/s", f"x {baseline}", "seconds", "peak RSS MiB", *extra_columns)
    rows = [
        (
            r.name,
            f"{r.mb_per_s:.1f}",
            f"{r.mb_per_s / base:.2f}",
            f"{r.seconds:.2f}",
            f"{r.peak_rss_mib:.0f}",
            *(_cell(r.extra.get(column)) for column in extra_columns),
        )
        for r in results
    ]
    widths = [max(len(header[i]), *(len(row[i]) for row in rows)) for i in range(len(header))]

    def line(cells: Sequence[str]) -> str:
        first = cells[0].ljust(widths[0])
        rest = (cell.rjust(width) for cell, width in zip(cells[1:], widths[1:]))
        return "  ".join([first, *rest]).rstrip()

    rule = "-" * len(line(header))
    return "\n".join([title, rule, line(header), rule, *(line(row) for row in rows), rule])


def _cell(value: Any) -> str:
    if value is None:
        return ""
    return f"{value:.1f}" if isinstance(value, float) else str(value)


def ratio(results: Sequence[Result], numerator: str, denominator: str) -> float:
    """MB/s of one side over another's (both names must be present)."""
    by_name = {r.name: r for r in results}
    return by_name[numerator].mb_per_s / by_name[denominator].mb_per_s


# --- setup helpers -------------------------------------------------------------------------

def add_size_argument(parser: argparse.ArgumentParser, *, default: str = "1GiB", name: str = "--size") -> None:
    parser.add_argument(name, type=_size_type, default=parse_size(default), help=f"bytes, e.g. 1GiB, 256MiB (default {default})")


def _size_type(text: str) -> int:
    try:
        return parse_size(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def make_random_file(path: str | os.PathLike[str], size: int, *, chunk_size: int = CHUNK) -> Path:
    """Write `size` incompressible bytes to `path` in bounded chunks; returns the path."""
    path = Path(path)
    remaining = size
    with open(path, "wb") as handle:
        while remaining > 0:
            block = os.urandom(min(chunk_size, remaining))
            handle.write(block)
            remaining -= len(block)
    return path


def process_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds a running process (all its threads) has used so far; the
    difference around a side is, e.g., what the server spent serving it."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def machine_busy_seconds() -> float:
    """CPU seconds all cores have spent busy since boot (/proc/stat): the difference around a
    side, minus that side's client and server CPU, is what other work on the machine took."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def settle() -> None:
    """Flush dirty pages so the next side does not pay for the previous side's writeback."""
    os.sync()


@dataclass(frozen=True)
class S3Target:
    endpoint: str
    bucket: str
    access_key: str
    secret_key: str
    region: str = "us-east-1"
    server_pid: int | None = None  # the `weed` process, for `process_cpu_seconds`

    @property
    def env(self) -> dict[str, str]:
        """AWS variables as a user would set them (pass as `env=` to run_python/run_command)."""
        return {
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_REGION": self.region,
        }

    def url(self, key: str) -> str:
        """Path-style URL of an object (usable with curl when access is anonymous)."""
        return f"{self.endpoint}/{self.bucket}/{key}"

    def client(self, **config: Any) -> Any:
        """A plain boto3 client with boto3's defaults plus path-style; `config` adds Config options."""
        import boto3
        from botocore.config import Config

        s3 = {"addressing_style": "path", **config.pop("s3", {})}
        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key,
            region_name=self.region,
            config=Config(s3=s3, **config),
        )


@contextmanager
def seaweed_server(*, auth: bool = False, bucket: str | None = None) -> Iterator[S3Target]:
    """A fresh `weed mini` on free 127.0.0.1 ports with one empty bucket; removed on exit.

    Without `auth` the server accepts any request (anonymous), so curl needs no signing; the
    credentials are still set so boto3 signs as it would against a real server.
    """
    from bench.seaweed import SeaweedServer

    access_key, secret_key = "ferry-bench-key", "ferry-bench-secret"
    scratch = Path(tempfile.mkdtemp(prefix="ferry-bench-seaweed-"))
    extra: list[str] = []
    if auth:
        import json

        identity = {"name": "bench", "credentials": [{"accessKey": access_key, "secretKey": secret_key}],
                    "actions": ["Admin", "Read", "List", "Tagging", "Write"]}
        config = scratch / "s3.json"
        config.write_text(json.dumps({"identities": [identity]}))
        extra.append(f"-s3.config={config}")
    server = SeaweedServer(scratch / "data", extra_args=extra)
    try:
        server.start()
        assert server.process is not None
        name = bucket or f"bench-{uuid.uuid4().hex[:12]}"
        target = S3Target(server.endpoint, name, access_key, secret_key, server_pid=server.process.pid)
        target.client().create_bucket(Bucket=target.bucket)
        yield target
    finally:
        server.stop()
        shutil.rmtree(scratch, ignore_errors=True)


__all__ = [
    "GiB",
    "MiB",
    "BenchmarkFailed",
    "Result",
    "S3Target",
    "add_size_argument",
    "format_table",
    "machine_busy_seconds",
    "make_random_file",
    "parse_size",
    "process_cpu_seconds",
    "ratio",
    "run_command",
    "run_cp",
    "run_python",
    "seaweed_server",
    "settle",
]


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--child":
        sys.exit(_child_main(sys.argv[2], sys.argv[3]))
    print(__doc__)
