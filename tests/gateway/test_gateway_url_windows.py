"""Single-file URLs a window at a time, against the real gateway, SeaweedFS with access keys
and the catalog (SQLite and PostgreSQL): `ferry device-upload` asks for the next windows
and stores a manifest larger than one; an abort fences exactly the staging keys a URL was
issued for (and every such URL is refused afterwards); URLs are refused once the upload
closed, and beyond a window."""

from __future__ import annotations

import json
import os
from pathlib import Path
from types import SimpleNamespace

import httpx
import pytest

from storage_core.catalog.devices import add_device_token
from storage_core.catalog.queries import list_objects
from storage_core.catalog.transactions import get_transaction
from storage_core.device import client as client_module
from storage_core.device.client import STATE_FILE, device_upload
from storage_core.errors import GatewayError
from tests.gateway.test_device_client import ferry, write
from tests.gateway.test_gateway import MiB, refused, single, upload_all
from tests.gateway.test_gateway_urls import STAGING, final_keys, send, staged
from tests.support.gateway import running_gateway

WINDOW = 2


@pytest.fixture
def windowed(gateway_factory, catalog_url):
    """A gateway handing out WINDOW single-file URLs an answer, counting the `/urls` requests."""
    catalog, emitter, app = gateway_factory(catalog_url=catalog_url, url_window=WINDOW)
    asked: list[str] = []

    @app.middleware("http")
    async def count_url_requests(request, call_next):  # noqa: ANN001, ANN202
        if request.url.path.endswith("/urls"):
            asked.append(request.url.path)
        return await call_next(request)

    token = add_device_token(catalog, "cam-1").token
    with running_gateway(app) as url:
        yield SimpleNamespace(url=url, catalog=catalog, emitter=emitter, token=token, asked=asked, catalog_url=catalog_url)


def http(gw) -> httpx.Client:
    return httpx.Client(base_url=gw.url, headers={"Authorization": f"Bearer {gw.token}"}, timeout=30)


def issued(gw, transaction_id: str) -> dict[str, str]:
    """{staging key: source path} of the transaction's items, as the abort would fence them."""
    return {f"{STAGING}{transaction_id}/{i.id}": i.source_path for i in get_transaction(gw.catalog, transaction_id).items}


def test_device_upload_fetches_further_windows_and_stores_everything(windowed, bucket, tmp_path):
    folder = tmp_path / "landing"
    blobs = {f"cam-1/run-1/{n}.bin": write(folder / "run-1" / f"{n}.bin", 1000 + n) for n in range(4)}
    blobs["cam-1/run-1/big.bin"] = write(folder / "run-1" / "big.bin", 5 * MiB + 7)  # 2 parts of 5 MiB
    args = ["device-upload", str(folder), "--gateway", windowed.url, "--part-size", str(5 * MiB), "--json"]
    child = ferry(*args, cwd=tmp_path, env={"FERRY_DEVICE_TOKEN": windowed.token, "FERRY_HOME": str(tmp_path / "home")})
    stdout, stderr = child.communicate(timeout=180)
    assert child.returncode == 0, stderr
    report = json.loads(stdout)
    assert report["status"] == "completed" and report["files"] == 5 and report["pieces_sent"] == 6
    # begin gave the parts and 2 of the 4 single files; the client asked once for the other 2
    assert windowed.asked == [f"/v1/uploads/{report['transaction_id']}/urls"]
    for path, data in blobs.items():
        assert bucket.get_range(f"lake/{path}", 0, len(data)) == data
    assert {o.key for o in list_objects(windowed.catalog)} == {f"lake/{p}" for p in blobs}
    assert not (folder / STATE_FILE).exists() and bucket.list_multipart_uploads() == []


def test_a_failed_put_in_a_later_window_resumes_and_sends_nothing_twice(windowed, bucket, tmp_path, monkeypatch):
    folder = tmp_path / "landing"
    blobs = {f"cam-1/run-1/{n}.bin": write(folder / "run-1" / f"{n}.bin", 500 + n) for n in range(5)}
    tried: list[str] = []
    sent: list[str] = []
    put = client_module._put

    def fourth_fails_once(http_, url, path, *args):  # noqa: ANN001
        tried.append(path.name)
        if path.name == "3.bin" and tried.count("3.bin") == 1:
            raise GatewayError("connection lost (injected)", retryable=True)
        put(http_, url, path, *args)
        sent.append(path.name)

    urls = client_module.GatewayClient.urls
    sent_when_asked: list[int] = []

    def next_window(self, *args, **kwargs):  # noqa: ANN001, ANN202
        sent_when_asked.append(len(sent))
        return urls(self, *args, **kwargs)

    monkeypatch.setattr(client_module, "_put", fourth_fails_once)
    monkeypatch.setattr(client_module.GatewayClient, "urls", next_window)
    report = device_upload(folder, gateway=windowed.url, token=windowed.token, parallel=1)
    assert report.status == "completed" and report.files == 5 and tried.count("3.bin") == 2
    # a window is asked for only once the one before is under way (a PUT slot freed): the
    # client holds one window of URLs, not every file's
    assert len(sent_when_asked) == 2 and min(sent_when_asked) >= 1
    assert sorted(sent) == [f"{n}.bin" for n in range(5)] and report.pieces_sent == 5  # each PUT once
    for path, data in blobs.items():
        assert bucket.get_range(f"lake/{path}", 0, len(data)) == data
    assert not (folder / STATE_FILE).exists()


