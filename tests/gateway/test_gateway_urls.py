"""What a presigned URL can still do, against the real gateway, SeaweedFS with access keys
(signatures enforced) and the catalog: nothing but write its own declared bytes once into
its own transaction's staging key (single PUT) or multipart upload; never a stored object,
before or after its transaction completed or was aborted. And the one replacement rule;
revocation, abort and reconcile leave nothing unverified behind."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import timedelta

import httpx

from storage_core.catalog.queries import list_objects
from storage_core.catalog.transactions import get_transaction, list_transactions
from storage_core.checksums import crc32c
from storage_core.config import load_settings
from storage_core.upload.reconcile import delete_stale_staging
from storage_core.upload.transactions import abort_transactions
from tests.gateway.test_gateway import MiB, multipart, put, refused, single, upload_all

STAGING = "lake/.ferry-staging/"


def send(url: dict, data: bytes, **headers: str) -> httpx.Response:
    return httpx.put(url["url"], content=data, headers={**url["headers"], **headers}, timeout=60)


def stored(gw) -> dict[str, tuple[int, str]]:
    """{key: (CRC32C, ETag)} of what the catalog records."""
    return {o.key: (o.crc32c, o.etag) for o in list_objects(gw.catalog)}


def keys(gw, prefix: str = "") -> list[str]:
    return sorted(o.key for o in gw.store.list(prefix))


def read(gw, key: str) -> bytes:
    size = gw.store.head(key).size
    return gw.store.get_range(key, 0, size)


def sweep(gw) -> list[str]:
    """Reconcile's sweep of staged objects, with no age limit."""
    return delete_stale_staging(gw.catalog, load_settings(), older_than=timedelta(0)).aborted


def test_a_url_refuses_another_size_type_or_a_missing_condition(gateway):
    data = os.urandom(1200)
    with gateway.http() as http:
        state = http.post("/v1/uploads", json={"files": [single("cam-1/r/a.bin", data)]}).json()
        [url] = state["files"][0]["urls"]
        assert {k.lower() for k in url["headers"]} == {"x-amz-checksum-crc32c", "content-length", "content-type", "if-none-match"}
        assert url["headers"]["Content-Length"] == "1200" and url["size"] == 1200
        big = os.urandom(5 * MiB)
        assert send(url, big, **{"Content-Length": str(len(big))}).status_code == 403  # size is signed
        assert send(url, data, **{"Content-Type": "text/html"}).status_code == 403  # so is the type
        no_condition = {k: v for k, v in url["headers"].items() if k != "If-None-Match"}
        assert httpx.put(url["url"], content=data, headers=no_condition).status_code == 403
        assert keys(gateway) == []
        assert send(url, data).status_code == 200
        assert send(url, data).status_code == 412  # written once: If-None-Match: * is signed
        assert keys(gateway) == [k for k in keys(gateway, STAGING)]  # staged, nothing at a final key
        done = http.post(f"/v1/uploads/{state['transaction_id']}/complete").json()
        assert done["status"] == "completed"
    assert keys(gateway) == ["lake/cam-1/r/a.bin"] and read(gateway, "lake/cam-1/r/a.bin") == data
    assert gateway.store.head("lake/cam-1/r/a.bin").size == 1200


def test_part_urls_sign_their_size_and_the_checksums_declared_at_begin(gateway):
    data = os.urandom(5 * MiB + 100)
    body = multipart("cam-1/r/big.bin", data)
    with gateway.http() as http:
        state = http.post("/v1/uploads", json={"files": [body]}).json()
        first, last = state["files"][0]["urls"]
        assert last["headers"]["Content-Length"] == "100"
        assert send(last, os.urandom(5 * MiB), **{"Content-Length": str(5 * MiB)}).status_code == 403
        txn = state["transaction_id"]
        # other part checksums (even ones combining to the same file CRC32C) get no URL
        other = {"files": [{"path": "cam-1/r/big.bin", "part_crc32c": [1, 2]}]}
        refused(http.post(f"/v1/uploads/{txn}/urls", json=other), 422, "other than those declared at begin")
        upload_all(state, {"cam-1/r/big.bin": data})
        assert http.post(f"/v1/uploads/{txn}/complete").json()["status"] == "completed"
    assert read(gateway, "lake/cam-1/r/big.bin") == data


