"""The device gateway over real parts: SeaweedFS (with access keys, so signatures and
expiry are enforced), SQLite/PostgreSQL, uvicorn on loopback. Every refusal must leave
storage empty (no objects but the 0-byte markers that fence an aborted upload's URLs, no
multipart uploads) and the catalog without stored objects or events."""

from __future__ import annotations

import os
import time

import httpx
import pytest

from ferry.gateway.events import PrefectEmitter, emit_pending, upload_completed_event
from storage_core.errors import EventsNotConfigured
from tests.support.gateway import running_gateway
from storage_core.catalog.devices import add_device_token, authenticate_device, revoke_device_tokens
from storage_core.catalog.queries import list_objects
from storage_core.checksums import combine_parts, crc32c
from storage_core.catalog.outbox import get_upload_event, pending_upload_events
from storage_core.catalog.transactions import get_transaction

MiB = 1024 * 1024


def single(path: str, data: bytes, **extra) -> dict:
    return {"path": path, "size": len(data), "crc32c": crc32c(data), **extra}


def multipart(path: str, data: bytes, part_size: int = 5 * MiB) -> dict:
    parts = [data[i : i + part_size] for i in range(0, len(data), part_size)]
    return {
        "path": path, "size": len(data), "crc32c": crc32c(data), "part_size": part_size,
        "part_crc32c": [crc32c(p) for p in parts],
    }


def put(url: dict, data: bytes) -> int:
    return httpx.put(url["url"], content=data, headers=url["headers"], timeout=60).status_code


def upload_all(state: dict, blobs: dict[str, bytes]) -> None:
    for f in state["files"]:
        for url in f["urls"]:
            start = 0 if url["part_number"] is None else (url["part_number"] - 1) * f["part_size"]
            assert put(url, blobs[f["path"]][start : start + url["size"]]) == 200


def assert_nothing_stored(gw) -> None:
    """No object but 0-byte markers at staging keys (an abort's fence), no multipart
    upload, no stored object or event in the catalog."""
    assert [(o.key, o.size) for o in gw.store.list() if not (o.key.startswith("lake/.ferry-staging/") and o.size == 0)] == []
    assert gw.store.list_multipart_uploads() == []
    assert list_objects(gw.catalog) == []
    assert pending_upload_events(gw.catalog) == [] and gw.emitter.events == []


def wait_for_events(emitter, count: int, catalog=None, timeout: float = 30) -> list:
    """The emitter's events once it has `count` (the gateway's flusher sends them after
    the complete has answered) and, given the `catalog`, once they are marked emitted."""
    deadline = time.monotonic() + timeout
    while len(emitter.events) < count or (catalog is not None and pending_upload_events(catalog)):
        assert time.monotonic() < deadline, f"{len(emitter.events)} of {count} event(s) emitted"
        time.sleep(0.02)
    return emitter.events


def refused(response: httpx.Response, status: int, match: str) -> None:
    assert response.status_code == status, response.text
    detail = response.json()["detail"]
    assert isinstance(detail, str) and match in detail, detail