def test_an_abort_fences_only_the_staging_keys_a_url_was_issued_for(windowed, bucket):
    blobs = {f"cam-1/r/{n}.bin": os.urandom(700 + n) for n in range(5)}
    paths = list(blobs)
    with http(windowed) as gw:
        state = gw.post("/v1/uploads", json={"files": [single(p, b) for p, b in blobs.items()]}).json()
        txn = state["transaction_id"]
        assert [len(f["urls"]) for f in state["files"]] == [1, 1, 0, 0, 0] and state["url_window"] == WINDOW
        first, second = (f["urls"][0] for f in state["files"][:2])
        assert send(first, blobs[paths[0]]).status_code == 200
        more = gw.post(f"/v1/uploads/{txn}/urls", json={"paths": [paths[2]]}).json()
        assert [f["path"] for f in more["files"]] == [paths[2]]
        [third] = more["files"][0]["urls"]
        assert gw.post(f"/v1/uploads/{txn}/abort").json()["status"] == "aborted"
        # no URL after the abort, by path or as begin gives them
        refused(gw.post(f"/v1/uploads/{txn}/urls", json={"paths": [paths[3]]}), 409, "aborted; it hands out no URLs")
        refused(gw.post(f"/v1/uploads/{txn}/urls", json={}), 409, "aborted; it hands out no URLs")
    keys = issued(windowed, txn)
    fenced = staged(SimpleNamespace(store=bucket))
    assert sorted(keys[k] for k in fenced) == paths[:3] and set(fenced.values()) == {0}  # markers, only there
    # no URL issued before the abort writes afterwards
    for url, path in ((first, paths[0]), (second, paths[1]), (third, paths[2])):
        assert send(url, blobs[path]).status_code == 412
    assert staged(SimpleNamespace(store=bucket)) == fenced and final_keys(SimpleNamespace(store=bucket)) == []
    assert bucket.list_multipart_uploads() == [] and list_objects(windowed.catalog) == []


def test_url_requests_beyond_the_window_or_after_complete_are_refused(windowed, bucket):
    blobs = {f"cam-1/r/{n}.bin": os.urandom(600 + n) for n in range(3)}
    paths = list(blobs)
    with http(windowed) as gw:
        state = gw.post("/v1/uploads", json={"files": [single(p, b) for p, b in blobs.items()]}).json()
        txn = state["transaction_id"]
        refused(gw.post(f"/v1/uploads/{txn}/urls", json={"paths": paths}), 413, "at most 2 at a time")
        refused(gw.post(f"/v1/uploads/{txn}/urls", json={"paths": ["cam-1/r/other.bin"]}), 422,
                f"cam-1/r/other.bin is not a file of transaction {txn}")
        more = gw.post(f"/v1/uploads/{txn}/urls", json={"paths": [paths[2]]}).json()
        upload_all(state, blobs)
        upload_all(more, blobs)
        assert gw.post(f"/v1/uploads/{txn}/complete").json()["status"] == "completed"
        refused(gw.post(f"/v1/uploads/{txn}/urls", json={"paths": [paths[0]]}), 409, "completed; it hands out no URLs")
        refused(gw.post(f"/v1/uploads/{txn}/urls", json={}), 409, "completed; it hands out no URLs")
        for f in (*state["files"][:2], *more["files"]):
            assert send(f["urls"][0], blobs[f["path"]]).status_code == 412  # the verified staged copy holds its key
    for path, data in blobs.items():
        assert bucket.get_range(f"lake/{path}", 0, len(data)) == data


def test_a_repeated_begin_gives_the_first_window_of_what_is_still_missing(windowed, bucket):
    blobs = {f"cam-1/r/{n}.bin": os.urandom(300 + n) for n in range(4)}
    manifest = {"files": [single(p, b) for p, b in blobs.items()], "transaction_id": "ab" * 16}
    with http(windowed) as gw:
        state = gw.post("/v1/uploads", json=manifest).json()
        upload_all(state, blobs)  # the first window
        again = gw.post("/v1/uploads", json=manifest).json()  # the device lost its answers: begin again
    assert [(f["uploaded"], len(f["urls"])) for f in again["files"]] == [(True, 0), (True, 0), (False, 1), (False, 1)]
    assert Path(again["files"][2]["path"]).name == "2.bin"
