"""What a presigned URL can still do, against the real gateway, SeaweedFS with access keys
(signatures enforced) and the catalog (SQLite and PostgreSQL): nothing but write its own
declared bytes once into its own transaction's staging key (single PUT) or multipart
upload while its transaction is open; nothing at all once it completed or was aborted
(refused: 412 at a staging key that holds the staged copy or a 0-byte marker, 404 for a
part of an upload that is gone). And the one replacement rule; revocation, abort and
reconcile leave nothing unverified behind, and reconcile deletes the staging objects once
the URLs have expired."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from datetime import timedelta
from types import SimpleNamespace

import httpx
import pytest

from storage_core.catalog.devices import add_device_token
from storage_core.catalog.queries import list_objects
from storage_core.catalog.transactions import get_transaction, list_transactions
from storage_core.checksums import crc32c
from storage_core.config import load_settings
from storage_core.upload.reconcile import delete_stale_staging
from storage_core.upload.transactions import abort_transactions
from tests.gateway.test_gateway import MiB, multipart, refused, single, upload_all
from tests.support.gateway import running_gateway

STAGING = "lake/.ferry-staging/"


@pytest.fixture
def gateway_catalog_url(catalog_url) -> str:
    return catalog_url  # every test here on SQLite and on PostgreSQL


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


def final_keys(gw) -> list[str]:
    return [k for k in keys(gw) if not k.startswith(STAGING)]


def staged(gw) -> dict[str, int]:
    """{staging key: size}."""
    return {o.key: o.size for o in gw.store.list(STAGING)}


def sweep(gw) -> list[str]:
    """Reconcile's sweep of staging objects (URLs live FERRY_URL_EXPIRY, no margin)."""
    return delete_stale_staging(gw.catalog, load_settings(), older_than=timedelta(0), margin=timedelta(0)).aborted


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
        assert final_keys(gateway) == [] and list(staged(gateway).values()) == [1200]  # staged, nothing at a final key
        done = http.post(f"/v1/uploads/{state['transaction_id']}/complete").json()
        assert done["status"] == "completed"
    assert final_keys(gateway) == ["lake/cam-1/r/a.bin"] and read(gateway, "lake/cam-1/r/a.bin") == data
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


def test_urls_are_refused_after_complete(gateway):
    small, big = os.urandom(900), os.urandom(5 * MiB + 10)
    blobs = {"cam-1/r/s.bin": small, "cam-1/r/b.bin": big}
    with gateway.http() as http:
        state = http.post("/v1/uploads", json={"files": [single("cam-1/r/s.bin", small), multipart("cam-1/r/b.bin", big)]}).json()
        upload_all(state, blobs)
        assert http.post(f"/v1/uploads/{state['transaction_id']}/complete").json()["status"] == "completed"
    before = stored(gateway)
    assert final_keys(gateway) == ["lake/cam-1/r/b.bin", "lake/cam-1/r/s.bin"]
    assert list(staged(gateway).values()) == [900]  # the verified staged copy stays while its URL lives
    single_url, (part1, part2) = state["files"][0]["urls"][0], state["files"][1]["urls"]
    # the part URLs died with their upload; the single URL's staging key is taken
    assert send(part1, big[: 5 * MiB]).status_code == 404
    assert send(part2, big[5 * MiB :]).status_code == 404
    assert send(single_url, small).status_code == 412
    assert stored(gateway) == before and list(staged(gateway).values()) == [900]
    assert read(gateway, "lake/cam-1/r/s.bin") == small and read(gateway, "lake/cam-1/r/b.bin") == big
    assert {gateway.store.head(k).etag for k in before} == {etag for _, etag in before.values()}
    assert sweep(gateway) == [] and list(staged(gateway).values()) == [900]  # URLs live 900 s: kept
    assert gateway.store.list_multipart_uploads() == []


def test_urls_are_refused_after_abort_and_only_empty_markers_stay(gateway):
    small, unsent, big = os.urandom(900), os.urandom(800), os.urandom(5 * MiB + 10)
    files = [single("cam-1/r/s.bin", small), single("cam-1/r/u.bin", unsent), multipart("cam-1/r/b.bin", big)]
    with gateway.http() as http:
        state = http.post("/v1/uploads", json={"files": files}).json()
        sent_url, unsent_url = state["files"][0]["urls"][0], state["files"][1]["urls"][0]
        part1 = state["files"][2]["urls"][0]
        assert send(sent_url, small).status_code == 200 and send(part1, big[: 5 * MiB]).status_code == 200
        assert http.post(f"/v1/uploads/{state['transaction_id']}/abort").json()["status"] == "aborted"
    assert final_keys(gateway) == [] and gateway.store.list_multipart_uploads() == []
    assert sorted(staged(gateway).values()) == [0, 0]  # the staged bytes replaced; the unsent file fenced
    # no URL writes any more: a used one, one never used, a part URL
    assert send(sent_url, small).status_code == 412
    assert send(unsent_url, unsent).status_code == 412
    assert send(part1, big[: 5 * MiB]).status_code == 404
    assert sorted(staged(gateway).values()) == [0, 0] and final_keys(gateway) == []
    assert list_objects(gateway.catalog) == []
    assert sweep(gateway) == [] and len(staged(gateway)) == 2  # the markers stay while the URLs live