# --- happy paths ------------------------------------------------------------------------


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_single_put_and_multipart_complete_and_emit_once(gateway_factory, bucket, backend, request):
    url = request.getfixturevalue("sqlite_url" if backend == "sqlite" else "pg_url")
    catalog, emitter, app = gateway_factory(catalog_url=url)
    token = add_device_token(catalog, "cam-1").token
    small, big = os.urandom(300_000), os.urandom(11 * MiB + 3)
    blobs = {"cam-1/run-1/a.mcap": small, "cam-1/run-1/video/b.mp4": big}
    with running_gateway(app) as base, httpx.Client(base_url=base, headers={"Authorization": f"Bearer {token}"}) as http:
        begin = http.post("/v1/uploads", json={"files": [single("cam-1/run-1/a.mcap", small), multipart("cam-1/run-1/video/b.mp4", big)]})
        assert begin.status_code == 201, begin.text
        state = begin.json()
        assert [len(f["urls"]) for f in state["files"]] == [1, 3]
        upload_all(state, blobs)
        txn_id = state["transaction_id"]
        status = http.get(f"/v1/uploads/{txn_id}").json()
        assert [f["uploaded"] for f in status["files"]] == [True, True] and status["files"][1]["parts_present"] == [1, 2, 3]
        done = http.post(f"/v1/uploads/{txn_id}/complete").json()
        assert done["status"] == "completed" and done["files"] == 2 and done["bytes"] == len(small) + len(big)
        again = http.post(f"/v1/uploads/{txn_id}/complete").json()  # replayed
        assert {**again, "event_emitted": None} == {**done, "event_emitted": None}
        wait_for_events(emitter, 1)
    assert bucket.get_range("lake/cam-1/run-1/video/b.mp4", 0, len(big)) == big
    assert bucket.list_multipart_uploads() == []
    assert sorted((o.uri, o.modality) for o in list_objects(catalog)) == [
        (f"s3://{bucket.bucket}/lake/cam-1/run-1/a.mcap", "mcap"), (f"s3://{bucket.bucket}/lake/cam-1/run-1/video/b.mp4", "video")
    ]
    assert {i.status for i in get_transaction(catalog, txn_id).items} == {"stored"}
    [event] = emitter.events  # exactly once, with the fixed contract
    assert event.event == "ferry.upload.completed" and event.id == done["event_id"]
    assert event.resource == {
        "prefect.resource.id": f"ferry.transaction.{txn_id}", "ferry.transaction.id": txn_id, "ferry.device.id": "cam-1"
    }
    assert event.related == [{"prefect.resource.id": "ferry.device.cam-1", "prefect.resource.role": "device"}]
    assert event.payload == {
        "transaction_id": txn_id, "device_id": "cam-1", "files": 2, "bytes": len(small) + len(big),
        "store": f"s3://{bucket.bucket}/lake",
    }
    assert get_upload_event(catalog, txn_id).emitted_at is not None


def test_emitter_failing_once_leaves_the_event_pending_then_emits_it_once(gateway_factory):
    catalog, emitter, app = gateway_factory(flush_interval=0.2)
    token = add_device_token(catalog, "cam-1").token
    emitter.failures_left = 1
    data = os.urandom(1000)
    with running_gateway(app) as base, httpx.Client(base_url=base, headers={"Authorization": f"Bearer {token}"}) as http:
        state = http.post("/v1/uploads", json={"files": [single("cam-1/r/a.bin", data)]}).json()
        upload_all(state, {"cam-1/r/a.bin": data})
        done = http.post(f"/v1/uploads/{state['transaction_id']}/complete").json()
        assert done["status"] == "completed"
        wait_for_events(emitter, 1, catalog)  # the first send failed; the flusher's next round sent it
        again = http.post(f"/v1/uploads/{state['transaction_id']}/complete").json()  # replayed
        assert again["event_emitted"] is True and again["event_id"] == done["event_id"]
        time.sleep(0.5)  # a few more flusher rounds: nothing more may go out
    assert emitter.failures_left == 0 and app.state.flush() == []  # nothing left to flush
    assert [e.id for e in emitter.events] == [done["event_id"]]


def test_without_a_prefect_api_the_real_emitter_refuses_and_the_event_stays_queued(gateway):
    from prefect.settings import PREFECT_API_URL, temporary_settings

    data = os.urandom(1000)
    with gateway.http() as http:
        state = http.post("/v1/uploads", json={"files": [single("cam-1/r/a.bin", data)]}).json()
        upload_all(state, {"cam-1/r/a.bin": data})
        gateway.emitter.failures_left = 1
        http.post(f"/v1/uploads/{state['transaction_id']}/complete")
    with temporary_settings(restore_defaults={PREFECT_API_URL}):
        emitter = PrefectEmitter()
        with pytest.raises(EventsNotConfigured, match="PREFECT_API_URL"):
            emitter(upload_completed_event(pending_upload_events(gateway.catalog)[0]))
        assert emit_pending(gateway.catalog, emitter) == []  # no throwaway ephemeral API
    assert [e.transaction_id for e in pending_upload_events(gateway.catalog)] == [state["transaction_id"]]


