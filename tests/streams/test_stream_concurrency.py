"""Writers at once, on SQLite and PostgreSQL catalogs: devices on their own streams, and
racing writers of one stream serialized by its catalog row."""

from __future__ import annotations

import threading
import time

import pytest

from storage_core.catalog.devices import add_device_token
from storage_core.catalog.streams import get_stream
from storage_core.config import load_settings
from storage_core.device.frame import decode_frame
from storage_core.device.stream import StreamClient, encode_append, stream_append
from storage_core.errors import AppendDiverged, AppendOutOfRange, StaleEpoch, StreamRefused, TableMoved
from storage_core.keys import parse_uri
from storage_core.streams.commit import append_frame
from storage_core.streams.table import DeltaStreamTable, StreamTables
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


def test_appends_waiting_for_a_commit_go_in_one_group(gateway, bucket, monkeypatch) -> None:  # noqa: ANN001
    """While one append commits, four more queue behind it, one of an epoch already
    fenced: the next commit takes the three others in ONE Delta commit, each answered on
    its own; the fenced one is refused alone; the table holds exactly the four appends."""
    tables, destination = StreamTables(), parse_uri(f"s3://{bucket.bucket}/lake")
    entered, release = threading.Event(), threading.Event()
    real_append = DeltaStreamTable.append

    def held(self, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN202 - the first commit waits for the others
        if not entered.is_set():
            entered.set()
            release.wait(60)
        return real_append(self, *args, **kwargs)

    monkeypatch.setattr(DeltaStreamTable, "append", held)
    answers: dict[object, object] = {}

    def send(key: object, epoch: int, offset: int, start: int) -> threading.Thread:
        frame = decode_frame(encode_append("g", epoch, offset, telemetry(100, start=start), "zstd"))

        def run() -> None:
            try:
                answers[key] = append_frame(gateway.catalog, tables, "cam-1", frame, destination=destination,
                                            settings=load_settings())
            except StreamRefused as exc:
                answers[key] = exc

        thread = threading.Thread(target=run)
        thread.start()
        return thread

    threads = [send(0, 2, 0, 0)]
    assert entered.wait(60)
    threads += [send(100, 2, 100, 100), send("stale", 1, 200, 50_000), send(200, 2, 200, 200), send(300, 2, 300, 300)]
    deadline = time.monotonic() + 60
    while len(tables.queue("cam-1/g")) < 4 and time.monotonic() < deadline:
        time.sleep(0.01)
    release.set()
    for thread in threads:
        thread.join(60)
    first = answers[0].table_version
    assert [(answers[o].result, answers[o].committed_end, answers[o].table_version) for o in (100, 200, 300)] == [
        ("committed", 200, first + 1), ("committed", 300, first + 1), ("committed", 400, first + 1)]
    assert isinstance(answers["stale"], StaleEpoch)
    info = get_stream(gateway.catalog, "cam-1/g")
    assert (info.committed_end, info.table_version, info.epoch) == (400, first + 1, 2)
    assert committed(gateway, "cam-1/g").equals(telemetry(400))
    again = append_frame(gateway.catalog, tables, "cam-1", decode_frame(encode_append("g", 2, 200, telemetry(100, start=200),
                         "zstd")), destination=destination, settings=load_settings())
    assert (again.result, again.committed_end, again.table_version) == ("duplicate", 400, first + 1)


class Replicas:
    """Two gateway replicas of one catalog and store (their own StreamTables), appending
    100-row batches to stream `name` of cam-1; faults are injected with `monkeypatch`."""

    def __init__(self, gateway, bucket, monkeypatch, name: str) -> None:  # noqa: ANN001
        self.gateway, self.monkeypatch, self.name = gateway, monkeypatch, name
        self.destination, self.settings = parse_uri(f"s3://{bucket.bucket}/lake"), load_settings()
        self.a, self.b = StreamTables(), StreamTables()
        self.moved: list[TableMoved] = []

    def append(self, tables: StreamTables, offset: int):  # noqa: ANN201
        frame = decode_frame(encode_append(self.name, 1, offset, telemetry(100, start=offset), "zstd"))
        return append_frame(self.gateway.catalog, tables, "cam-1", frame, destination=self.destination,
                            settings=self.settings)

    def table_commit_without_the_catalog(self, tables: StreamTables, offset: int) -> None:
        """The append's table commit lands; the catalog's commit after it fails."""
        from storage_core.catalog.streams import LockedStream
        from storage_core.errors import CatalogUnavailable

        def lost(self, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN202
            raise CatalogUnavailable("catalog connection dropped after the table commit")

        with self.monkeypatch.context() as patch:
            patch.setattr(LockedStream, "record", lost)
            with pytest.raises(CatalogUnavailable):
                self.append(tables, offset)

    def watch_table_moves(self) -> None:
        """Record each TableMoved a table commit raises (in `moved`)."""
        real_table_append = DeltaStreamTable.append

        def watched(table, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN202
            try:
                return real_table_append(table, *args, **kwargs)
            except TableMoved as exc:
                self.moved.append(exc)
                raise

        self.monkeypatch.setattr(DeltaStreamTable, "append", watched)


def test_a_replica_holding_an_old_table_never_commits_over_a_newer_one(gateway, bucket, monkeypatch) -> None:  # noqa: ANN001
    """Replica B's table commit lands but its catalog commit fails, so the catalog still
    names the version replica A holds: A skips the re-read, its commit finds the table
    moved (no retry on top of unseen rows), reads it, catches the catalog up and answers
    the resent append as a duplicate."""
    replicas = Replicas(gateway, bucket, monkeypatch, "r")
    assert replicas.append(replicas.a, 0).result == "committed"
    replicas.table_commit_without_the_catalog(replicas.b, 100)
    assert get_stream(gateway.catalog, "cam-1/r").committed_end == 100  # the table is one commit ahead
    replicas.watch_table_moves()
    again = replicas.append(replicas.a, 100)
    assert len(replicas.moved) == 1
    assert (again.result, again.committed_end) == ("duplicate", 200)
    assert get_stream(gateway.catalog, "cam-1/r").committed_end == 200
    assert replicas.append(replicas.a, 200).committed_end == 300
    assert committed(gateway, "cam-1/r").equals(telemetry(300))


def test_a_table_created_without_the_catalog_knowing_is_caught_up_not_created_again(gateway, bucket, monkeypatch) -> None:  # noqa: ANN001
    """Replica B creates the stream's table but its catalog commit fails: the catalog knows
    no table. Replica A (no table read) creates it without looking first; the creation
    finds a table there (TableMoved), A reads it, catches the catalog up, and the resent
    first append is a duplicate: the first rows are in once."""
    replicas = Replicas(gateway, bucket, monkeypatch, "n")
    replicas.table_commit_without_the_catalog(replicas.b, 0)
    assert get_stream(gateway.catalog, "cam-1/n") is None  # a table the catalog does not know of
    replicas.watch_table_moves()
    again = replicas.append(replicas.a, 0)
    assert len(replicas.moved) == 1 and "created by another writer" in str(replicas.moved[0])
    assert (again.result, again.committed_end, again.table_version) == ("duplicate", 100, 0)
    assert replicas.append(replicas.a, 100).committed_end == 200
    assert committed(gateway, "cam-1/n").equals(telemetry(200))
