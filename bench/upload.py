"""`ferry bench upload`: Ferry's upload against what a user would pick instead, side by side.

S3 (loopback SeaweedFS, anonymous, one random file, default 1 GiB):
- `curl PUT`        one streamed PUT (`curl -s -T`): the server's ceiling for one stream;
- `boto3 defaults`  `upload_file` with TransferConfig and client defaults (checksums
                    `when_supported`: over plain http, as here, botocore signs the payload with
                    SHA-256 and sends CRC32 as a header, not as an aws-chunked trailer; the
                    trailer is used only over https);
- `boto3 when_required` (context) the same with `request_checksum_calculation="when_required"`;
- `ferry`           `storage_core.upload.upload_file` into an S3Store: parallel multipart,
                    a CRC32C per part sent as `x-amz-checksum-crc32c` and verified by the server.
Local disk:
- `cp`              `cp src dst` into a temp folder (the bytes reach the page cache only);
- `cp + sync`       `cp src dst && sync dst` (as durable as Ferry's fsync);
- `ferry local`     `upload_file` into a LocalStore (kernel copy, CRC32C of the copy, fsync,
                    atomic rename).

Peers (bench.peers): s5cmd, rclone and aws-cli beside `python -m ferry.cli ingest` end to end
(SQLite catalog, a warm Prefect API), uploading `--files` × `--file-size` (default 1,000 ×
100 KiB) and one `--size` file, each side's stored bytes checked; a missing peer is skipped.

Targets (printed as PASS/FAIL): ferry ≥ 1.5× boto3 defaults, ferry peak RSS ≤ 256 MiB,
ferry local ≥ 0.7× cp and ≥ 0.7× cp + sync. `--tune` adds a grid of part sizes × concurrencies for Ferry.
Before timing, the run checks that the server really rejects a part whose CRC32C is wrong,
so "integrity checks on" is a measured fact, not an assumption.

Every side runs in its own fresh process (bench.harness); the file is read from the page
cache by every side alike; dirty pages are flushed between sides and objects deleted.
Client and server share this machine's cores, so each S3 row also shows the server's CPU and
what the rest of the machine took meanwhile (`other_cpu_seconds`): a row with several seconds
there was measured while something else ran, and says little.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import os
import shutil
import statistics
import sys
import tempfile
import uuid
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

# Imported here, not in the sides, so that no side's timed call pays for imports (as in
# bench.download): the table compares transfers, not interpreter start-up. Ferry's imports
# take ~0.2 s, which a 1 GiB local copy (~0.3 s) would otherwise carry.
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
    machine_busy_seconds,
    make_random_file,
    process_cpu_seconds,
    run_command,
    run_cp,
    run_python,
    seaweed_server,
    settle,
)
from storage_core.errors import BenchmarkFailed
from storage_core.stores.local import LocalStore
from storage_core.stores.s3 import S3Store
from storage_core.upload import upload_file

RSS_LIMIT = 256 * MiB
TARGET_VS_BOTO3 = 1.5
TARGET_LOCAL_VS_CP = 0.7
TUNE_PART_SIZES = (8, 16, 32, 64)  # MiB
TUNE_CONCURRENCY = (2, 4, 8)
CPU_COLUMNS = ("cpu_seconds", "server_cpu_seconds", "other_cpu_seconds")
CPU_NOTE = (
    "cpu_seconds: the side's user+sys CPU; server_cpu_seconds: what `weed` spent meanwhile; "
    "other_cpu_seconds: the rest of the machine meanwhile (start-up of the side's process, other users' work)"
)


# --- sides: module-level so bench.harness can run each in a fresh interpreter ----------------


def boto3_side(target: S3Target, path: str, key: str, checksums: str) -> dict[str, Any]:
    config: dict[str, Any] = {} if checksums == "default" else {"request_checksum_calculation": checksums}
    client = target.client(**config)
    client.upload_file(path, target.bucket, key, Config=TransferConfig())
    return {"boto3": boto3.__version__, "checksums": checksums}


def ferry_s3_side(target: S3Target, path: str, key: str, part_size: int | None, concurrency: int | None) -> dict[str, Any]:
    store = S3Store(target.bucket, endpoint_url=target.endpoint)  # credentials from the environment
    options: dict[str, Any] = {}
    if part_size is not None:
        options["part_size"] = part_size
    if concurrency is not None:
        options["max_concurrency"] = concurrency
    result = upload_file(store, path, key, **options)
    return {"parts": result.parts_sent, "crc32c": f"{result.crc32c:08x}", "size": result.size}


def ferry_local_side(root: str, path: str, key: str) -> dict[str, Any]:
    result = upload_file(LocalStore(root), path, key)
    return {"crc32c": f"{result.crc32c:08x}", "size": result.size}


# --- checks ---------------------------------------------------------------------------------


def server_verifies_part_crc32c(target: S3Target) -> bool:
    """Send one part with a deliberately wrong CRC32C: True when the server refuses it."""
    import botocore.exceptions

    from storage_core.checksums import crc32c, to_header

    client = target.client(request_checksum_calculation="when_required")  # as Ferry's client sends it
    key = f"crc-check-{uuid.uuid4().hex[:8]}"
    upload_id = client.create_multipart_upload(Bucket=target.bucket, Key=key)["UploadId"]
    body = b"ferry" * 1000
    try:
        client.upload_part(
            Bucket=target.bucket, Key=key, UploadId=upload_id, PartNumber=1, Body=body,
            ChecksumCRC32C=to_header(crc32c(body) ^ 1),
        )
    except botocore.exceptions.ClientError:
        return True
    finally:
        client.abort_multipart_upload(Bucket=target.bucket, Key=key, UploadId=upload_id)
    return False


def _stored_size(target: S3Target, key: str) -> int:
    return int(target.client().head_object(Bucket=target.bucket, Key=key)["ContentLength"])


# --- running ---------------------------------------------------------------------------------


class S3Sides:
    """Runs S3 sides against one server, checks each stored object, deletes it afterwards."""

    def __init__(self, target: S3Target, path: Path, size: int, *, auth: bool = False) -> None:
        self.target, self.path, self.size, self.auth = target, path, size, auth

    def _run(self, name: str, start: Callable[[str], Result]) -> Result:
        key = f"bench/{uuid.uuid4().hex[:12]}"
        settle()
        server_cpu = process_cpu_seconds(self.target.server_pid) if self.target.server_pid else None
        busy = machine_busy_seconds()
        result = start(key)
        busy = machine_busy_seconds() - busy
        if server_cpu is not None:
            spent = process_cpu_seconds(self.target.server_pid) - server_cpu
            # the child's interpreter start (~0.3 s) is not in cpu_seconds, so it lands here
            others = max(0.0, busy - spent - result.extra.get("cpu_seconds", 0.0))
            extra = {**result.extra, "server_cpu_seconds": round(spent, 2), "other_cpu_seconds": round(others, 2)}
            result = dataclasses.replace(result, extra=extra)
        stored = _stored_size(self.target, key)
        if stored != self.size:
            raise BenchmarkFailed(f"{name}: stored {stored} bytes, expected {self.size}")
        self.target.client().delete_object(Bucket=self.target.bucket, Key=key)
        return result

    def curl(self) -> Result:
        return self._run("curl PUT", lambda key: run_command(
            "curl PUT", ["curl", "-s", "-f", "-T", str(self.path), self._put_url(key)], nbytes=self.size))

    def _put_url(self, key: str) -> str:
        if not self.auth:
            return self.target.url(key)
        client = self.target.client()
        return client.generate_presigned_url("put_object", Params={"Bucket": self.target.bucket, "Key": key}, ExpiresIn=3600)

    def boto3(self, checksums: str = "default") -> Result:
        name = "boto3 defaults" if checksums == "default" else f"boto3 {checksums}"
        return self._run(name, lambda key: run_python(
            name, boto3_side, self.target, str(self.path), key, checksums, nbytes=self.size, env=self.target.env))

    def ferry(self, part_size: int | None = None, concurrency: int | None = None, name: str = "ferry") -> Result:
        return self._run(name, lambda key: run_python(
            name, ferry_s3_side, self.target, str(self.path), key, part_size, concurrency,
            nbytes=self.size, env=self.target.env))


def _rounds(makers: dict[str, Callable[[], Result]], repeat: int) -> tuple[list[Result], list[dict[str, Result]]]:
    """Run every side once per round, `repeat` rounds (interleaved, so drift in the machine or
    the server hits all sides alike). Returns the median per side and the rounds themselves."""
    rounds: list[dict[str, Result]] = []
    for _ in range(repeat):
        rounds.append({name: make() for name, make in makers.items()})
    return [median_run([r[name] for r in rounds]) for name in makers], rounds


def run_s3(
    path: Path, size: int, repeat: int, part_size: int | None, concurrency: int | None, *, auth: bool = False
) -> tuple[list[Result], list[dict[str, Result]], bool]:
    with seaweed_server(auth=auth) as target:
        verified = server_verifies_part_crc32c(target)
        sides = S3Sides(target, path, size, auth=auth)
        makers: dict[str, Callable[[], Result]] = {
            "curl PUT": sides.curl,
            "boto3 defaults": sides.boto3,
            "boto3 when_required": lambda: sides.boto3("when_required"),
            "ferry": lambda: sides.ferry(part_size, concurrency),
        }
        results, rounds = _rounds(makers, repeat)
        return results, rounds, verified


def run_tune(path: Path, size: int, repeat: int, *, auth: bool = False) -> tuple[list[Result], list[dict[str, Result]]]:
    with seaweed_server(auth=auth) as target:
        sides = S3Sides(target, path, size, auth=auth)
        makers: dict[str, Callable[[], Result]] = {
            "boto3 defaults": sides.boto3,
            "boto3 when_required": lambda: sides.boto3("when_required"),
        }
        for part_mib in TUNE_PART_SIZES:
            for concurrency in TUNE_CONCURRENCY:
                name = f"ferry {part_mib}MiB x{concurrency}"
                makers[name] = functools.partial(sides.ferry, part_mib * MiB, concurrency, name)
        return _rounds(makers, repeat)


def run_local(path: Path, size: int, repeat: int, scratch: Path) -> tuple[list[Result], list[dict[str, Result]]]:
    def cp(sync: bool) -> Result:
        dest = scratch / f"cp-{uuid.uuid4().hex[:8]}"
        settle()
        try:
            return run_cp(path, dest, sync=sync, nbytes=size)
        finally:
            dest.unlink(missing_ok=True)

    def ferry_local() -> Result:
        root = scratch / f"store-{uuid.uuid4().hex[:8]}"
        settle()
        try:
            return run_python("ferry local", ferry_local_side, str(root), str(path), "bench/file", nbytes=size)
        finally:
            shutil.rmtree(root, ignore_errors=True)

    return _rounds({"cp": lambda: cp(False), "cp + sync": lambda: cp(True), "ferry local": ferry_local}, repeat)


def paired_ratio(rounds: list[dict[str, Result]], numerator: str, denominator: str) -> float:
    """Median over rounds of numerator/denominator MB/s measured in the same round: on a
    shared, noisy machine this is steadier than a ratio of medians."""
    return statistics.median(r[numerator].mb_per_s / r[denominator].mb_per_s for r in rounds)


# --- report ----------------------------------------------------------------------------------


def _mib(size: int) -> str:
    return f"{size / 1024**3:g} GiB" if size >= 1024**3 else f"{size / MiB:g} MiB"


def verdicts(
    s3_rounds: list[dict[str, Result]], local_rounds: list[dict[str, Result]], verified: bool | None
) -> list[tuple[str, bool]]:
    checks: list[tuple[str, bool]] = []
    if s3_rounds:
        value = paired_ratio(s3_rounds, "ferry", "boto3 defaults")
        checks.append((f"ferry / boto3 defaults = {value:.2f} (target >= {TARGET_VS_BOTO3})", value >= TARGET_VS_BOTO3))
        peak = max(r["ferry"].peak_rss_bytes for r in s3_rounds)
        checks.append((f"ferry peak RSS = {peak / MiB:.0f} MiB (target <= {RSS_LIMIT // MiB})", peak <= RSS_LIMIT))
    if verified is not None:
        checks.append(("server rejects a part with a wrong CRC32C (integrity checks really on)", verified))
    if local_rounds:
        for baseline in ("cp", "cp + sync"):
            value = paired_ratio(local_rounds, "ferry local", baseline)
            checks.append((f"ferry local / {baseline} = {value:.2f} (target >= {TARGET_LOCAL_VS_CP})",
                           value >= TARGET_LOCAL_VS_CP))
    return checks


def _as_json(result: Result) -> dict[str, Any]:
    return asdict(result) | {"mb_per_s": result.mb_per_s}


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="ferry bench upload", description=__doc__.split("\n\n")[0])
    add_size_argument(parser)
    parser.add_argument("--repeat", type=int, default=1, help="runs per side, interleaved; the median is shown")
    parser.add_argument("--part-size", type=_mib_or_size, default=None, help="Ferry's part size (default: its own)")
    parser.add_argument("--concurrency", type=int, default=None, help="Ferry's parts in flight (default: its own)")
    parser.add_argument("--auth", action="store_true",
                        help="run SeaweedFS with access keys, so it verifies signatures (curl uses a presigned URL)")
    parser.add_argument("--only", choices=("s3", "local", "peers", "tune"), default=None,
                        help="run one group only (peers: s5cmd, rclone, aws-cli and the ferry CLI end to end; "
                             "tune: only the part size x concurrency grid)")
    parser.add_argument("--tune", action="store_true", help="also sweep Ferry part sizes 8-64 MiB x concurrency 2/4/8")
    parser.add_argument("--check", action="store_true", help="exit 1 when a target is missed")
    parser.add_argument("--json", action="store_true", help="print results as JSON instead of tables")
    parser.add_argument("--tmp", type=Path, default=None, help="folder for the temp file (default: system temp)")
    peers.add_arguments(parser)
    return parser.parse_args(argv)


def _mib_or_size(text: str) -> int:
    from bench.harness import _size_type

    return _size_type(text)


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    scratch = Path(tempfile.mkdtemp(prefix="ferry-bench-upload-", dir=args.tmp))
    s3: list[Result] = []
    local: list[Result] = []
    tune: list[Result] = []
    s3_rounds: list[dict[str, Result]] = []
    peer_reports: list[peers.JobReport] = []
    api_origin = ""
    local_rounds: list[dict[str, Result]] = []
    verified: bool | None = None
    load_before = os.getloadavg()[0]
    try:
        path = scratch / "random.bin"
        if args.only != "peers":  # the peers' jobs write files of their own
            make_random_file(path, args.size)
        if args.only in (None, "s3"):
            s3, s3_rounds, verified = run_s3(
                path, args.size, args.repeat, args.part_size, args.concurrency, auth=args.auth
            )
        if args.only in (None, "local"):
            local, local_rounds = run_local(path, args.size, args.repeat, scratch)
        if args.tune or args.only == "tune":
            tune, _ = run_tune(path, args.size, args.repeat, auth=args.auth)
        if args.only in (None, "peers"):
            peer_reports, api_origin = peers.run_jobs(peers.jobs_for("upload", args), repeat=args.repeat,
                                                      scratch=scratch, auth=args.auth, peers=args.peers)
    except Exception as exc:
        first_line = str(exc).splitlines()[0] if str(exc) else ""
        print(f"ferry bench upload: {type(exc).__name__}: {first_line}", file=sys.stderr)
        return 2
    finally:
        shutil.rmtree(scratch, ignore_errors=True)

    checks = verdicts(s3_rounds, local_rounds, verified) + peers.verdicts(peer_reports)
    if args.json:
        print(json.dumps({
            "size": args.size,
            "repeat": args.repeat,
            "load_average_1m_before": load_before,
            "auth": args.auth,
            "s3": [_as_json(r) for r in s3],
            "local": [_as_json(r) for r in local],
            "tune": [_as_json(r) for r in tune],
            "peers": [peers.report_json(r) for r in peer_reports],
            "checks": [{"check": text, "pass": ok} for text, ok in checks],
        }, indent=2, default=str))
        return 1 if args.check and not all(ok for _, ok in checks) else 0

    size = _mib(args.size)
    runs = f", median of {args.repeat} interleaved runs" if args.repeat > 1 else ""
    print(f"machine: {os.cpu_count()} cores, 1-min load average {load_before:.1f} before the run"
          + (" (busy: other work shares these cores, numbers are noisy)" if load_before > 1 else "")
          + ("; SeaweedFS with access keys (signatures verified)" if args.auth else "; SeaweedFS anonymous"))
    print()
    if s3:
        print(format_table(f"upload {size} to loopback SeaweedFS{runs}", s3, baseline="boto3 defaults", extra_columns=CPU_COLUMNS))
        print(f"ferry / boto3 defaults = {paired_ratio(s3_rounds, 'ferry', 'boto3 defaults'):.2f}, "
              f"ferry / curl PUT = {paired_ratio(s3_rounds, 'ferry', 'curl PUT'):.2f} (median of per-run ratios)")
        print(f"ferry sent {s3[-1].extra.get('parts')} parts; {CPU_NOTE}\n")
    if local:
        print(format_table(f"copy {size} to local disk{runs}", local, baseline="cp", extra_columns=CPU_COLUMNS[:1]))
        print()
    if tune:
        print(format_table(f"ferry part size x concurrency, {size}{runs}", tune, baseline="boto3 defaults", extra_columns=CPU_COLUMNS))
        within = [r for r in tune if r.name.startswith("ferry") and r.peak_rss_bytes <= RSS_LIMIT]
        over = [r.name for r in tune if r.name.startswith("ferry") and r.peak_rss_bytes > RSS_LIMIT]
        if within:
            best = max(within, key=lambda r: r.mb_per_s)
            print(f"fastest within {RSS_LIMIT // MiB} MiB RSS: {best.name} ({best.mb_per_s:.1f} MB/s)")
        if over:
            print(f"over {RSS_LIMIT // MiB} MiB RSS: {', '.join(over)}")
        print()
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
