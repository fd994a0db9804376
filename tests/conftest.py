"""Real parts for the whole suite: one SeaweedFS per session (with access keys, so wrong
credentials can be tested), a fresh bucket per test, a throwaway PostgreSQL database per
test session (a fresh database per test that asks for one), SQLite in tmp_path."""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from bench.postgres import PG_ADMIN_URL, database_url, throwaway_database
from bench.seaweed import SeaweedServer
from tests.support.prefect_server import prefect_client_env, prefect_server  # noqa: F401 - fixtures, one server a session

ACCESS_KEY = "ferry-test-key"
SECRET_KEY = "ferry-test-secret"
# a flow command would leave a warm ferry process (ferry.cli.warm) in each test's PREFECT_HOME;
# the tests of that process turn it on for themselves
os.environ["FERRY_WARM"] = "0"



def start_test_seaweed(data: Path) -> SeaweedServer:
    """The session's SeaweedFS, started: access keys ACCESS_KEY/SECRET_KEY (so wrong
    credentials can be tested), no buckets created on write. It ignores the caller's AWS_*
    variables (bench.seaweed.server_env), so a developer's own keys cannot lock the tests out."""
    identities = {
        "identities": [
            {
                "name": "ferry",
                "credentials": [{"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY}],
                "actions": ["Admin", "Read", "List", "Tagging", "Write"],
            }
        ]
    }
    data.mkdir(parents=True, exist_ok=True)
    config = data / "s3.json"
    config.write_text(json.dumps(identities))
    # like AWS, a PUT to a missing bucket must fail (weed mini creates buckets on write by default).
    # Every bucket is a collection with volumes of its own; the default volume count (free
    # disk / 128 MB) ran out after a few hundred test buckets ("no free volumes left"), so
    # buckets are deleted after each test and the count is set explicitly (volumes are sparse).
    server = SeaweedServer(
        data / "data", extra_args=[f"-s3.config={config}", "-s3.autoCreateBucket=false", "-volume.max=2000"]
    )
    server.start()
    return server


@pytest.fixture(scope="session")
def seaweed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SeaweedServer]:
    server = start_test_seaweed(tmp_path_factory.mktemp("seaweed"))
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def s3_env(seaweed: SeaweedServer, monkeypatch: pytest.MonkeyPatch) -> SeaweedServer:
    """AWS variables pointing at the session's SeaweedFS, as a user would set them."""
    monkeypatch.setenv("AWS_ENDPOINT_URL", seaweed.endpoint)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", ACCESS_KEY)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
    monkeypatch.setenv("AWS_REGION", "us-east-1")
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "FERRY_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3"):
        monkeypatch.delenv(name, raising=False)
    return seaweed


def _fresh_bucket(endpoint: str):  # noqa: ANN202
    from storage_core.stores.s3 import S3Store, make_client

    client = make_client(endpoint_url=endpoint)
    store = S3Store(f"t-{uuid.uuid4().hex[:12]}", client=client)
    store.create_bucket()
    yield store
    _delete_bucket(client, store.bucket)


@pytest.fixture
def bucket(s3_env: SeaweedServer):
    """A fresh, empty bucket on SeaweedFS, as an S3Store."""
    yield from _fresh_bucket(s3_env.endpoint)


@pytest.fixture
def landing_bucket(s3_env: SeaweedServer):
    """A second fresh bucket: where devices or other tools drop recordings for ingest."""
    yield from _fresh_bucket(s3_env.endpoint)


def _delete_bucket(client, bucket: str) -> None:  # noqa: ANN001
    """Empty and delete a test bucket, freeing its volumes; a stopped server is not a failure."""
    try:
        for upload in client.list_multipart_uploads(Bucket=bucket).get("Uploads", []):
            client.abort_multipart_upload(Bucket=bucket, Key=upload["Key"], UploadId=upload["UploadId"])
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket):
            keys = [{"Key": o["Key"]} for o in page.get("Contents", [])]
            if keys:
                client.delete_objects(Bucket=bucket, Delete={"Objects": keys})
        client.delete_bucket(Bucket=bucket)
    except Exception:  # noqa: BLE001 - teardown of a test that stopped the server, or left it broken
        pass


@pytest.fixture
def local_store(tmp_path: Path):
    from storage_core.stores.local import LocalStore

    return LocalStore(tmp_path / "store")


@pytest.fixture(params=["local", "s3"])
def any_store(request: pytest.FixtureRequest):
    """The same contract, run against every store."""
    return request.getfixturevalue("local_store" if request.param == "local" else "bucket")


@pytest.fixture(scope="session")
def pg_server() -> str:
    import psycopg

    try:
        with psycopg.connect(PG_ADMIN_URL, connect_timeout=5):
            pass
    except psycopg.OperationalError as exc:  # the project machines run one; say so plainly
        pytest.fail(f"PostgreSQL is not reachable at {PG_ADMIN_URL}: {exc}")
    return PG_ADMIN_URL


@pytest.fixture
def pg_url(pg_server: str) -> Iterator[str]:
    """A throwaway PostgreSQL database for one test, dropped afterwards."""
    with throwaway_database(pg_server, prefix="ferry_test") as name:
        yield database_url(pg_server, name, driver="postgresql+psycopg")


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'catalog.db'}"


@pytest.fixture(params=["sqlite", "postgresql"])
def catalog_url(request: pytest.FixtureRequest) -> str:
    return request.getfixturevalue("sqlite_url" if request.param == "sqlite" else "pg_url")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Soak tests (the issues' full-size trials) run only when FERRY_SOAK=1: CI stays in budget."""
    if os.environ.get("FERRY_SOAK") == "1":
        return
    skip = pytest.mark.skip(reason="a soak test: set FERRY_SOAK=1 to run it")
    for item in items:
        if "soak" in item.keywords:
            item.add_marker(skip)
