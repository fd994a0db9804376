"""Two gateway replicas, each on a host of its own (a network namespace), on one PostgreSQL
catalog (reached through the bridge's relay) and one SeaweedFS bucket, their events sent to a
real Prefect server on the bridge: 200 device uploads from this host in parallel, half of them
completed on the other replica, each event sent exactly once and each file stored once
(issue #18; the same trial as tests/gateway/test_gateway_replicas.py, across hosts)."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.cluster import ACCESS_KEY, SECRET_KEY, shared_servers
from bench.netns import HostNetwork
from storage_core.catalog import Catalog
from storage_core.catalog.devices import add_device_token
from tests.gateway.test_gateway_replicas import DEVICES, FLUSH_INTERVAL, PREFIX, check_exactly_once, upload_through_replicas
from tests.support.event_tap import event_tap
from tests.support.gateway import gateway_processes

pytestmark = pytest.mark.slow

BUCKET = "ferry-replicas"


def test_two_replicas_on_hosts_of_their_own_take_200_uploads_with_exactly_one_event_each(
        three_hosts: HostNetwork, tmp_path: Path):
    hosts = three_hosts.hosts[:2]
    with shared_servers(three_hosts, tmp_path / "servers") as servers:
        bucket = servers.bucket(BUCKET, create=True)
        catalog = Catalog(servers.catalog_url)
        tokens = {f"cam-{n}": add_device_token(catalog, f"cam-{n}").token for n in range(DEVICES)}
        with event_tap(servers.api_url, host=three_hosts.bridge_ip) as tap, gateway_processes(
            tmp_path, 2, store_uri=f"s3://{BUCKET}/{PREFIX}", catalog_url=servers.host_catalog_url,
            flush_interval=FLUSH_INTERVAL,
            host=lambda n: hosts[n].address, prefix=lambda n: ("ip", "netns", "exec", hosts[n].namespace),
            PREFECT_API_URL=tap.url, PREFECT_HOME=str(tmp_path / "prefect"), PREFECT_SERVER_ANALYTICS_ENABLED="false",
            DO_NOT_TRACK="1", AWS_ENDPOINT_URL=servers.host_s3_endpoint, AWS_ACCESS_KEY_ID=ACCESS_KEY,
            AWS_SECRET_ACCESS_KEY=SECRET_KEY, AWS_REGION="us-east-1",
        ) as gateways:
            assert [g.url.split("//")[1].split(":")[0] for g in gateways] == [h.address for h in hosts]
            uploads = upload_through_replicas([g.url for g in gateways], tokens, 200)
            check_exactly_once(uploads, catalog=catalog, store=bucket, tap=tap, api_url=servers.api_url)
