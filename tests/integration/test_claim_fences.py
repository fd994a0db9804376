"""A work item claim fences what its worker does beyond the item's own row, on SQLite and
PostgreSQL with real SeaweedFS uploads: a worker whose claim was taken over (its lease ran
out while it was cut off, or paused) can start no upload batch, complete or abort the
group's transaction, nor turn an item another worker stored into a failed one; a claim
loop whose renewals keep failing stops before another worker can take its item over; and
a catalog blip in the loop's own calls does not end it."""

from __future__ import annotations

import os
import threading
import time
from datetime import timedelta
from pathlib import Path

import pytest

import storage_core.claims as claims
from storage_core.catalog import Catalog
from storage_core.catalog import transactions as records
from storage_core.catalog.work import check_claim, claim_next, create_job, list_items
from storage_core.claims import run_claims
from storage_core.config import load_settings
from storage_core.errors import CatalogUnavailable, LeaseLost
from storage_core.keys import parse_uri
from storage_core.manifest import scan_source
from storage_core.upload.transactions import abort_claimed_transaction, prepare_manifest, upload_items

MiB = 1024 * 1024


@pytest.fixture
def settings(s3_env, tmp_path, monkeypatch):
    monkeypatch.setenv("FERRY_HOME", str(tmp_path / "home"))
    return load_settings(part_size=5 * MiB, multipart_threshold=5 * MiB, max_concurrency=2)


def _taken_over(catalog: Catalog):  # noqa: ANN202
    """One item claimed by A, whose lease ran out, then by B: (A's stale claim, B's)."""
    job = create_job(catalog, "ingest", {}, [{"group": 1}])
    stale = claim_next(catalog, job.id, "A", lease=0.2)
    time.sleep(0.4)
    current = claim_next(catalog, job.id, "B", lease=60)
    assert current is not None and current.attempt == 2
    return stale, current


def _group_transaction(catalog: Catalog, tmp_path: Path, bucket):  # noqa: ANN001, ANN202
    """A transaction of one big file (2 parts) and one small one; the big one's multipart
    upload created and recorded, nothing sent yet (as the worker before left it)."""
    root = tmp_path / "landing"
    for rel, size in {"dev/rec/big.bin": 6 * MiB, "dev/rec/small.bin": 1000}.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(os.urandom(size))
    dest = parse_uri(f"s3://{bucket.bucket}/fleet")
    entries = prepare_manifest(catalog, scan_source(root).entries, dest)
    txn = records.begin_transaction(catalog, entries, destination=dest, origination="test")
    big = next(i for i in txn.items if i.relative_path == "big.bin")
    records.start_item_upload(catalog, big.id)
    upload_id = bucket.create_multipart(big.key)
    records.record_upload_started(catalog, big.id, upload_id, 5 * MiB)
    return txn, upload_id


def test_a_claim_taken_over_can_neither_upload_nor_complete_nor_abort_its_transaction(
    catalog_url, bucket, settings, tmp_path
):
    catalog = Catalog(catalog_url)
    stale, current = _taken_over(catalog)
    txn, upload_id = _group_transaction(catalog, tmp_path, bucket)
    ids = [i.id for i in txn.items]

    with pytest.raises(LeaseLost):
        upload_items(catalog, ids, settings=settings, fence=stale)
    with pytest.raises(LeaseLost):
        abort_claimed_transaction(catalog, txn.id, reason="A gives up", fence=stale, settings=settings)
    left = records.get_transaction(catalog, txn.id)
    assert left.status == "uploading" and left.count("stored") == 0 and left.count("aborted") == 0
    assert upload_id in {u.upload_id for u in bucket.list_multipart_uploads()}  # B's to resume, not aborted

    upload_items(catalog, ids, settings=settings, fence=current)  # B resumes the recorded upload
    with pytest.raises(LeaseLost):
        records.complete_transaction(catalog, txn.id, fence=stale)
    assert records.get_transaction(catalog, txn.id).status != "completed"
    for item in ids:  # A's late failure report changes nothing B stored
        records.record_item_failed(catalog, item, "A: NoSuchUpload", final=True)
    assert records.get_transaction(catalog, txn.id).count("stored") == 2

    done = records.complete_transaction(catalog, txn.id, fence=current)
    assert done.status == "completed" and done.count("stored") == 2 and done.error is None
    assert all(i.error is None for i in done.items)
    assert bucket.list_multipart_uploads() == []
    catalog.dispose()