# --- refusals: nothing stored, catalog unchanged ----------------------------------------------


def test_wrong_or_missing_token_is_refused(gateway):
    data = os.urandom(100)
    body = {"files": [single("cam-1/r/a.bin", data)]}
    refused(httpx.post(f"{gateway.url}/v1/uploads", json=body), 401, "missing bearer token")
    with gateway.http("ferry_dt_not-a-real-token") as http:
        refused(http.post("/v1/uploads", json=body), 401, "invalid or revoked device token")
    with gateway.http("garbage") as http:
        refused(http.get("/v1/me"), 401, "invalid or revoked device token")
    assert_nothing_stored(gateway)


def test_revoked_token_is_refused_at_once(gateway):
    data = os.urandom(1000)
    with gateway.http() as http:
        state = http.post("/v1/uploads", json={"files": [single("cam-1/r/a.bin", data)]}).json()
        upload_all(state, {"cam-1/r/a.bin": data})
        revoke_device_tokens(gateway.catalog, "cam-1")
        refused(http.post(f"/v1/uploads/{state['transaction_id']}/complete"), 401, "invalid or revoked device token")
        refused(http.get("/v1/me"), 401, "invalid or revoked device token")  # the same words as an unknown token
    assert list_objects(gateway.catalog) == [] and gateway.emitter.events == []
    assert get_transaction(gateway.catalog, state["transaction_id"]).status == "uploading"


def test_paths_outside_the_device_prefix_are_refused(gateway):
    data = os.urandom(100)
    with gateway.http() as http:
        refused(http.post("/v1/uploads", json={"files": [single("cam-2/r/a.bin", data)]}), 403, "outside this device's prefix")
        refused(http.post("/v1/uploads", json={"files": [single("cam-1/../cam-2/r/a.bin", data)]}), 422, "'..' segments")
        refused(http.post("/v1/uploads", json={"files": [single("/cam-1/r/a.bin", data)]}), 422, "absolute")
        refused(http.post("/v1/uploads", json={"files": [single("cam-1/a.bin", data)]}), 422, "expected cam-1/RECORDING/FILE")
    assert_nothing_stored(gateway)
    from storage_core.catalog.transactions import list_transactions

    assert list_transactions(gateway.catalog) == []


def test_another_devices_transaction_is_unknown(gateway):
    data = os.urandom(1000)
    with gateway.http() as http:
        state = http.post("/v1/uploads", json={"files": [single("cam-1/r/a.bin", data)]}).json()
        upload_all(state, {"cam-1/r/a.bin": data})
    txn = state["transaction_id"]
    with gateway.http(gateway.other_token) as other:
        refused(other.get(f"/v1/uploads/{txn}"), 404, "no upload transaction")
        refused(other.post(f"/v1/uploads/{txn}/complete"), 404, "no upload transaction")
        refused(other.post(f"/v1/uploads/{txn}/abort"), 404, "no upload transaction")
    assert list_objects(gateway.catalog) == [] and gateway.emitter.events == []