@pytest.mark.slow  # waits out the URLs' lifetime (SigV4 has one-second resolution)
def test_reconcile_deletes_staging_objects_once_the_urls_expired(gateway_factory, gateway_catalog_url, bucket, monkeypatch):
    monkeypatch.setenv("FERRY_URL_EXPIRY", "2")
    catalog, emitter, app = gateway_factory(catalog_url=gateway_catalog_url)
    token = add_device_token(catalog, "cam-1").token
    kept, dropped, forged = os.urandom(700), os.urandom(600), os.urandom(600)
    with running_gateway(app) as base, httpx.Client(base_url=base, headers={"Authorization": f"Bearer {token}"}) as http:
        done = http.post("/v1/uploads", json={"files": [single("cam-1/r/kept.bin", kept)]}).json()
        upload_all(done, {"cam-1/r/kept.bin": kept})
        assert http.post(f"/v1/uploads/{done['transaction_id']}/complete").json()["status"] == "completed"
        gone = http.post("/v1/uploads", json={"files": [single("cam-1/r/dropped.bin", dropped)]}).json()
        assert http.post(f"/v1/uploads/{gone['transaction_id']}/abort").json()["status"] == "aborted"
    gw = SimpleNamespace(store=bucket)
    assert sorted(staged(gw).values()) == [0, 700]
    # bytes under the aborted upload (as if its marker had failed): replaced by a marker while its URLs live
    marker = next(k for k, size in staged(gw).items() if size == 0)
    bucket.put(marker, forged, size=len(forged))
    report = delete_stale_staging(catalog, load_settings(), older_than=timedelta(0), margin=timedelta(0))
    assert report.aborted == [f"{bucket.uri}/{marker} (fenced)"] and sorted(staged(gw).values()) == [0, 700]
    deadline = time.monotonic() + 60
    while staged(gw):  # both transactions finished; their URLs expire 2 s later
        assert time.monotonic() < deadline, staged(gw)
        time.sleep(0.2)
        delete_stale_staging(catalog, load_settings(), older_than=timedelta(0), margin=timedelta(0))
    for url, data in ((done["files"][0]["urls"][0], kept), (gone["files"][0]["urls"][0], dropped)):
        assert send(url, data).status_code == 403  # expired: nothing to fence any more
    assert keys(gw) == ["lake/cam-1/r/kept.bin"] and read(gw, "lake/cam-1/r/kept.bin") == kept
    assert [o.key for o in list_objects(catalog)] == ["lake/cam-1/r/kept.bin"]


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
        assert send(old_url, first).status_code == 412  # its staging key holds the first transaction's copy
        assert http.post(f"/v1/uploads/{two['transaction_id']}/abort").json()["status"] == "aborted"
    assert stored(gateway) == recorded
    assert read(gateway, "lake/cam-1/r/a.bin") == first
    assert gateway.store.head("lake/cam-1/r/a.bin").etag == recorded["lake/cam-1/r/a.bin"][1]
    assert final_keys(gateway) == ["lake/cam-1/r/a.bin"] and sorted(staged(gateway).values()) == [0, 700]


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
    assert final_keys(gateway) == ["lake/cam-1/r/b.bin", "lake/cam-1/r/s.bin"]


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
    assert final_keys(gateway) == ["lake/cam-1/r/a.bin"]
    assert sorted(staged(gateway).values()) == [0, 600]  # the other bytes replaced by a marker; the first copy


def test_revoking_a_device_aborts_its_open_uploads(gateway, tmp_path, gateway_catalog_url):
    small, big = os.urandom(500), os.urandom(5 * MiB + 1)
    with gateway.http() as http:
        state = http.post("/v1/uploads", json={"files": [single("cam-1/r/s.bin", small), multipart("cam-1/r/b.bin", big)]}).json()
        single_url, (part1, _) = state["files"][0]["urls"][0], state["files"][1]["urls"]
        assert send(single_url, small).status_code == 200 and send(part1, big[: 5 * MiB]).status_code == 200
    env = {**os.environ, "FERRY_DATABASE_URL": gateway_catalog_url, "FERRY_STORE": f"s3://{gateway.store.bucket}/lake"}
    done = subprocess.run([sys.executable, "-m", "ferry.cli", "devices", "revoke", "cam-1", "--json"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    answer = json.loads(done.stdout)
    assert answer["aborted"] == [state["transaction_id"]]
    assert get_transaction(gateway.catalog, state["transaction_id"]).status == "aborted"
    assert final_keys(gateway) == [] and gateway.store.list_multipart_uploads() == []
    assert list(staged(gateway).values()) == [0]
    assert send(single_url, small).status_code == 412 and send(part1, big[: 5 * MiB]).status_code == 404
    with gateway.http() as http:
        refused(http.get("/v1/me"), 401, "invalid or revoked")


def test_reconcile_aborting_a_stale_device_upload_deletes_what_it_staged(gateway):
    data = os.urandom(9)  # the 9-byte object
    with gateway.http() as http:
        state = http.post("/v1/uploads", json={"files": [single("cam-1/r/a.bin", data)]}).json()
        assert send(state["files"][0]["urls"][0], data).status_code == 200
    assert list(staged(gateway).values()) == [9]
    [aborted] = abort_transactions(gateway.catalog, [state["transaction_id"]], reason="reconcile: idle")  # as reconcile does
    assert aborted.status == "aborted" and list_objects(gateway.catalog) == []
    assert final_keys(gateway) == [] and list(staged(gateway).values()) == [0]
    assert send(state["files"][0]["urls"][0], data).status_code == 412


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
