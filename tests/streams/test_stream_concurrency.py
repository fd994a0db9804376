"""Writers at once, on SQLite and PostgreSQL catalogs: devices on their own streams, and
racing writers of one stream serialized by its catalog row."""

from __future__ import annotations

import threading

import pytest

from storage_core.catalog.devices import add_device_token
from storage_core.device.stream import StreamClient, encode_append, stream_append
from storage_core.errors import AppendDiverged, AppendOutOfRange, StreamRefused
from tests.gateway.conftest import Gateway
from tests.streams.conftest import telemetry
from tests.streams.test_stream_append import committed
from tests.support.gateway import running_gateway


@pytest.fixture
def any_catalog_gateway(gateway_factory, bucket, catalog_url):  # noqa: ANN001, ANN201
    catalog, emitter, app = gateway_factory(catalog_url=catalog_url)
    token = add_device_token(catalog, "cam-1").token
    other = add_device_token(catalog, "cam-2").token
    with running_gateway(app) as url:
        yield Gateway(url, catalog, bucket, emitter, app, token, other)


def test_two_devices_append_at_once(any_catalog_gateway, parquet_source, tmp_path) -> None:  # noqa: ANN001
    gw = any_catalog_gateway
    source = parquet_source(6_000)
    reports, failures = {}, []

    def run(device: str, token: str) -> None:
        try:
            reports[device] = stream_append([source], stream="state", gateway=gw.url, token=token, batch_rows=1_000,
                                            state_file=tmp_path / f"{device}.json")
        except Exception as exc:  # noqa: BLE001 - reported below
            failures.append(exc)

    threads = [threading.Thread(target=run, args=a) for a in (("cam-1", gw.token), ("cam-2", gw.other_token))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert failures == []
    assert {d: r.committed_end for d, r in reports.items()} == {"cam-1": 6_000, "cam-2": 6_000}
    for device in ("cam-1", "cam-2"):
        assert committed(gw, f"{device}/state").equals(telemetry(6_000))


def test_racing_writers_of_one_stream_commit_each_offset_once(any_catalog_gateway) -> None:  # noqa: ANN001
    """Four writers send the same ten appends (and one of them other rows at offset 300)
    as fast as they can: every offset is committed once, the others are duplicates or
    refusals, and the table holds exactly the ten appends."""
    gw = any_catalog_gateway
    frames = [encode_append("race", 1, i * 100, telemetry(100, start=i * 100), "zstd") for i in range(10)]
    rogue = encode_append("race", 1, 300, telemetry(100, start=90_000), "zstd")
    outcomes: list[str] = []
    failures: list[Exception] = []
    lock = threading.Lock()

    def writer(index: int) -> None:
        client = StreamClient(gw.url, gw.token)
        try:
            i = 0
            while i < len(frames):
                frame = rogue if index == 3 and i == 3 else frames[i]
                try:
                    result = client.append("cam-1", "race", frame)["result"]
                    i += 1
                except AppendOutOfRange as exc:  # behind another writer's view: resend from its end
                    result = "out_of_range"
                    i = exc.committed_end // 100
                except AppendDiverged:
                    result = "diverged"
                    i += 1
                except StreamRefused as exc:
                    result = exc.reason
                    i += 1
                with lock:
                    outcomes.append(result)
        except Exception as exc:  # noqa: BLE001 - reported below
            failures.append(exc)
        finally:
            client.close()

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert failures == []
    assert outcomes.count("committed") == 10
    table = committed(gw, "cam-1/race")
    assert table.num_rows == 1_000
    seq = table.column("seq").to_pylist()
    assert len(set(seq)) == 1_000  # no row twice
    assert set(seq) == set(range(1_000)) or set(seq) == set(range(300)) | set(range(90_000, 90_100)) | set(range(400, 1_000))