@pytest.mark.parametrize(
    "body, status, match",
    [
        ({"files": []}, 422, "lists no files"),
        ({"files": [{"path": "cam-1/r/a", "size": "12", "crc32c": 1}]}, 422, "malformed request: files.0.size"),
        ({"files": [{"path": "cam-1/r/a", "size": 12}]}, 422, "malformed request: files.0.crc32c"),
        ({"files": [{"path": "cam-1/r/a", "size": 12, "crc32c": 1, "owner": "x"}]}, 422, "malformed request"),
        ({"files": [{"path": "cam-1/r/a", "size": -1, "crc32c": 1}]}, 422, "size must be a non-negative integer"),
        ({"files": [{"path": "cam-1/r/a", "size": 0, "crc32c": 0, "part_size": 5 * MiB, "part_crc32c": []}]}, 422,
         "an empty file has no parts"),
        ({"files": [{"path": "cam-1/r/a\u202egnp.exe", "size": 1, "crc32c": 1}]}, 422,
         "invisible or control character U+202E (RIGHT-TO-LEFT OVERRIDE) at index 9"),
        ({"files": [{"path": "cam-1/r/a", "size": 12, "crc32c": 2**32}]}, 422, "CRC32C is an integer"),
        ({"files": [{"path": "cam-1/r/a", "size": 12, "crc32c": 1, "part_size": 5 * MiB, "part_crc32c": [2]}]}, 422,
         "do not combine"),
        ({"files": [{"path": "cam-1/r/a", "size": 12, "crc32c": 1, "part_size": 1024, "part_crc32c": [1]}]}, 422,
         "part_size must be between"),
        ({"files": [{"path": f"cam-1/r/{n}", "size": 1, "crc32c": 1} for n in range(6)]}, 413, "the limit is 5"),
        ({"files": [{"path": "cam-1/r/a", "size": 31 * MiB, "crc32c": 1}]}, 413, "per-file limit"),
        ({"files": [{"path": f"cam-1/r/{n}", "size": 20 * MiB, "crc32c": 1} for n in range(3)]}, 413, "declares"),
        ({"files": [{"path": "cam-1/r/a", "size": 9 * MiB, "crc32c": 1}]}, 422, "too large for one PUT"),
    ],
)
def test_malformed_or_oversized_manifests_are_refused(gateway, body, status, match):
    with gateway.http() as http:
        refused(http.post("/v1/uploads", json=body), status, match)
        refused(http.post("/v1/uploads", content=b"{not json", headers={"content-type": "application/json"}), 422, "malformed")
    assert_nothing_stored(gateway)


@pytest.mark.slow  # waits out a presigned URL's expiry (SigV4 has one-second resolution)
def test_expired_url_is_refused_by_the_store(gateway_factory, bucket):
    catalog, emitter, app = gateway_factory(expires_in=1)
    token = add_device_token(catalog, "cam-1").token
    data = os.urandom(1000)
    with running_gateway(app) as base, httpx.Client(base_url=base, headers={"Authorization": f"Bearer {token}"}) as http:
        state = http.post("/v1/uploads", json={"files": [single("cam-1/r/a.bin", data)]}).json()
        time.sleep(2.5)  # SigV4 expiry has one-second resolution; nothing to poll for
        assert put(state["files"][0]["urls"][0], data) == 403
        refused(http.post(f"/v1/uploads/{state['transaction_id']}/complete"), 409, "nothing has been uploaded yet")
    assert list(bucket.list()) == [] and list_objects(catalog) == [] and emitter.events == []


def test_bytes_other_than_declared_are_refused_by_the_store(gateway):
    data = os.urandom(1000)
    with gateway.http() as http:
        state = http.post("/v1/uploads", json={"files": [single("cam-1/r/a.bin", data)]}).json()
        assert put(state["files"][0]["urls"][0], os.urandom(1000)) == 400
        url = dict(state["files"][0]["urls"][0], headers={})
        assert put(url, data) == 403  # the checksum header is part of the signature
        refused(http.post(f"/v1/uploads/{state['transaction_id']}/complete"), 409, "nothing has been uploaded yet")
    assert list(gateway.store.list()) == []
    assert get_transaction(gateway.catalog, state["transaction_id"]).status == "uploading"  # the device may send again


