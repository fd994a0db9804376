"""The fanned-out ingest in-process (children as subflows) on a real Prefect API, SeaweedFS
and SQLite: every file stored once, one transaction per recording group, and a claimer that
dies mid-group has its transaction resumed by another (no part sent twice, no orphaned
multipart upload)."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from prefect import flow
from sqlalchemy import select

import flows.ingest_fanout as fanout_flows
from flows.fanout import FanOut
from flows.ingest import IngestReport
from flows.ingest_fanout import IngestFanoutParams, IngestFanoutReport, ingest_fanout
from storage_core.catalog import Catalog
from storage_core.catalog import transactions as records
from storage_core.catalog.models import StoredObject
from storage_core.catalog.queries import list_objects
from storage_core.catalog.summaries import get_summary
from storage_core.catalog.work import ClaimedItem, claim_next, job_status, list_items
from storage_core.checksums import crc32c
from storage_core.claims import Claim, LeaseKeeper
from storage_core.errors import CatalogError, LeaseLost
from storage_core.keys import parse_uri
from storage_core.retry import poll
from storage_core.upload import transactions
from storage_core.upload.groups import RecordingGroup, begin_group
from tasks import upload as upload_tasks
from tests.flows.conftest import MiB, run_ferry, write_landing
from tests.integration.test_summaries import mcap_bytes

pytestmark = pytest.mark.slow  # flows against a real Prefect API

LEASE = 2.0  # seconds: short, so a dead claimer's group is taken over quickly


def _landing(root: Path, *, big: int = 0) -> tuple[Path, int]:
    """8 recordings of 5 files on 2 devices (the first recording's first file `big` bytes
    when asked); the folder and its number of files."""
    files = {f"d{d}/rec{r}/f{f}.bin": 1000 + 37 * f for d in (1, 2) for r in range(4) for f in range(5)}
    if big:
        files["d1/rec0/f0.bin"] = big
    return write_landing(root, files), len(files)


def _assert_stored_once(env, bucket, source: Path, files: int, report, *, killed: bool = False) -> None:  # noqa: ANN001
    catalog = Catalog(env["FERRY_DATABASE_URL"])
    objects = list_objects(catalog)
    assert len(objects) == files and len({o.key for o in objects}) == files
    keys = [meta.key for meta in bucket.list("fleet/")]
    assert len(keys) == files and sorted(keys) == sorted(o.key for o in objects)
    for obj in objects:
        relative = obj.key.removeprefix("fleet/")
        assert obj.crc32c == crc32c((source / relative).read_bytes())
    txns = records.list_transactions(catalog)
    assert len(txns) == report.groups == len(set(report.transactions))  # one transaction per group, none more
    assert all(t.status == "completed" for t in txns)
    for txn in txns:  # each holds its whole group, every file settled
        assert txn.id in report.transactions and len(txn.items) == files // report.groups
        assert txn.count("stored") + txn.count("skipped") == len(txn.items)
    left = {u.upload_id for u in bucket.list_multipart_uploads()}
    if killed:  # a kill between creating an upload and recording it orphans it: reconcile's to abort
        assert not left & {i.upload_id for t in txns for i in t.items if i.upload_id}
    else:
        assert left == set()


def _params(source: Path, bucket, **fan) -> IngestFanoutParams:  # noqa: ANN001
    return IngestFanoutParams(source=str(source), to=f"s3://{bucket.bucket}/fleet",
                              fan_out=FanOut(claimers=2, lease_seconds=LEASE, poll_seconds=0.2, **fan))


def test_two_claimers_store_40_files_of_8_recordings_once(ferry_env, bucket, tmp_path):
    source, files = _landing(tmp_path / "in")
    report = ingest_fanout(_params(source, bucket))
    assert (report.groups, report.groups_done, report.groups_failed, report.outcome) == (8, 8, 0, "completed")
    assert report.files_stored == files == 40 and report.files_skipped == 0
    _assert_stored_once(ferry_env, bucket, source, files, report)

    again = ingest_fanout(_params(source, bucket))  # a new job over the same files: all identical, nothing sent
    assert again.files_stored == 0 and again.files_skipped == 40 and again.parts_sent == 0
    assert len(list(bucket.list("fleet/"))) == 40


def test_groups_of_recordings_are_one_transaction_each(ferry_env, bucket, tmp_path):
    source, files = _landing(tmp_path / "in")
    params = _params(source, bucket)
    params.group_size = 3  # 8 recordings: groups of 3, 3 and 2
    report = ingest_fanout(params)
    assert report.groups == 3 and report.files_stored == files
    sizes = sorted(len(records.get_transaction(Catalog(ferry_env["FERRY_DATABASE_URL"]), t).items)
                   for t in report.transactions)
    assert sizes == [10, 15, 15]


@flow
def _plan_only(source: str, destination: str):  # noqa: ANN202 - the parent's planning step, alone
    return upload_tasks.plan_ingest_job(source, destination, device_id=None, origination="test", group_size=1,
                                        job_id=None, max_attempts=3)


def test_a_claimer_killed_mid_group_is_resumed_by_another_without_resending(ferry_env, bucket, tmp_path):
    source, files = _landing(tmp_path / "in", big=12 * MiB)  # 3 parts of 5 MiB
    destination = f"s3://{bucket.bucket}/fleet"
    job = _plan_only(str(source), destination)
    catalog = Catalog(ferry_env["FERRY_DATABASE_URL"])

    # a worker claims the first group, begins its transaction, stores one small file and the
    # first part of the big one, and dies: exactly what the catalog holds after a SIGKILL
    dead = claim_next(catalog, job.id, "killed-worker", lease=LEASE)
    group = RecordingGroup.from_json(dead.payload)
    assert group.recordings == ("d1/rec0",)
    txn = begin_group(catalog, group, parse_uri(destination), origination="test", device_id=None, flow_run_id=None)
    big = next(i for i in txn.items if i.relative_path == "f0.bin")
    small = next(i for i in txn.items if i.relative_path == "f1.bin")
    transactions.upload_item(catalog, small.id)
    records.start_item_upload(catalog, big.id)
    upload_id = bucket.create_multipart(big.key)
    records.record_upload_started(catalog, big.id, upload_id, 5 * MiB)
    first = (source / "d1/rec0/f0.bin").read_bytes()[:5 * MiB]
    etag = bucket.upload_part(big.key, upload_id, 1, first, crc32c=crc32c(first))
    records.record_part_stored(catalog, big.id, records.RecordedPart(1, 5 * MiB, crc32c(first), etag))

    params = _params(source, bucket)
    params.job_id = job.id  # carry on the recorded job (no new scan, no new transactions)
    report = ingest_fanout(params)

    assert report.groups_done == 8 and report.files_stored == files
    assert txn.id in report.transactions
    assert report.parts_reused == 1  # the dead worker's part; its other two parts sent once
    resumed = list_items(catalog, job.id)[0]
    assert resumed.attempts == 2 and resumed.claimed_by != "killed-worker" and resumed.status == "done"
    _assert_stored_once(ferry_env, bucket, source, files, report)
    assert bucket.get_range(big.key, 0, 12 * MiB) == (source / "d1/rec0/f0.bin").read_bytes()



@pytest.fixture(params=["sqlite", "postgresql"])
def claims_env(request, ferry_env, monkeypatch) -> dict[str, str]:  # noqa: ANN001
    """ferry_env with its catalog on SQLite or on a throwaway PostgreSQL database."""
    if request.param == "sqlite":
        return ferry_env
    url = request.getfixturevalue("pg_url")
    monkeypatch.setenv("FERRY_DATABASE_URL", url)
    return {**ferry_env, "FERRY_DATABASE_URL": url}


def _one_group(claim: Claim, job) -> IngestReport:  # noqa: ANN001 - a child's work on one claimed group, alone
    @flow
    def one_group() -> IngestReport:
        return fanout_flows._ingest_group(claim, job.parameters)

    return one_group()


def _taken_over(catalog: Catalog, job_id: str) -> tuple[ClaimedItem, ClaimedItem]:
    """Group 1 claimed by A, whose lease ran out, then by B: (A's stale claim, B's)."""
    stale = claim_next(catalog, job_id, "A", lease=0.2)
    time.sleep(0.4)
    return stale, claim_next(catalog, job_id, "B", lease=60)


def test_a_claimer_whose_group_was_taken_over_sends_completes_and_aborts_nothing(claims_env, bucket, tmp_path):
    """A was paused past its lease and B claimed the group; A's own clock has not noticed
    (its keeper's check passes), but the catalog has: A's batches start nothing and its
    transaction is left as it was, open for B, which stores the group alone."""
    source, files = _landing(tmp_path / "in", big=12 * MiB)
    job = _plan_only(str(source), f"s3://{bucket.bucket}/fleet")
    catalog = Catalog(claims_env["FERRY_DATABASE_URL"])
    stale, current = _taken_over(catalog, job.id)
    group = RecordingGroup.from_json(stale.payload)

    with pytest.raises(LeaseLost):
        _one_group(Claim(stale, LeaseKeeper(catalog, stale, lease=60)), job)
    left = records.get_transaction(catalog, group.transaction_id)
    assert left.status in ("pending", "uploading") and left.count("stored") == 0 and left.count("aborted") == 0
    assert list(bucket.list("fleet/")) == [] and bucket.list_multipart_uploads() == []

    report = _one_group(Claim(current, LeaseKeeper(catalog, current, lease=60)), job)
    assert report.status == "completed" and report.files_stored == 5 and report.parts_reused == 0
    assert bucket.get_range("fleet/d1/rec0/f0.bin", 0, 12 * MiB) == (source / "d1/rec0/f0.bin").read_bytes()
    assert bucket.list_multipart_uploads() == []


def test_a_group_completed_by_a_worker_that_died_before_summarizing_is_summarized_by_the_next(
    ferry_env, bucket, tmp_path
):
    root = tmp_path / "in"
    (root / "d1/rec0").mkdir(parents=True)
    (root / "d1/rec0/log.mcap").write_bytes(mcap_bytes({"/imu": 3}))
    job = _plan_only(str(root), f"s3://{bucket.bucket}/fleet")
    catalog = Catalog(ferry_env["FERRY_DATABASE_URL"])
    dead = claim_next(catalog, job.id, "died-after-complete", lease=LEASE)
    txn = begin_group(catalog, RecordingGroup.from_json(dead.payload), parse_uri(f"s3://{bucket.bucket}/fleet"),
                      origination="test", device_id=None, flow_run_id=None)
    transactions.upload_items(catalog, [i.id for i in txn.items])
    records.complete_transaction(catalog, txn.id)  # ... and killed before summarizing
    with catalog.session() as session:
        [object_id] = session.scalars(select(StoredObject.id)).all()
    assert get_summary(catalog, object_id).summary is None

    params = _params(root, bucket)
    params.job_id = job.id
    report = ingest_fanout(params)
    assert report.groups_done == 1 and report.transactions == [txn.id] and report.summaries == 1
    assert get_summary(catalog, object_id).summary["message_count"] == 3


def test_ferry_ingest_fan_out_from_the_command_line(ferry_env, bucket, tmp_path):
    source, files = _landing(tmp_path / "in")
    done = run_ferry(["ingest", str(source), "--to", f"s3://{bucket.bucket}/fleet", "--fan-out", "2", "--group-size", "4",
                      "--lease", "5", "--json"], ferry_env)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert (report["groups"], report["files_stored"], report["outcome"]) == (2, files, "completed")
    assert len(list(bucket.list("fleet/"))) == files
    bad = run_ferry(["ingest", str(source), "--fan-out", "0"], ferry_env)
    assert bad.returncode != 0 and "Traceback" not in bad.stderr

    shown = run_ferry(["jobs", "show", report["job_id"], "--json"], ferry_env)
    assert shown.returncode == 0, shown.stderr
    job = json.loads(shown.stdout)
    assert (job["job"]["kind"], job["status"]["done"], job["status"]["finished"]) == ("ingest", 2, True)
    assert [(i["number"], i["status"], i["attempts"]) for i in job["items"]] == [(1, "done", 1), (2, "done", 1)]
    table = run_ferry(["jobs", "show", report["job_id"]], ferry_env)
    assert table.returncode == 0 and "2 done, 0 failed" in table.stdout
    missing = run_ferry(["jobs", "show", "no-such-job"], ferry_env)
    assert missing.returncode == 1 and missing.stderr.strip() == "error: no work job 'no-such-job'"


class _Killed(BaseException):
    """A claimer's death in the middle of a group (not an error the loop may record)."""


def test_when_every_claimer_dies_the_parent_says_so_and_a_rerun_with_the_job_id_finishes(
    ferry_env, bucket, tmp_path, monkeypatch
):
    from storage_core.errors import JobNotFinished

    source, files = _landing(tmp_path / "in")
    real = fanout_flows._ingest_group

    def dies_on_the_third_group(claim, job):  # noqa: ANN001, ANN202
        if claim.item.number == 3:
            raise _Killed()
        return real(claim, job)

    monkeypatch.setattr(fanout_flows, "_ingest_group", dies_on_the_third_group)
    params = _params(source, bucket)
    params.fan_out.claimers = 1
    params.job_id = "dies-then-carries-on"
    with pytest.raises(JobNotFinished, match="every claimer ended with 5 item\\(s\\) pending, 1 claimed"):
        ingest_fanout(params)

    monkeypatch.setattr(fanout_flows, "_ingest_group", real)
    report = ingest_fanout(params)  # the same job: its 2 stored groups stand, group 3 is taken over
    assert report.groups_done == 8 and report.files_stored == files
    _assert_stored_once(ferry_env, bucket, source, files, report)


def test_sigkill_of_a_fanned_out_ingest_then_the_same_job_again_stores_every_file_once(ferry_env, bucket, tmp_path):
    """A real kill: `ferry ingest --fan-out 2` SIGKILLed once some groups are stored (others
    half-way), then run again with its job id: the dead claims are taken over after their
    lease, every group's transaction is resumed or begun once."""
    files = {f"d{d}/rec{r}/f{f}.bin": (6 * MiB if f == 0 else 3000 + f) for d in (1, 2) for r in range(5) for f in range(4)}
    source = write_landing(tmp_path / "in", files)
    args = ["ingest", str(source), "--to", f"s3://{bucket.bucket}/fleet", "--fan-out", "2", "--lease", "3",
            "--job-id", "killed-job", "--json"]
    env = {**ferry_env, "FERRY_MAX_CONCURRENCY": "1"}
    child = subprocess.Popen([sys.executable, "-m", "ferry.cli", *args], env=env, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, cwd=Path(__file__).resolve().parents[2])
    catalog = Catalog(ferry_env["FERRY_DATABASE_URL"])
    try:
        def some_groups_done() -> bool:
            assert child.poll() is None, child.stderr.read().decode()[-2000:]
            try:
                return job_status(catalog, "killed-job").done >= 3
            except CatalogError:  # not planned yet
                return False

        poll(some_groups_done, timeout=180, what="3 groups stored", every=0.05)
        child.send_signal(signal.SIGKILL)
    finally:
        child.wait()
    status = job_status(catalog, "killed-job")
    assert not status.finished and status.done >= 3

    done = run_ferry(args, env)
    assert done.returncode == 0, done.stderr
    report = IngestFanoutReport.model_validate(json.loads(done.stdout))
    assert report.groups_done == 10 and report.files_stored == len(files)
    _assert_stored_once(ferry_env, bucket, source, len(files), report, killed=True)


@pytest.mark.soak  # the 3,000 files over 60 recordings, in one process (FERRY_SOAK=1 runs it)
def test_3000_files_of_60_recordings_with_3_claimers_one_dying_mid_group(ferry_env, bucket, tmp_path, monkeypatch,
                                                                          pg_url):
    monkeypatch.setenv("FERRY_DATABASE_URL", pg_url)
    env = {**ferry_env, "FERRY_DATABASE_URL": pg_url}
    files = {f"d{d}/rec{r:02d}/f{f:02d}.bin": 500 + f for d in range(3) for r in range(20) for f in range(50)}
    source = write_landing(tmp_path / "in", files)
    real, calls = fanout_flows._ingest_group, []

    def one_claimer_dies(claim, job):  # noqa: ANN001, ANN202 - the claimer of the 10th group dies inside it
        calls.append(claim.item.number)
        if len(calls) == 10:
            raise _Killed()
        return real(claim, job)

    monkeypatch.setattr(fanout_flows, "_ingest_group", one_claimer_dies)
    params = _params(source, bucket)
    params.fan_out.claimers, params.fan_out.lease_seconds = 3, 5.0
    report = ingest_fanout(params)
    assert report.groups_done == 60 and report.files_stored == 3000
    _assert_stored_once(env, bucket, source, 3000, report)
    died = calls[9]
    assert [i.attempts for i in list_items(Catalog(pg_url), report.job_id) if i.number == died] == [2]
