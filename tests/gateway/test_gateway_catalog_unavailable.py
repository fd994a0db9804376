"""A catalog the gateway cannot use (a locked SQLite file, an unreachable PostgreSQL) is a
503 with `Retry-After` and a one-line JSON `detail` saying the catalog is unavailable
(never its URL: the gateway's log has that), never a 500."""

from __future__ import annotations

import socket
import sqlite3
from pathlib import Path

import httpx

from ferry.gateway.app import RETRY_AFTER_SECONDS, create_app
from storage_core.catalog import Catalog
from storage_core.catalog.devices import TOKEN_PREFIX, add_device_token
from storage_core.config import load_settings
from storage_core.keys import parse_uri
from tests.support.gateway import running_gateway


def assert_unavailable(response: httpx.Response, catalog: str) -> None:
    """A 503 that says what is unavailable and not where it lives."""
    assert response.status_code == 503, response.text
    assert response.headers["Retry-After"] == str(RETRY_AFTER_SECONDS)
    assert response.json() == {"detail": "the catalog is unavailable; retry later"}
    for internal in (catalog, "127.0.0.1", "catalog.db", "postgresql"):
        assert internal not in response.text


def test_a_catalog_locked_mid_session_is_a_503_with_retry_after(gateway_factory, sqlite_url, tmp_path, monkeypatch):
    monkeypatch.setenv("FERRY_CATALOG_TIMEOUT", "0.5")  # the gateway's wait for the lock, kept short
    catalog, _emitter, app = gateway_factory(catalog_url=sqlite_url)
    token = add_device_token(catalog, "cam-1").token
    with running_gateway(app) as url, httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}"}) as http:
        assert http.get("/v1/me").status_code == 200
        catalog.dispose()  # pooled connections closed: the next request connects to the locked file
        holder = sqlite3.connect(tmp_path / "catalog.db", isolation_level=None)
        try:
            holder.execute("PRAGMA locking_mode=EXCLUSIVE")
            holder.execute("BEGIN EXCLUSIVE")
            assert_unavailable(http.get("/v1/me"), sqlite_url)
            assert_unavailable(http.post("/v1/uploads", json={"files": []}), sqlite_url)
        finally:
            holder.close()
        assert http.get("/v1/me").json() == {"device_id": "cam-1"}  # the lock gone, the gateway serves again
    catalog.dispose()


def test_an_unreachable_postgresql_catalog_is_a_503(bucket) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    url = f"postgresql://ferry:s3cret@127.0.0.1:{port}/ferry"
    catalog = Catalog(url, migrate=False, timeout=2)
    app = create_app(catalog, destination=parse_uri(f"s3://{bucket.bucket}/lake"), emitter=lambda event: None,
                     settings=load_settings())
    with running_gateway(app) as base:
        response = httpx.get(f"{base}/v1/me", headers={"Authorization": f"Bearer {TOKEN_PREFIX}not-a-known-token"}, timeout=30)
    assert_unavailable(response, url.replace(":s3cret@", ":***@"))
    assert "s3cret" not in response.text