def test_urls_write_nothing_that_counts_after_complete(gateway):
    small, big = os.urandom(900), os.urandom(5 * MiB + 10)
    blobs = {"cam-1/r/s.bin": small, "cam-1/r/b.bin": big}
    with gateway.http() as http:
        state = http.post("/v1/uploads", json={"files": [single("cam-1/r/s.bin", small), multipart("cam-1/r/b.bin", big)]}).json()
        upload_all(state, blobs)
        assert http.post(f"/v1/uploads/{state['transaction_id']}/complete").json()["status"] == "completed"
    before = stored(gateway)
    assert keys(gateway) == ["lake/cam-1/r/b.bin", "lake/cam-1/r/s.bin"]  # the staging object is gone
    single_url, (part1, part2) = state["files"][0]["urls"][0], state["files"][1]["urls"]
    # the part URLs died with their upload; the single URL can only reach its staging key
    assert send(part1, big[: 5 * MiB]).status_code == 404
    assert send(part2, big[5 * MiB :]).status_code == 404
    assert send(single_url, small).status_code == 200
    assert stored(gateway) == before
    assert read(gateway, "lake/cam-1/r/s.bin") == small and read(gateway, "lake/cam-1/r/b.bin") == big
    assert {gateway.store.head(k).etag for k in before} == {etag for _, etag in before.values()}
    assert len(keys(gateway, STAGING)) == 1
    [swept] = sweep(gateway)  # reconcile deletes what a URL staged after its transaction closed
    assert swept.endswith("(staged)") and keys(gateway, STAGING) == []
    assert gateway.store.list_multipart_uploads() == []


def test_urls_write_nothing_that_counts_after_abort(gateway):
    small, big = os.urandom(900), os.urandom(5 * MiB + 10)
    with gateway.http() as http:
        state = http.post("/v1/uploads", json={"files": [single("cam-1/r/s.bin", small), multipart("cam-1/r/b.bin", big)]}).json()
        single_url, (part1, _) = state["files"][0]["urls"][0], state["files"][1]["urls"]
        assert send(single_url, small).status_code == 200 and send(part1, big[: 5 * MiB]).status_code == 200
        assert http.post(f"/v1/uploads/{state['transaction_id']}/abort").json()["status"] == "aborted"
    assert keys(gateway) == [] and gateway.store.list_multipart_uploads() == []  # staged object deleted, upload aborted
    assert send(part1, big[: 5 * MiB]).status_code == 404
    assert send(single_url, small).status_code == 200  # into the dead staging key, until the URL expires
    assert keys(gateway, "lake/cam-") == [] and list_objects(gateway.catalog) == []
    assert len(sweep(gateway)) == 1 and keys(gateway) == []


def test_an_old_url_cannot_make_a_later_abort_delete_the_stored_object(gateway):
    first, second = os.urandom(700), os.urandom(700)
    with gateway.http() as http:
        one = http.post("/v1/uploads", json={"files": [single("cam-1/r/a.bin", first)]}).json()
        old_url = one["files"][0]["urls"][0]
        upload_all(one, {"cam-1/r/a.bin": first})
        assert http.post(f"/v1/uploads/{one['transaction_id']}/complete").json()["status"] == "completed"
        recorded = stored(gateway)
        # a later transaction on the same path (a replacement), with the old URL used meanwhile
        two = http.post("/v1/uploads", json={"files": [single("cam-1/r/a.bin", second, replace=True)]}).json()
        assert send(old_url, first).status_code == 200  # lands in the first transaction's staging key
        assert http.post(f"/v1/uploads/{two['transaction_id']}/abort").json()["status"] == "aborted"
    assert stored(gateway) == recorded
    assert read(gateway, "lake/cam-1/r/a.bin") == first
    assert gateway.store.head("lake/cam-1/r/a.bin").etag == recorded["lake/cam-1/r/a.bin"][1]
    sweep(gateway)
    assert keys(gateway) == ["lake/cam-1/r/a.bin"]


def test_a_stored_path_with_other_bytes_is_refused_unless_replaced_for_single_and_multipart(gateway):
    small, big = os.urandom(800), os.urandom(5 * MiB + 20)
    paths = {"cam-1/r/s.bin": small, "cam-1/r/b.bin": big}
    with gateway.http() as http:
        state = http.post("/v1/uploads", json={"files": [single("cam-1/r/s.bin", small), multipart("cam-1/r/b.bin", big)]}).json()
        upload_all(state, paths)
        assert http.post(f"/v1/uploads/{state['transaction_id']}/complete").json()["status"] == "completed"
        old = stored(gateway)
        new_small, new_big = os.urandom(800), os.urandom(5 * MiB + 30)
        for body, path in ((single("cam-1/r/s.bin", new_small), "cam-1/r/s.bin"), (multipart("cam-1/r/b.bin", new_big), "cam-1/r/b.bin")):
            refused(http.post("/v1/uploads", json={"files": [body]}), 409, f"{path} is already stored with other bytes")
        assert len(list_transactions(gateway.catalog)) == 1  # refused before anything was recorded
        again = http.post("/v1/uploads", json={"files": [single("cam-1/r/s.bin", small)]}).json()  # identical: skipped
        assert again["files"][0]["status"] == "skipped" and again["files"][0]["urls"] == []
        new = {"cam-1/r/s.bin": new_small, "cam-1/r/b.bin": new_big}
        manifest = {"files": [single("cam-1/r/s.bin", new_small), multipart("cam-1/r/b.bin", new_big)], "replace": True}
        replacing = http.post("/v1/uploads", json=manifest).json()
        assert read(gateway, "lake/cam-1/r/s.bin") == small  # nothing replaced before complete
        upload_all(replacing, new)
        assert read(gateway, "lake/cam-1/r/s.bin") == small and read(gateway, "lake/cam-1/r/b.bin") == big
        assert http.post(f"/v1/uploads/{replacing['transaction_id']}/complete").json()["status"] == "completed"
    assert read(gateway, "lake/cam-1/r/s.bin") == new_small and read(gateway, "lake/cam-1/r/b.bin") == new_big
    now = stored(gateway)
    assert now["lake/cam-1/r/s.bin"][0] == crc32c(new_small) and now["lake/cam-1/r/b.bin"][0] == crc32c(new_big)
    assert {k: etag for k, (_, etag) in now.items()} == {k: gateway.store.head(k).etag for k in now}
    assert all(now[k] != old[k] for k in old)
    assert keys(gateway) == ["lake/cam-1/r/b.bin", "lake/cam-1/r/s.bin"]


