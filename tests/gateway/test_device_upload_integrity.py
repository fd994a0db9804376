"""The device-upload transaction under crashes and races, over the real gateway, SeaweedFS
and catalog: begin is all-or-nothing, complete refuses while any item is not uploaded, the
client trusts no count, and complete racing abort ends as one of them, never a mix."""

from __future__ import annotations

import os
import threading
import time
from datetime import timedelta

import httpx
import pytest

import ferry.gateway.app as app_module
from sqlalchemy import update

from storage_core.catalog import transactions as records
from storage_core.catalog.devices import add_device_token
from storage_core.catalog.models import SourceKind, TransactionItem
from storage_core.catalog.outbox import get_upload_event
from storage_core.checksums import crc32c
from storage_core.config import load_settings
from storage_core.device.client import STATE_FILE, device_upload
from storage_core.errors import GatewayError, StorageUnavailable
from storage_core.keys import parse_uri
from storage_core.upload import device as device_module
from storage_core.upload.device import ORIGINATION, DeviceFile, check_manifest
from storage_core.upload.reconcile import abort_orphaned_uploads
from tests.gateway.test_gateway import multipart, single, upload_all
from tests.support.gateway import running_gateway

MiB = 1024 * 1024


def three_files() -> tuple[list[dict], dict[str, bytes]]:
    """Three one-part multipart files (a multipart upload each) and their bytes."""
    blobs = {f"cam-1/run-1/f{n}.bin": os.urandom(1000 + n) for n in range(3)}
    return [multipart(path, data) for path, data in blobs.items()], blobs


class _FailingCreates:
    """A store whose `create_multipart` fails from call `fail_at` on (a fault injected)."""

    def __init__(self, store, fail_at: int) -> None:
        self._store, self._fail_at, self.created = store, fail_at, 0

    def create_multipart(self, key: str) -> str:
        self.created += 1
        if self.created >= self._fail_at:
            raise StorageUnavailable(f"create {key}: injected outage")
        return self._store.create_multipart(key)

    def __getattr__(self, name):
        return getattr(self._store, name)


def test_begin_that_fails_midway_records_no_item_uploading_and_leaves_no_upload(gateway, monkeypatch):
    """A retryable failure (the store's 503) halfway through begin's second step: no item is
    recorded uploading and no upload is left; the device's retry of its begin finishes the
    transaction (it is not aborted under the device, whose complete would then be refused).
    A transaction the gateway named, which the device cannot ask for again, is aborted."""
    opened = device_module.open_store

    def failing_store(uri, settings):
        store, rest = opened(uri, settings)
        return _FailingCreates(store, fail_at=3), rest

    monkeypatch.setattr(device_module, "open_store", failing_store)
    files, blobs = three_files()
    with gateway.http() as http:
        begin = http.post("/v1/uploads", json={"files": files, "transaction_id": "a" * 32})
        unnamed = http.post("/v1/uploads", json={"files": [multipart(f"cam-1/run-2/g{n}.bin", b"x" * 10) for n in range(3)]})
    assert begin.status_code == 503 and unnamed.status_code == 503, (begin.text, unnamed.text)
    txn = records.get_transaction(gateway.catalog, "a" * 32)
    assert txn.status != "aborted"
    assert [(i.status, i.upload_id) for i in txn.items] == [("pending", None)] * 3  # none recorded uploading
    assert gateway.store.list_multipart_uploads() == []  # the two it created were aborted
    others = [t for t in records.list_transactions(gateway.catalog) if t.id != "a" * 32]
    assert [t.status for t in others] == ["aborted"]

    monkeypatch.setattr(device_module, "open_store", opened)  # the outage is over: the device retries
    with gateway.http() as http:
        again = http.post("/v1/uploads", json={"files": files, "transaction_id": "a" * 32})
        assert again.status_code == 201, again.text
        upload_all(again.json(), blobs)
        done = http.post(f"/v1/uploads/{'a' * 32}/complete")
        assert done.status_code == 200 and done.json()["files"] == 3, done.text


