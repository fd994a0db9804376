"""Telemetry appends through a real gateway into a Delta table on SeaweedFS, read back by
outside readers (pyarrow, DuckDB), with the offset rules of BigQuery's AppendRows."""

from __future__ import annotations

import pyarrow as pa
import pytest

from storage_core.catalog.streams import get_stream
from storage_core.device.frame import decode_frame, encode_frame
from storage_core.device.stream import StreamClient, encode_append, stream_append
from storage_core.errors import AppendDiverged, AppendOutOfRange, CorruptFrame, GatewayError, SchemaRefused, StaleEpoch
from storage_core.streams.read import open_dataset
from storage_core.streams.table import location_of
from tests.streams.conftest import telemetry


def committed(gateway, ident: str) -> pa.Table:  # noqa: ANN001
    info = get_stream(gateway.catalog, ident)
    return open_dataset(location_of(info.table_uri)).to_table().sort_by("seq")


def test_a_file_is_appended_once_and_read_back_exactly(gateway, parquet_source, tmp_path) -> None:  # noqa: ANN001
    source = parquet_source(20_000)
    state = tmp_path / "state.json"
    report = stream_append([source], stream="state", gateway=gateway.url, token=gateway.token, batch_rows=5_000,
                           state_file=state)
    assert (report.stream, report.committed_end, report.batches_sent, report.rows_sent) == ("cam-1/state", 20_000, 4, 20_000)
    again = stream_append([source], stream="state", gateway=gateway.url, token=gateway.token, batch_rows=5_000,
                          state_file=state)
    assert (again.committed_end, again.batches_sent, again.duplicates) == (20_000, 0, 0)

    assert committed(gateway, "cam-1/state").equals(telemetry(20_000))
    duckdb = pytest.importorskip("duckdb")
    dataset = open_dataset(location_of(get_stream(gateway.catalog, "cam-1/state").table_uri))  # noqa: F841 - DuckDB scans it
    count, distinct, total = duckdb.sql("select count(*), count(distinct seq), sum(seq) from dataset").fetchall()[0]
    assert (count, distinct, total) == (20_000, 20_000, sum(range(20_000)))
    polars = pytest.importorskip("polars")  # through its own Delta reader
    location = location_of(get_stream(gateway.catalog, "cam-1/state").table_uri)
    frame = polars.read_delta(location.uri, storage_options=location.storage_options).sort("seq")
    assert frame.to_arrow().cast(telemetry(1).schema).equals(telemetry(20_000))  # polars says large_string
    info = get_stream(gateway.catalog, "cam-1/state")
    assert (info.committed_end, info.table_format, info.epoch) == (20_000, "delta", 1)
    assert info.table_uri == f"s3://{gateway.store.bucket}/lake/streams/cam-1/state"


def test_the_offset_rules(gateway) -> None:  # noqa: ANN001
    client = StreamClient(gateway.url, gateway.token)
    rows = [telemetry(100, start=i * 100) for i in range(3)]
    frames = [encode_append("diag", 1, i * 100, rows[i], "zstd") for i in range(3)]
    try:
        assert client.append("cam-1", "diag", frames[0])["result"] == "committed"
        # reordered: the third before the second is refused with the committed end
        with pytest.raises(AppendOutOfRange) as beyond:
            client.append("cam-1", "diag", frames[2])
        assert beyond.value.committed_end == 100
        assert client.append("cam-1", "diag", frames[1])["committed_end"] == 200
        # duplicated (a lost acknowledgement): acknowledged, nothing written
        again = client.append("cam-1", "diag", frames[0])
        assert (again["result"], again["committed_end"]) == ("duplicate", 200)
        # other rows at committed offsets: diverged
        with pytest.raises(AppendDiverged):
            client.append("cam-1", "diag", encode_append("diag", 1, 100, telemetry(100, start=5_000), "zstd"))
        # a new epoch takes over; the old one is fenced
        assert client.append("cam-1", "diag", encode_append("diag", 2, 200, rows[2], "lz4"))["epoch"] == 2
        with pytest.raises(StaleEpoch) as fenced:
            client.append("cam-1", "diag", encode_append("diag", 1, 300, telemetry(1, start=300), "none"))
        assert (fenced.value.epoch, fenced.value.committed_end) == (2, 300)
        assert client.show("cam-1", "diag")["committed_end"] == 300
    finally:
        client.close()
    assert committed(gateway, "cam-1/diag").equals(pa.concat_tables(rows))