def test_a_fenced_abort_marks_the_transaction_aborted_then_aborts_its_uploads(catalog_url, bucket, settings, tmp_path):
    catalog = Catalog(catalog_url)
    job = create_job(catalog, "ingest", {}, [{"group": 1}])
    held = claim_next(catalog, job.id, "A", lease=60)
    txn, upload_id = _group_transaction(catalog, tmp_path, bucket)
    aborted = abort_claimed_transaction(catalog, txn.id, reason="a bad file", fence=held, settings=settings)
    assert (aborted.status, aborted.error) == ("aborted", "a bad file")
    assert aborted.count("aborted") == 2 and bucket.list_multipart_uploads() == []
    catalog.dispose()


def test_check_claim_refuses_a_claim_taken_over_or_with_its_lease_nearly_out(catalog_url):
    catalog = Catalog(catalog_url)
    job = create_job(catalog, "ingest", {}, [{"group": 1}])
    held = claim_next(catalog, job.id, "A", lease=40)
    check_claim(catalog, held)
    check_claim(catalog, held, now=held.lease_until - timedelta(seconds=11))  # more than a quarter left
    with pytest.raises(LeaseLost, match="about to run out"):
        check_claim(catalog, held, now=held.lease_until - timedelta(seconds=9))
    stale, _ = _taken_over(catalog)
    with pytest.raises(LeaseLost, match="taken over"):
        check_claim(catalog, stale)
    catalog.dispose()


def test_a_worker_whose_renewals_fail_stops_before_another_takes_its_item_over(catalog_url, monkeypatch):
    """The review's overlap: A is cut off from the catalog during its first attempt (its
    renewals fail) while its work goes on; without a check, B takes the item over once the
    lease has run out and both work on it at once. A's steps each ask `claim.check()`
    first: A gives the item up (back to pending) before its lease can run out, and
    whoever claims it next does it alone."""
    catalog = Catalog(catalog_url)
    job = create_job(catalog, "ingest", {}, [{"group": 1}], max_attempts=3)
    real_renew = claims.renew

    def renew(catalog, item, **kw):  # noqa: ANN001, ANN202
        if item.worker == "A" and item.attempt == 1:
            raise CatalogUnavailable("A cannot reach the catalog")
        return real_renew(catalog, item, **kw)

    monkeypatch.setattr(claims, "renew", renew)
    steps: list[tuple[str, int, float, float]] = []
    claimed = threading.Event()

    def process(claim):  # noqa: ANN001, ANN202 - 40 short durable steps (upload batches, records)
        claimed.set()
        for _ in range(40):
            claim.check()
            start = time.monotonic()
            time.sleep(0.05)
            steps.append((claim.item.worker, claim.item.attempt, start, time.monotonic()))
        return {"by": claim.item.worker}

    reports = {}
    a = threading.Thread(target=lambda: reports.setdefault("A", run_claims(catalog, job.id, "A", process, lease=1.2)))
    a.start()
    assert claimed.wait(30)
    reports["B"] = run_claims(catalog, job.id, "B", process, lease=1.2, max_wait=0.1)
    a.join()

    steps.sort(key=lambda step: step[2])
    for before, after in zip(steps, steps[1:]):
        assert before[3] <= after[2], f"{before[:2]} and {after[:2]} worked on the item at once"
    first = [step for step in steps if step[1] == 1]
    assert {step[0] for step in first} == {"A"} and len(first) < 40  # A gave up its first attempt half-way
    assert 1 in reports["A"].lost and reports["A"].failed == reports["B"].failed == ()
    [item] = list_items(catalog, job.id)
    assert (item.status, item.attempts) == ("done", 2) and item.result == {"by": item.claimed_by}
    catalog.dispose()


def test_a_claim_loop_outlasts_catalog_blips_in_each_of_its_own_calls(catalog_url, monkeypatch):
    """The review's hang: one CatalogUnavailable from claim_next, wait_time_until_next_lease
    or finish ended the loop (and, in every child at once, the job). Each is tried again."""
    catalog = Catalog(catalog_url)
    job = create_job(catalog, "ingest", {}, [{"n": n} for n in range(3)])
    blips: dict[str, int] = {}

    def once(name: str):  # noqa: ANN202
        real = getattr(claims, name)

        def call(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
            blips[name] = blips.get(name, 0) + 1
            if blips[name] == 1:
                raise CatalogUnavailable(f"{name}: the server is restarting")
            return real(*args, **kwargs)

        monkeypatch.setattr(claims, name, call)

    for name in ("claim_next", "wait_time_until_next_lease", "finish"):
        once(name)
    report = run_claims(catalog, job.id, "w", lambda claim: {"n": claim.item.payload["n"]}, lease=30)
    assert report.done == (1, 2, 3) and report.lost == () and report.failed == ()
    assert all(count >= 2 for count in blips.values()), blips
    assert [i.status for i in list_items(catalog, job.id)] == ["done"] * 3
    catalog.dispose()