def test_a_begin_killed_between_its_steps_cannot_complete_and_a_repeated_begin_finishes_it(gateway):
    """The state a gateway killed mid-begin leaves (items recorded `pending`, a multipart
    upload created but not recorded): complete refuses, reconcile aborts the orphan, and
    the device's repeated begin records every item uploading."""
    files, blobs = three_files()
    txn_id = "b" * 32
    destination = parse_uri(f"s3://{gateway.store.bucket}/lake")
    entries = check_manifest("cam-1", [DeviceFile(f["path"], f["size"], f["crc32c"], f["part_size"],
                                                  tuple(f["part_crc32c"])) for f in files],
                             device_module.UploadLimits())
    records.begin_transaction(gateway.catalog, entries, destination=destination, origination=ORIGINATION,
                              source_kind=SourceKind.DEVICE, device_id="cam-1", transaction_id=txn_id)
    orphan = gateway.store.create_multipart("lake/cam-1/run-1/f0.bin")  # created, then the process died

    with gateway.http() as http:
        refused = http.post(f"/v1/uploads/{txn_id}/complete")
        assert refused.status_code == 409, refused.text
        assert "3 of 3 file(s) not uploaded yet, e.g. cam-1/run-1/f0.bin (pending)" in refused.json()["detail"]
        status = http.get(f"/v1/uploads/{txn_id}").json()
        assert [(f["status"], f["uploaded"], f["urls"]) for f in status["files"]] == [("pending", False, [])] * 3

        report = abort_orphaned_uploads(gateway.catalog, load_settings(), older_than=timedelta(0))
        assert [a for a in report.aborted if orphan in a] and report.failed == []
        assert gateway.store.list_multipart_uploads() == []

        again = http.post("/v1/uploads", json={"files": files, "transaction_id": txn_id})
        assert again.status_code == 201, again.text
        state = again.json()
        assert [(f["status"], len(f["urls"])) for f in state["files"]] == [("uploading", 1)] * 3
        upload_all(state, blobs)
        done = http.post(f"/v1/uploads/{txn_id}/complete")
        assert done.status_code == 200 and done.json()["files"] == 3, done.text
    for path, data in blobs.items():
        assert gateway.store.get_range(f"lake/{path}", 0, len(data)) == data
    assert len(gateway.emitter.events) == 1


def test_complete_names_how_many_files_are_missing(gateway):
    files, blobs = three_files()
    with gateway.http() as http:
        state = http.post("/v1/uploads", json={"files": files}).json()
        first = state["files"][0]
        upload_all({"files": [first]}, blobs)  # one of three
        refused = http.post(f"/v1/uploads/{state['transaction_id']}/complete")
    assert refused.status_code == 409
    assert "2 of 3 file(s) not uploaded yet, e.g. cam-1/run-1/f1.bin: 1 of 1 part(s)" in refused.json()["detail"]
    assert records.get_transaction(gateway.catalog, state["transaction_id"]).status == "uploading"


def test_client_keeps_its_state_file_unless_the_gateway_lists_every_file_stored(gateway, tmp_path, monkeypatch):
    """A transaction an older gateway completed with an item still pending (finding 1):
    the replayed complete says `completed`, the client finds the pending file in the
    gateway's own account, refuses with one line and keeps its state file."""
    folder = tmp_path / "landing"
    for n in range(3):
        (folder / "run-1").mkdir(parents=True, exist_ok=True)
        (folder / "run-1" / f"f{n}.bin").write_bytes(os.urandom(500 + n))
    report = device_upload(folder, gateway=gateway.url, token=gateway.token)
    assert report.files == 3 and not (folder / STATE_FILE).exists()
    # the same folder and a new file: a new transaction the broken gateway "completes" partially
    (folder / "run-1" / "f3.bin").write_bytes(os.urandom(777))
    original = device_module.complete_device_upload

    def completes_partially(catalog, device_id, transaction_id, **kwargs):
        done = original(catalog, device_id, transaction_id, **kwargs)
        with catalog.session() as session:  # what the old bug left: an item never uploaded
            session.execute(update(TransactionItem).where(TransactionItem.transaction_id == transaction_id,
                                                          TransactionItem.status == "stored").values(status="pending"))
        return done

    monkeypatch.setattr(app_module, "complete_device_upload", completes_partially)
    with pytest.raises(GatewayError) as refused:
        device_upload(folder, gateway=gateway.url, token=gateway.token)
    message = str(refused.value)
    assert "1 of 4 file(s) are not stored" in message and "cam-1/run-1/f3.bin (pending)" in message
    assert "\n" not in message and not refused.value.retryable
    assert (folder / STATE_FILE).exists()


