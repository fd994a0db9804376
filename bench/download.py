"""`ferry bench download`: Ferry's download against what a user would pick instead, side by side.

S3 (loopback SeaweedFS, anonymous, one random object, default 1 GiB):
- `curl GET`        one streamed GET to /dev/null: the server's ceiling for one stream, no disk;
- `boto3 defaults`  `download_file` with TransferConfig and client defaults (no fsync, no checksum
                    of the whole object);
- `ferry`           `storage_core.download.download`: parallel ranged GETs pinned to the ETag,
                    CRC32C of the whole object verified against the catalog's value, `.part` file
                    (whole ranges written with O_DIRECT), fsync, rename, fsync of the folder.
Local disk:
- `cp`, `cp + sync` copy the stored file (`sync` makes it as durable as Ferry's fsync);
- `ferry local`     `download` from a LocalStore (same checks as above).

Peers (bench.peers): s5cmd, rclone and aws-cli beside `python -m ferry.cli download` end to end
(SQLite catalog, a warm Prefect API), fetching `--files` × `--file-size` (default 1,000 ×
100 KiB) and one `--size` object that `ferry ingest` stored first (untimed); each side's
written bytes checked; a missing peer is skipped.

Targets (printed as PASS/FAIL): ferry ≥ 1.3× boto3 defaults, ferry peak RSS ≤ 256 MiB,
ferry local ≥ 0.7× cp. Before timing, the run checks that Ferry really refuses an object
whose CRC32C differs from the expected one, so "verified" is a measured fact. `--tune` adds
a grid of chunk sizes × workers for Ferry.

Every side runs in its own fresh process (bench.harness); the object is served from the
server's page cache alike for all; dirty pages are flushed between sides and outputs deleted.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import uuid
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

# Imported here, not in the sides, so that no side's timed call pays for imports (boto3,
# pydantic via storage_core's settings): the table compares transfers, not start-up.
import boto3
from boto3.s3.transfer import TransferConfig

from bench import peers
from bench.harness import (
    MiB,
    Result,
    S3Target,
    add_size_argument,
    format_table,
    median_run,
    make_random_file,
    ratio,
    run_command,
    run_cp,
    run_python,
    seaweed_server,
    settle,
)
from storage_core.checksums import crc32c_of_stream
from storage_core.download import DownloadSource, download
from storage_core.errors import BenchmarkFailed, IntegrityError
from storage_core.stores.local import LocalStore
from storage_core.stores.s3 import S3Store

RSS_LIMIT = 256 * MiB
TARGET_VS_BOTO3 = 1.3
TARGET_LOCAL_VS_CP = 0.7
TUNE_CHUNK_SIZES = (8, 16, 32)  # MiB
TUNE_WORKERS = (2, 3, 4, 8)
KEY = "bench/dev1/rec1/video/0001.bin"


# --- sides: module-level so bench.harness can run each in a fresh interpreter ----------------


def boto3_side(target: S3Target, dest: str) -> dict[str, Any]:
    target.client().download_file(target.bucket, KEY, dest, Config=TransferConfig())
    return {"boto3": boto3.__version__}


def _ferry(store: Any, size: int, crc: int, dest: str, chunk_size: int | None, workers: int | None) -> dict[str, Any]:
    source = DownloadSource(store=store, key=KEY, size=size, crc32c=crc, device_id="dev1", recording="rec1",
                            modality="video", segmented=True, relative_path="0001.bin")
    options: dict[str, Any] = {}
    if chunk_size is not None:
        options["chunk_size"] = chunk_size
    if workers is not None:
        options["max_workers"] = workers
    (path,) = download(source, dest, **options)
    return {"path": str(path)}


def ferry_s3_side(target: S3Target, size: int, crc: int, dest: str, chunk_size: int | None,
                  workers: int | None) -> dict[str, Any]:
    store = S3Store(target.bucket, endpoint_url=target.endpoint)  # credentials from the environment
    return _ferry(store, size, crc, dest, chunk_size, workers)


def ferry_local_side(root: str, size: int, crc: int, dest: str) -> dict[str, Any]:
    return _ferry(LocalStore(root), size, crc, dest, None, None)


# --- checks ---------------------------------------------------------------------------------


def ferry_refuses_a_wrong_crc32c(target: S3Target, size: int, crc: int, scratch: Path) -> bool:
    """Download with an expected CRC32C off by one bit: True when Ferry refuses and writes nothing."""
    store = S3Store(target.bucket, client=target.client(request_checksum_calculation="when_required",
                                                        response_checksum_validation="when_required"))
    dest = scratch / f"crc-check-{uuid.uuid4().hex[:8]}"
    try:
        _ferry(store, size, crc ^ 1, str(dest), None, None)
    except IntegrityError:
        return not any(p.is_file() for p in dest.rglob("*"))
    finally:
        shutil.rmtree(dest, ignore_errors=True)
    return False


class Sides:
    """Runs each side into a fresh output under `scratch`, checks the size written, removes it."""

    def __init__(self, scratch: Path, size: int, crc: int, target: S3Target | None = None,
                 store_root: Path | None = None) -> None:
        self.scratch, self.size, self.crc, self.target, self.store_root = scratch, size, crc, target, store_root

    def _run(self, name: str, start: Callable[[Path], Result], *, check: bool = True) -> Result:
        out = self.scratch / f"out-{uuid.uuid4().hex[:8]}"
        out.mkdir()
        settle()
        try:
            result = start(out)
            if check:
                written = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
                if written != self.size:
                    raise BenchmarkFailed(f"{name}: wrote {written} bytes, expected {self.size}")
            return result
        finally:
            shutil.rmtree(out, ignore_errors=True)

    def curl(self) -> Result:
        assert self.target is not None
        return self._run("curl GET", lambda out: run_command(
            "curl GET", ["curl", "-s", "-f", "-o", "/dev/null", self.target.url(KEY)], nbytes=self.size), check=False)

    def boto3(self) -> Result:
        assert self.target is not None
        return self._run("boto3 defaults", lambda out: run_python(
            "boto3 defaults", boto3_side, self.target, str(out / "file.bin"), nbytes=self.size, env=self.target.env))

    def ferry(self, chunk_size: int | None = None, workers: int | None = None, name: str = "ferry") -> Result:
        assert self.target is not None
        return self._run(name, lambda out: run_python(
            name, ferry_s3_side, self.target, self.size, self.crc, str(out), chunk_size, workers,
            nbytes=self.size, env=self.target.env))

    def cp(self, sync: bool) -> Result:
        assert self.store_root is not None
        source = self.store_root / KEY
        return self._run("cp + sync" if sync else "cp",
                         lambda out: run_cp(source, out / "file.bin", sync=sync, nbytes=self.size))

    def ferry_local(self) -> Result:
        assert self.store_root is not None
        return self._run("ferry local", lambda out: run_python(
            "ferry local", ferry_local_side, str(self.store_root), self.size, self.crc, str(out), nbytes=self.size))


def _interleaved(repeat: int, makers: Sequence[Callable[[], Result]]) -> list[Result]:
    """Each side `repeat` times, interleaved so that drift (cache, thermal, server state) hits
    all sides, and in a rotated order each round: a side's speed can depend on the one before
    it (this VM reuses the pages a deleted output just freed much faster than it grows into
    memory it gave back), so no side always follows the same one."""
    runs: list[list[Result]] = [[] for _ in makers]
    for round_ in range(repeat):
        for step in range(len(makers)):
            i = (round_ + step) % len(makers)
            runs[i].append(makers[i]())
    return [median_run(r) for r in runs]


def _upload(target: S3Target, path: Path) -> None:
    client = target.client(request_checksum_calculation="when_required")
    client.upload_file(str(path), target.bucket, KEY, Config=TransferConfig())


def run_s3(path: Path, size: int, crc: int, repeat: int, scratch: Path, chunk_size: int | None,
           workers: int | None, tune: bool) -> tuple[list[Result], list[Result], bool]:
    with seaweed_server() as target:
        _upload(target, path)
        verified = ferry_refuses_a_wrong_crc32c(target, size, crc, scratch)
        sides = Sides(scratch, size, crc, target=target)
        results = _interleaved(repeat, [sides.curl, sides.boto3, lambda: sides.ferry(chunk_size, workers)])
        grid: list[Result] = []
        if tune:
            makers: list[Callable[[], Result]] = [sides.boto3]
            for chunk_mib in TUNE_CHUNK_SIZES:
                for count in TUNE_WORKERS:
                    name = f"ferry {chunk_mib}MiB x{count}"
                    makers.append(lambda c=chunk_mib, n=count, name=name: sides.ferry(c * MiB, n, name))
            grid = _interleaved(repeat, makers)
        return results, grid, verified


def run_local(path: Path, size: int, crc: int, repeat: int, scratch: Path) -> list[Result]:
    root = scratch / "store"
    stored = root / KEY
    stored.parent.mkdir(parents=True)
    shutil.copyfile(path, stored)
    sides = Sides(scratch, size, crc, store_root=root)
    return _interleaved(repeat, [lambda: sides.cp(False), lambda: sides.cp(True), sides.ferry_local])


# --- report ----------------------------------------------------------------------------------


def _human(size: int) -> str:
    return f"{size / 1024**3:g} GiB" if size >= 1024**3 else f"{size / MiB:g} MiB"


def verdicts(s3: Sequence[Result], local: Sequence[Result], verified: bool | None) -> list[tuple[str, bool]]:
    checks: list[tuple[str, bool]] = []
    names = {r.name: r for r in [*s3, *local]}
    if "ferry" in names and "boto3 defaults" in names:
        value = ratio(s3, "ferry", "boto3 defaults")
        checks.append((f"ferry / boto3 defaults = {value:.2f} (target >= {TARGET_VS_BOTO3})", value >= TARGET_VS_BOTO3))
    if "ferry" in names:
        peak = names["ferry"].peak_rss_bytes
        checks.append((f"ferry peak RSS = {peak / MiB:.0f} MiB (target <= {RSS_LIMIT // MiB})", peak <= RSS_LIMIT))
    if verified is not None:
        checks.append(("ferry refuses an object whose CRC32C differs (verification really on)", verified))
    if "ferry local" in names and "cp" in names:
        value = ratio(local, "ferry local", "cp")
        checks.append((f"ferry local / cp = {value:.2f} (target >= {TARGET_LOCAL_VS_CP})", value >= TARGET_LOCAL_VS_CP))
    if "ferry local" in names and "cp + sync" in names:
        value = ratio(local, "ferry local", "cp + sync")
        checks.append((f"ferry local / cp + sync = {value:.2f} (target >= {TARGET_LOCAL_VS_CP})", value >= TARGET_LOCAL_VS_CP))
    return checks


def _parse(argv: list[str] | None) -> argparse.Namespace:
    from bench.harness import _size_type

    parser = argparse.ArgumentParser(prog="ferry bench download", description=__doc__.split("\n\n")[0])
    add_size_argument(parser)
    parser.add_argument("--repeat", type=int, default=1, help="runs per side, interleaved; the median is shown")
    parser.add_argument("--chunk-size", type=_size_type, default=None, help="Ferry's range size (default: its own)")
    parser.add_argument("--workers", type=int, default=None, help="Ferry's ranges in flight (default: its own)")
    parser.add_argument("--only", choices=("s3", "local", "peers"), default=None,
                        help="run one group only (peers: s5cmd, rclone, aws-cli and the ferry CLI end to end)")
    parser.add_argument("--tune", action="store_true", help="also sweep Ferry chunk sizes 8-32 MiB x workers 2/3/4/8")
    parser.add_argument("--check", action="store_true", help="exit 1 when a target is missed")
    parser.add_argument("--json", action="store_true", help="print results as JSON instead of tables")
    parser.add_argument("--tmp", type=Path, default=None, help="folder for temp files (default: system temp)")
    peers.add_arguments(parser)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    scratch = Path(tempfile.mkdtemp(prefix="ferry-bench-download-", dir=args.tmp))
    s3: list[Result] = []
    grid: list[Result] = []
    local: list[Result] = []
    verified: bool | None = None
    peer_reports: list[peers.JobReport] = []
    api_origin = ""
    try:
        path = scratch / "random.bin"
        if args.only != "peers":  # the peers' jobs write files of their own
            make_random_file(path, args.size)
            with open(path, "rb") as handle:
                crc, _ = crc32c_of_stream(handle)
        if args.only in (None, "s3"):
            s3, grid, verified = run_s3(path, args.size, crc, args.repeat, scratch, args.chunk_size,
                                        args.workers, args.tune)
        if args.only in (None, "local"):
            local = run_local(path, args.size, crc, args.repeat, scratch)
        if args.only in (None, "peers"):
            path.unlink(missing_ok=True)  # free its disk for the peers' own files
            peer_reports, api_origin = peers.run_jobs(peers.jobs_for("download", args), repeat=args.repeat,
                                                      scratch=scratch, peers=args.peers)
    except Exception as exc:
        print(f"ferry bench download: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}",
              file=sys.stderr)
        return 2
    finally:
        shutil.rmtree(scratch, ignore_errors=True)

    checks = verdicts(s3, local, verified) + peers.verdicts(peer_reports)
    if args.json:
        print(json.dumps({
            "size": args.size,
            "s3": [asdict(r) | {"mb_per_s": r.mb_per_s} for r in s3],
            "local": [asdict(r) | {"mb_per_s": r.mb_per_s} for r in local],
            "tune": [asdict(r) | {"mb_per_s": r.mb_per_s} for r in grid],
            "peers": [peers.report_json(r) for r in peer_reports],
            "checks": [{"check": text, "pass": ok} for text, ok in checks],
        }, indent=2, default=str))
    else:
        size = _human(args.size)
        runs = f", median of {args.repeat}" if args.repeat > 1 else ""
        if s3:
            print(format_table(f"download {size} from loopback SeaweedFS{runs}", s3, baseline="boto3 defaults"))
            print(f"ferry / curl GET = {ratio(s3, 'ferry', 'curl GET'):.2f}\n")
        if local:
            print(format_table(f"download {size} from a local store{runs}", local, baseline="cp") + "\n")
        if grid:
            print(format_table(f"ferry chunk size x workers, {size}{runs}", grid, baseline="boto3 defaults"))
            within = [r for r in grid if r.name.startswith("ferry") and r.peak_rss_bytes <= RSS_LIMIT]
            if within:
                best = max(within, key=lambda r: r.mb_per_s)
                print(f"fastest within {RSS_LIMIT // MiB} MiB RSS: {best.name} ({best.mb_per_s:.1f} MB/s)\n")
        if peer_reports:
            print(f"ferry runs as `python -m ferry.cli`, SQLite catalog, Prefect API: {api_origin}; after one untimed warm-up "
              "ingest, each command runs in the warm ferry process (ferry.cli.warm), whose peak RSS and CPU count\n")
            for report in peer_reports:
                print(peers.format_job(report) + "\n")
        for text, ok in checks:
            print(f"[{'PASS' if ok else 'FAIL'}] {text}")
    return 1 if args.check and not all(ok for _, ok in checks) else 0


if __name__ == "__main__":
    sys.exit(main())