def test_a_replacement_whose_bytes_fail_verification_leaves_the_old_version(gateway):
    old, new = os.urandom(600), os.urandom(601)
    with gateway.http() as http:
        state = http.post("/v1/uploads", json={"files": [single("cam-1/r/a.bin", old)]}).json()
        upload_all(state, {"cam-1/r/a.bin": old})
        assert http.post(f"/v1/uploads/{state['transaction_id']}/complete").json()["status"] == "completed"
        recorded = stored(gateway)
        two = http.post("/v1/uploads", json={"files": [single("cam-1/r/a.bin", new, replace=True)]}).json()
        # other bytes at its staging key, put around the gateway (with storage credentials)
        item = get_transaction(gateway.catalog, two["transaction_id"]).items[0].id
        gateway.store.put(f"{STAGING}{two['transaction_id']}/{item}", os.urandom(601), size=601)
        refused(http.post(f"/v1/uploads/{two['transaction_id']}/complete"), 422, "does not match the declared")
    assert stored(gateway) == recorded and read(gateway, "lake/cam-1/r/a.bin") == old
    assert keys(gateway) == ["lake/cam-1/r/a.bin"]


def test_revoking_a_device_aborts_its_open_uploads(gateway, tmp_path, sqlite_url):
    small, big = os.urandom(500), os.urandom(5 * MiB + 1)
    with gateway.http() as http:
        state = http.post("/v1/uploads", json={"files": [single("cam-1/r/s.bin", small), multipart("cam-1/r/b.bin", big)]}).json()
        single_url, (part1, _) = state["files"][0]["urls"][0], state["files"][1]["urls"]
        assert send(single_url, small).status_code == 200 and send(part1, big[: 5 * MiB]).status_code == 200
    env = {**os.environ, "FERRY_DATABASE_URL": sqlite_url, "FERRY_STORE": f"s3://{gateway.store.bucket}/lake"}
    done = subprocess.run([sys.executable, "-m", "ferry.cli", "devices", "revoke", "cam-1", "--json"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    answer = json.loads(done.stdout)
    assert answer["aborted"] == [state["transaction_id"]]
    assert get_transaction(gateway.catalog, state["transaction_id"]).status == "aborted"
    assert keys(gateway) == [] and gateway.store.list_multipart_uploads() == []
    assert send(part1, big[: 5 * MiB]).status_code == 404
    with gateway.http() as http:
        refused(http.get("/v1/me"), 401, "invalid or revoked")


def test_reconcile_aborting_a_stale_device_upload_deletes_what_it_staged(gateway):
    data = os.urandom(9)  # the 9-byte object
    with gateway.http() as http:
        state = http.post("/v1/uploads", json={"files": [single("cam-1/r/a.bin", data)]}).json()
        assert send(state["files"][0]["urls"][0], data).status_code == 200
    assert len(keys(gateway, STAGING)) == 1
    [aborted] = abort_transactions(gateway.catalog, [state["transaction_id"]], reason="reconcile: idle")  # as reconcile does
    assert aborted.status == "aborted" and keys(gateway) == [] and list_objects(gateway.catalog) == []


def test_limits_hold_at_begin_and_at_the_url(gateway):
    with gateway.http() as http:
        too_big = {"path": "cam-1/r/huge.bin", "size": 31 * MiB, "crc32c": 0, "part_size": 8 * MiB,
                   "part_crc32c": [0, 0, 0, 0]}
        refused(http.post("/v1/uploads", json={"files": [too_big]}), 413, "the per-file limit")
        data = os.urandom(100)
        state = http.post("/v1/uploads", json={"files": [single("cam-1/r/a.bin", data)]}).json()
        more = data + os.urandom(10 * MiB)
        assert send(state["files"][0]["urls"][0], more, **{"Content-Length": str(len(more))}).status_code == 403
    assert keys(gateway) == []
