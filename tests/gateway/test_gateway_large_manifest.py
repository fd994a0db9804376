"""Issue 14, finding 7: a manifest of thousands of files costs the gateway a few statements
and a few LIST pages, not a round trip per file, and another device's requests write
nothing; its single-file URLs go out a window at a time, and an abort fences just those. Counted, never timed (bench/gateway_manifest.py measures the seconds): requests
to the store by operation, SQL statements by kind, over the real gateway, SeaweedFS and
both catalogs. And complete puts thousands of files in place a bounded pool at a time."""

from __future__ import annotations

import os
import threading
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from sqlalchemy import event

from ferry.gateway.app import create_app
from storage_core.catalog import Catalog
from storage_core.catalog.devices import add_device_token
from storage_core.catalog.queries import list_objects
from storage_core.catalog.transactions import get_transaction
from storage_core.checksums import crc32c
from storage_core.config import load_settings
from storage_core.keys import parse_uri
from storage_core.upload.device import UploadLimits
from tests.gateway.conftest import RecordingEmitter
from tests.gateway.test_gateway import wait_for_events
from tests.support.gateway import running_gateway

FILES, UPLOADED, WINDOW, NEXT = 2_000, 300, 1_000, 500


class Counted:
    """Requests to the store (botocore operations) and SQL statements, by kind."""

    def __init__(self, catalog: Catalog, store) -> None:  # noqa: ANN001
        self.store_ops: Counter[str] = Counter()
        self.sql: Counter[str] = Counter()
        for client in {id(store.client): store.client, id(store.unlooped_client): store.unlooped_client}.values():
            client.meta.events.register("before-call.s3.*", self._store_call)
        event.listen(catalog.engine, "before_cursor_execute", self._statement)

    def _store_call(self, model, **_kwargs) -> None:  # noqa: ANN001
        self.store_ops[model.name] += 1

    def _statement(self, _conn, _cursor, statement: str, *_args) -> None:  # noqa: ANN001
        self.sql[statement.split(None, 1)[0].upper()] += 1

    def take(self) -> tuple[Counter[str], Counter[str]]:
        taken = (self.store_ops.copy(), self.sql.copy())
        self.store_ops.clear()
        self.sql.clear()
        return taken


@pytest.mark.slow
def test_thousands_of_files_cost_a_few_statements_and_list_pages(bucket, catalog_url):
    from storage_core.stores.registry import open_store

    catalog = Catalog(catalog_url)
    settings = load_settings()
    destination = parse_uri(f"s3://{bucket.bucket}/lake")
    app = create_app(catalog, destination=destination, limits=UploadLimits(max_files=FILES), emitter=RecordingEmitter(),
                     settings=settings, url_window=WINDOW)
    big, small = add_device_token(catalog, "big").token, add_device_token(catalog, "small").token
    blobs = {f"big/run-{n // 500}/seg/{n:05d}.bin": f"file {n}\n".encode() for n in range(FILES)}
    manifest = [{"path": p, "size": len(b), "crc32c": crc32c(b)} for p, b in blobs.items()]
    counted = Counted(catalog, open_store(destination, settings)[0])
    with running_gateway(app) as url, httpx.Client(base_url=url, headers={"Authorization": f"Bearer {big}"}, timeout=300) as http, \
            httpx.Client(base_url=url, headers={"Authorization": f"Bearer {small}"}) as other:
        assert other.get("/v1/me").status_code == 200  # its last_used_at: written once now
        counted.take()

        begun = http.post("/v1/uploads", json={"files": manifest})
        assert begun.status_code == 201, begun.text
        store_ops, sql = counted.take()
        state = begun.json()
        assert len(state["files"]) == FILES and [len(f["urls"]) for f in state["files"]] == [1] * WINDOW + [0] * (FILES - WINDOW)
        assert store_ops["HeadObject"] == 0 and 1 <= store_ops["ListObjectsV2"] <= 3  # the staging folder: a page or two
        assert sql["INSERT"] <= 4 and sql["UPDATE"] <= 8, sql  # bulk: not one per item
        assert sum(sql.values()) < 60, sql

        with ThreadPoolExecutor(8) as pool:  # a device sends some of its files
            list(pool.map(lambda f: httpx.put(f["urls"][0]["url"], content=blobs[f["path"]],
                                              headers=f["urls"][0]["headers"]).raise_for_status(),
                          state["files"][:UPLOADED]))
        counted.take()

        status = http.get(f"/v1/uploads/{state['transaction_id']}")
        store_ops, sql = counted.take()
        assert sum(f["uploaded"] for f in status.json()["files"]) == UPLOADED
        assert store_ops["HeadObject"] == 0 and 1 <= store_ops["ListObjectsV2"] <= 3
        assert sql["UPDATE"] == 0 and sql["INSERT"] == 0 and sum(sql.values()) < 20, sql

        # the next window, by path: the items marked issued, nothing asked of the store
        paths = [f["path"] for f in state["files"][WINDOW:WINDOW + NEXT]]
        more = http.post(f"/v1/uploads/{state['transaction_id']}/urls", json={"paths": paths})
        store_ops, sql = counted.take()
        assert more.status_code == 200 and [len(f["urls"]) for f in more.json()["files"]] == [1] * NEXT
        assert sum(store_ops.values()) == 0 and sql["UPDATE"] <= 3 and sum(sql.values()) < 20, (store_ops, sql)

        for _ in range(20):  # another device meanwhile: reads only
            assert other.get("/v1/me").status_code == 200
        store_ops, sql = counted.take()
        assert sql["UPDATE"] == 0 and sql["INSERT"] == 0, sql

        aborted = http.post(f"/v1/uploads/{state['transaction_id']}/abort")
        assert aborted.status_code == 200 and aborted.json()["status"] == "aborted"
        store_ops, sql = counted.take()
        # the markers go out bulk-signed over lean connections (not botocore's: not counted here);
        # the final keys are looked up by LIST: nothing to delete, no HEAD
        assert store_ops["PutObject"] == 0 and store_ops["DeleteObject"] == 0 and store_ops["HeadObject"] == 0, store_ops
        assert store_ops["ListObjectsV2"] <= 8, store_ops
        assert sql["UPDATE"] <= 3 and sum(sql.values()) < 30, sql

    # the staging key of every file a URL was issued for fenced by a 0-byte marker (the
    # uploaded bytes replaced), nothing else
    staged = {o.key: o.size for o in bucket.list("lake/")}
    assert len(staged) == WINDOW + NEXT and set(staged.values()) == {0} and all("/.ferry-staging/" in k for k in staged)
    assert bucket.list_multipart_uploads() == []
    assert {i.status for i in get_transaction(catalog, state["transaction_id"]).items} == {"aborted"}