def test_size_mismatch_at_complete_discards_everything(gateway):
    good, bad = os.urandom(2000), os.urandom(1000)
    files = [single("cam-1/r/good.bin", good), {**single("cam-1/r/bad.bin", bad), "size": 1001}]
    with gateway.http() as http:
        state = http.post("/v1/uploads", json={"files": files}).json()
        good_url, bad_url = (f["urls"][0] for f in state["files"])
        assert put(good_url, good) == 200
        # the URL signs Content-Length: 1000 bytes cannot go through a URL for 1001
        assert put({**bad_url, "headers": {**bad_url["headers"], "Content-Length": "1000"}}, bad) == 403
        txn = state["transaction_id"]
        refused(http.post(f"/v1/uploads/{txn}/complete"), 409, "nothing has been uploaded yet")
        # put at its staging key around the gateway (with storage credentials)
        staged = next(o.key for o in gateway.store.list("lake/.ferry-staging/") if o.size == 2000)
        gateway.store.put(staged.rsplit("/", 1)[0] + f"/{int(staged.rsplit('/', 1)[1]) + 1}", bad, size=1000)
        refused(http.post(f"/v1/uploads/{txn}/complete"), 422, "size 1000 does not match the declared 1001")
        refused(http.post(f"/v1/uploads/{txn}/complete"), 409, "aborted")
    assert_nothing_stored(gateway)
    aborted = get_transaction(gateway.catalog, txn)
    assert aborted.status == "aborted"
    assert {i.relative_path: i.status for i in aborted.items} == {"good.bin": "aborted", "bad.bin": "failed"}
    assert "size 1000 does not match" in next(i.error for i in aborted.items if i.status == "failed")


def test_multipart_part_of_wrong_size_discards_everything(gateway):
    data = os.urandom(10 * MiB + 10)
    with gateway.http() as http:
        state = http.post("/v1/uploads", json={"files": [multipart("cam-1/r/big.bin", data)]}).json()
        [f] = state["files"]
        assert put(f["urls"][0], data[: 5 * MiB]) == 200
        assert put(f["urls"][1], data[5 * MiB : 10 * MiB]) == 200
        txn = state["transaction_id"]
        refused(http.post(f"/v1/uploads/{txn}/complete"), 409, "1 of 3 part(s) not uploaded yet")
        # part 3 sent around the gateway (with storage credentials) and of the wrong size
        key, upload_id = "lake/cam-1/r/big.bin", gateway.store.list_multipart_uploads()[0].upload_id
        gateway.store.upload_part(key, upload_id, 3, b"x" * 20, crc32c=crc32c(b"x" * 20))
        refused(http.post(f"/v1/uploads/{txn}/complete"), 422, "part 3 has 20 bytes")
    assert_nothing_stored(gateway)


def test_device_abort_aborts_its_multipart_uploads_and_deletes_its_objects(gateway):
    big, small = os.urandom(10 * MiB + 1), os.urandom(500)
    with gateway.http() as http:
        state = http.post("/v1/uploads", json={"files": [multipart("cam-1/r/big.bin", big), single("cam-1/r/s.bin", small)]}).json()
        assert put(state["files"][0]["urls"][0], big[: 5 * MiB]) == 200
        assert put(state["files"][1]["urls"][0], small) == 200
        assert len(gateway.store.list_multipart_uploads()) == 1
        txn = state["transaction_id"]
        assert http.post(f"/v1/uploads/{txn}/abort").json() == {"transaction_id": txn, "status": "aborted"}
        assert http.post(f"/v1/uploads/{txn}/abort").json()["status"] == "aborted"  # replayed
        refused(http.post(f"/v1/uploads/{txn}/complete"), 409, "aborted")
    assert_nothing_stored(gateway)


def test_a_busy_destination_is_refused_without_claiming_anything(gateway):
    data = os.urandom(100)
    body = {"files": [single("cam-1/r/a.bin", data)]}
    with gateway.http() as http:
        first = http.post("/v1/uploads", json=body)
        assert first.status_code == 201
        refused(http.post("/v1/uploads", json=body), 409, "being uploaded by transaction")


def test_tokens_are_stored_hashed_and_revocation_is_per_token(gateway):
    from sqlalchemy import select

    from storage_core.catalog.models import DeviceToken

    second = add_device_token(gateway.catalog, "cam-1", label="spare")
    with gateway.catalog.session() as session:
        hashes = list(session.scalars(select(DeviceToken.token_hash)))
    assert gateway.token not in hashes and second.token not in hashes and len(hashes) == 3
    revoke_device_tokens(gateway.catalog, "cam-1", token_id=second.info.id)
    assert authenticate_device(gateway.catalog, gateway.token) == "cam-1"
    with pytest.raises(Exception, match="revoked"):
        authenticate_device(gateway.catalog, second.token)