def test_corrupt_frames_and_schema_changes(gateway) -> None:  # noqa: ANN001
    client = StreamClient(gateway.url, gateway.token)
    first = encode_append("gps", 1, 0, telemetry(50), "zstd")
    try:
        flipped = bytearray(first)
        flipped[len(first) // 2] ^= 0x10
        with pytest.raises(GatewayError, match="422.*corrupt frame"):
            client.append("cam-1", "gps", bytes(flipped))
        with pytest.raises(GatewayError, match="422.*truncated frame"):
            client.append("cam-1", "gps", first[:-3])
        assert client.show("cam-1", "gps")["committed_end"] == 0
        client.append("cam-1", "gps", first)
        # an added nullable column is accepted
        wider = telemetry(50, start=50).append_column("speed", pa.array([1.5] * 50))
        assert client.append("cam-1", "gps", encode_append("gps", 1, 50, wider, "zstd"))["committed_end"] == 100
        # a changed type is refused, in one line
        narrower = telemetry(50, start=100).set_column(1, "seq", pa.array([str(i) for i in range(50)]))
        with pytest.raises(SchemaRefused, match="column 'seq' is string, was int64"):
            client.append("cam-1", "gps", encode_append("gps", 1, 100, narrower.append_column("speed", pa.nulls(50, pa.float64())), "zstd"))
        # a frame's header must name the URL's stream
        other = decode_frame(first)
        with pytest.raises(GatewayError, match="422"):
            client.append("cam-1", "gps", encode_frame(other.kind, {**other.header, "stream": "state"}, other.body))
    finally:
        client.close()
    rows = committed(gateway, "cam-1/gps")
    assert rows.num_rows == 100
    assert rows.column("speed").null_count == 50


def test_one_request_of_appends_is_judged_append_by_append(gateway) -> None:  # noqa: ANN001
    """`appends`: each append of the request judged by the offset rules and answered on its
    own, in order; the ones taken commit in one group (one table version)."""
    client = StreamClient(gateway.url, gateway.token)
    rows = [telemetry(100, start=i * 100) for i in range(6)]
    frames = [encode_append("diag", 1, i * 100, rows[i], "zstd") for i in range(6)]
    try:
        first = client.appends("cam-1", "diag", frames[:3])
        assert [(a["result"], a["committed_end"]) for a in first] == [("committed", 100), ("committed", 200), ("committed", 300)]
        assert len({a["table_version"] for a in first}) == 1  # one group commit
        # a resent request (a lost acknowledgement) with one more behind it and a gap
        duplicate, taken, beyond = client.appends("cam-1", "diag", [frames[2], frames[3], frames[5]])
        assert (duplicate["result"], taken["result"], taken["committed_end"]) == ("duplicate", "committed", 400)
        assert isinstance(beyond, AppendOutOfRange) and beyond.committed_end == 400
        # a new epoch takes over; the old writer's append behind it (in offset order) is fenced
        taken_over, fenced = client.appends("cam-1", "diag", [encode_append("diag", 2, 400, rows[4], "zstd"),
                                                               encode_append("diag", 1, 500, rows[5], "zstd")])
        assert (taken_over["result"], taken_over["epoch"]) == ("committed", 2)
        assert isinstance(fenced, StaleEpoch) and (fenced.epoch, fenced.committed_end) == (2, 500)
        assert client.show("cam-1", "diag")["committed_end"] == 500
    finally:
        client.close()
    assert committed(gateway, "cam-1/diag").equals(pa.concat_tables(rows[:5]))


def test_a_request_of_appends_with_one_bad_frame_writes_nothing(gateway) -> None:  # noqa: ANN001
    client = StreamClient(gateway.url, gateway.token)
    frames = [encode_append("gps", 1, i * 10, telemetry(10, start=i * 10), "zstd") for i in range(3)]
    flipped = bytearray(frames[2])
    flipped[len(flipped) // 2] ^= 0x01
    other = decode_frame(frames[1])
    try:
        with pytest.raises(GatewayError, match="422.*corrupt frame at offset"):
            client.appends("cam-1", "gps", [frames[0], frames[1], bytes(flipped)])
        with pytest.raises(GatewayError, match="422.*truncated frame"):
            client.appends("cam-1", "gps", [frames[0], frames[1][:-1]])
        with pytest.raises(GatewayError, match="422.*names stream 'state'"):
            client.appends("cam-1", "gps", [frames[0], encode_frame(other.kind, {**other.header, "stream": "state"}, other.body)])
        with pytest.raises(GatewayError, match="413.*more than 64 appends"):
            client.appends("cam-1", "gps", [frames[0]] * 65)
        assert client.show("cam-1", "gps")["committed_end"] == 0
        # a body that is not Arrow IPC is that append's own refusal; the one before it commits
        bad_body = encode_frame(other.kind, {**other.header, "offset": 10}, b"not arrow")
        ok, refused = client.appends("cam-1", "gps", [frames[0], bad_body])
        assert ok["committed_end"] == 10
        assert isinstance(refused, GatewayError) and refused.status == 422 and "not an Arrow IPC stream" in str(refused)
    finally:
        client.close()
    assert committed(gateway, "cam-1/gps").equals(telemetry(10))


def test_bodies_that_decode_to_more_than_the_bound_are_refused_before_decoding(gateway, monkeypatch) -> None:  # noqa: ANN001
    """A compressed Arrow buffer declares its decoded length and Arrow allocates it: a few KB
    of zstd zeros can ask for any amount. The gateway sums what a request's bodies declare
    and refuses it (413) before decompressing anything; nothing is written."""
    import storage_core.streams.commit as commit

    monkeypatch.setattr(commit, "MAX_DECODED_BYTES", 4_000_000)
    zeros = pa.table({"seq": pa.array([0] * 600_000, pa.int64())})  # 4.8 MB decoded, a few KB sent
    client = StreamClient(gateway.url, gateway.token)
    try:
        bomb = encode_append("zeros", 1, 0, zeros, "zstd")
        assert len(bomb) < 100_000
        with pytest.raises(GatewayError, match="413.*decode to 4800000 bytes, over the gateway's bound of 4000000"):
            client.append("cam-1", "zeros", bomb)
        halves = [encode_append("zeros", 1, i * 300_000, zeros.slice(i * 300_000, 300_000), "zstd") for i in range(2)]
        with pytest.raises(GatewayError, match="413.*decode to 4800000 bytes"):
            client.appends("cam-1", "zeros", halves)  # each under the bound, together over it
        assert client.show("cam-1", "zeros")["committed_end"] == 0
        assert [a["committed_end"] for a in client.appends("cam-1", "zeros", halves[:1])] == [300_000]
        # the gateway's budget for all requests at once, full: the request waits, then is
        # told to come back (503, retryable), and nothing of it is judged
        budget = gateway.app.state.stream_tables.decoded
        monkeypatch.setattr(budget, "wait", 0.1)
        with budget.holding(budget.limit):
            with pytest.raises(GatewayError, match="503.*holds .* bytes of decoded appends") as busy:
                client.appends("cam-1", "zeros", halves[1:])
            assert busy.value.retryable
        assert client.show("cam-1", "zeros")["committed_end"] == 300_000
        assert [a["committed_end"] for a in client.appends("cam-1", "zeros", halves[1:])] == [600_000]
    finally:
        client.close()


def test_a_device_reaches_only_its_own_streams(gateway) -> None:  # noqa: ANN001
    mine, theirs = StreamClient(gateway.url, gateway.token), StreamClient(gateway.url, gateway.other_token)
    try:
        mine.append("cam-1", "state", encode_append("state", 1, 0, telemetry(10), "zstd"))
        theirs.append("cam-2", "state", encode_append("state", 1, 0, telemetry(20), "zstd"))
        with pytest.raises(GatewayError, match="403"):
            theirs.append("cam-1", "state", encode_append("state", 1, 10, telemetry(5, start=10), "zstd"))
        with pytest.raises(GatewayError, match="403"):
            theirs.show("cam-1", "state")
        assert [s["stream"] for s in theirs.list()] == ["cam-2/state"]
    finally:
        mine.close()
        theirs.close()
    assert committed(gateway, "cam-1/state").num_rows == 10
    assert committed(gateway, "cam-2/state").num_rows == 20


def test_the_gateway_serves_rows_in_verified_blocks(gateway, monkeypatch) -> None:  # noqa: ANN001
    import io

    import storage_core.device.frame as frame

    client, other = StreamClient(gateway.url, gateway.token), StreamClient(gateway.url, gateway.other_token)
    try:
        for i in range(3):
            client.append("cam-1", "state", encode_append("state", 1, i * 1_000, telemetry(1_000, start=i * 1_000), "zstd"))
        raw = b"".join(client.read("cam-1", "state"))
        assert pa.ipc.open_stream(io.BytesIO(raw)).read_all().sort_by("seq").equals(telemetry(3_000))
        projected = pa.ipc.open_stream(io.BytesIO(b"".join(client.read("cam-1", "state", columns=["seq"])))).read_all()
        assert projected.column_names == ["seq"]
        with pytest.raises(GatewayError, match="403"):
            list(other.read("cam-1", "state"))
        # a block corrupted on the way is refused, naming its offset
        real = frame.encode_blocks

        def flip_third_block(chunks, **kwargs):  # noqa: ANN001, ANN003, ANN202
            for n, block in enumerate(real(chunks, **kwargs)):
                yield block[:10] + bytes([block[10] ^ 1]) + block[11:] if n == 2 else block

        monkeypatch.setattr("ferry.gateway.streams.encode_blocks", flip_third_block)
        with pytest.raises(CorruptFrame, match=f"data offset {2 * frame.BLOCK}"):
            b"".join(client.read("cam-1", "state"))
    finally:
        client.close()
        other.close()