class CopiesInFlight:
    """How many CopyObject requests the store client has in flight at most."""

    def __init__(self, store) -> None:  # noqa: ANN001
        self.now = self.most = self.count = 0
        self._lock = threading.Lock()
        store.client.meta.events.register("before-call.s3.CopyObject", self._started)
        store.client.meta.events.register("after-call.s3.CopyObject", self._ended)

    def _started(self, **_kwargs) -> None:
        with self._lock:
            self.now += 1
            self.count += 1
            self.most = max(self.most, self.now)

    def _ended(self, **_kwargs) -> None:
        with self._lock:
            self.now -= 1


def test_complete_copies_many_files_into_place_a_bounded_pool_at_a_time(bucket, catalog_url):
    from storage_core.stores.registry import open_store

    catalog, settings = Catalog(catalog_url), load_settings()
    destination = parse_uri(f"s3://{bucket.bucket}/lake")
    emitter = RecordingEmitter()
    app = create_app(catalog, destination=destination, emitter=emitter, settings=settings)
    token = add_device_token(catalog, "cam").token
    blobs = {f"cam/run/{n:03d}.bin": os.urandom(100 + n) for n in range(64)}
    copies = CopiesInFlight(open_store(destination, settings)[0])
    with running_gateway(app) as url, httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=120) as http:
        state = http.post("/v1/uploads", json={"files": [{"path": p, "size": len(b), "crc32c": crc32c(b)}
                                                         for p, b in blobs.items()]}).json()
        with ThreadPoolExecutor(8) as pool:
            list(pool.map(lambda f: httpx.put(f["urls"][0]["url"], content=blobs[f["path"]],
                                              headers=f["urls"][0]["headers"]).raise_for_status(), state["files"]))
        done = http.post(f"/v1/uploads/{state['transaction_id']}/complete")
        assert done.status_code == 200 and done.json()["files"] == 64, done.text
    assert copies.count == 64 and 1 < copies.most <= settings.max_in_flight
    assert {o.key: o.crc32c for o in list_objects(catalog)} == {f"lake/{p}": crc32c(b) for p, b in blobs.items()}
    for path, data in blobs.items():
        assert bucket.get_range(f"lake/{path}", 0, len(data)) == data
    wait_for_events(emitter, 1, catalog)
    assert len(emitter.events) == 1