# --- complete racing abort ------------------------------------------------------------------


def _race_trials(gw_url: str, catalog, store, token: str, trials: int, *, abort_url: str | None = None) -> dict[str, int]:
    """`trials` uploaded transactions, each completed (through `gw_url`) and aborted (through
    `abort_url`, another replica, or the same gateway) at once from two threads; every one
    must end wholly completed or wholly aborted."""
    outcomes = {"completed": 0, "aborted": 0}
    headers = {"Authorization": f"Bearer {token}"}
    through = {"complete": gw_url, "abort": abort_url or gw_url}
    with httpx.Client(base_url=gw_url, headers=headers, timeout=60) as http:
        for trial in range(trials):
            blobs = {f"cam-1/race-{trial}/one.bin": os.urandom(2000), f"cam-1/race-{trial}/two.bin": os.urandom(3000)}
            (p1, d1), (p2, d2) = blobs.items()
            begin = http.post("/v1/uploads", json={"files": [single(p1, d1), multipart(p2, d2)]})
            assert begin.status_code == 201, begin.text
            state = begin.json()
            upload_all(state, blobs)
            txn_id = state["transaction_id"]
            start = threading.Barrier(2)
            answers: dict[str, int] = {}

            # complete does store work before its commit, so an abort sent at the same instant
            # mostly wins: abort is held back 0-160 ms in some trials so both orders happen
            hold_abort = (trial % 5) * 0.04

            def call(action: str) -> None:
                with httpx.Client(base_url=through[action], headers=headers, timeout=60) as own:
                    start.wait()
                    if action == "abort":
                        time.sleep(hold_abort)
                    answers[action] = own.post(f"/v1/uploads/{txn_id}/{action}").status_code

            threads = [threading.Thread(target=call, args=(a,)) for a in ("complete", "abort")]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            status = records.get_transaction(catalog, txn_id).status
            assert status in outcomes, status
            outcomes[status] += 1
            keys = [f"lake/{p}" for p in blobs]
            present = {k for k in keys if any(o.key == k for o in store.list(prefix=k))}
            rows = records.stored_versions(catalog, store.uri, keys)
            event = get_upload_event(catalog, txn_id)
            if status == "completed":
                assert answers["complete"] == 200 and answers["abort"] == 409, answers
                assert present == set(keys) and set(rows) == set(keys) and event is not None, (trial, present, rows)
                for path, data in blobs.items():
                    assert store.get_range(f"lake/{path}", 0, len(data)) == data
            else:
                assert answers["abort"] == 200 and answers["complete"] == 409, answers
                assert present == set() and rows == {} and event is None, (trial, present, rows, event)
            assert store.list_multipart_uploads() == []
    return outcomes


@pytest.mark.slow  # 20 trials: about a minute
@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_complete_racing_abort_ends_wholly_one_or_the_other(gateway_factory, backend, request):
    url = request.getfixturevalue("sqlite_url" if backend == "sqlite" else "pg_url")
    catalog, _emitter, app = gateway_factory(catalog_url=url)
    token = add_device_token(catalog, "cam-1").token
    with running_gateway(app) as base:
        outcomes = _race_trials(base, catalog, _bucket_store(request), token, trials=20)
    print(f"{backend}: {outcomes}")


@pytest.mark.soak  # the 50 trials, on both catalogs (FERRY_SOAK=1 runs it)
@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_complete_racing_abort_fifty_trials(gateway_factory, backend, request):
    url = request.getfixturevalue("sqlite_url" if backend == "sqlite" else "pg_url")
    catalog, _emitter, app = gateway_factory(catalog_url=url)
    token = add_device_token(catalog, "cam-1").token
    with running_gateway(app) as base:
        outcomes = _race_trials(base, catalog, _bucket_store(request), token, trials=50)
    print(f"{backend}: {outcomes}")


def _bucket_store(request):
    return request.getfixturevalue("bucket")

