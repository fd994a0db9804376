"""A real gateway (uvicorn on a free loopback port) over SeaweedFS and a real catalog,
with a recording emitter instead of Prefect."""

from __future__ import annotations

from dataclasses import dataclass, field

import httpx
import pytest

from ferry.gateway.app import create_app
from ferry.gateway.events import CompletedEvent
from tests.support.gateway import running_gateway
from storage_core.catalog import Catalog
from storage_core.catalog.devices import add_device_token
from storage_core.config import load_settings
from storage_core.keys import parse_uri
from storage_core.upload.device import UploadLimits

MiB = 1024 * 1024
LIMITS = UploadLimits(max_files=5, max_total_bytes=40 * MiB, max_file_bytes=30 * MiB, max_single_put_bytes=8 * MiB)


@dataclass
class RecordingEmitter:
    events: list[CompletedEvent] = field(default_factory=list)
    failures_left: int = 0

    def __call__(self, event: CompletedEvent) -> None:
        if self.failures_left:
            self.failures_left -= 1
            raise ConnectionError("events API unreachable")
        self.events.append(event)


@dataclass
class Gateway:
    url: str
    catalog: Catalog
    store: object  # the bucket's S3Store
    emitter: RecordingEmitter
    app: object
    token: str  # device "cam-1"
    other_token: str  # device "cam-2"

    def http(self, token: str | None = None) -> httpx.Client:
        token = self.token if token is None else token
        return httpx.Client(base_url=self.url, headers={"Authorization": f"Bearer {token}"}, timeout=30)


@pytest.fixture
def gateway_factory(bucket, sqlite_url):
    def make(*, catalog_url: str = sqlite_url, expires_in: int | None = None, **options):
        catalog = Catalog(catalog_url)
        emitter = options.pop("emitter", None) or RecordingEmitter()
        settings = load_settings()  # FERRY_URL_EXPIRY (default 900 s) is also its URLs' lifetime
        app = create_app(
            catalog, destination=parse_uri(f"s3://{bucket.bucket}/lake"), limits=LIMITS,
            expires_in=expires_in or settings.url_expiry, emitter=emitter, settings=settings, **options,
        )
        return catalog, emitter, app

    return make


@pytest.fixture
def gateway_catalog_url(sqlite_url) -> str:
    """The `gateway` fixture's catalog; a module overrides it to run on both (`catalog_url`)."""
    return sqlite_url


@pytest.fixture
def gateway(gateway_factory, bucket, gateway_catalog_url):
    catalog, emitter, app = gateway_factory(catalog_url=gateway_catalog_url)
    token = add_device_token(catalog, "cam-1", label="test").token
    other = add_device_token(catalog, "cam-2").token
    with running_gateway(app) as url:
        yield Gateway(url, catalog, bucket, emitter, app, token, other)
