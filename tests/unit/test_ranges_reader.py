"""RangeReader against fakes that count calls and inject faults, and a tiny local HTTP server."""

from __future__ import annotations

import http.server
import io
import re
import threading
from collections.abc import Iterator
from urllib.parse import parse_qs, urlsplit

import pytest

from storage_core.errors import AccessDenied, ObjectNotFound, PreconditionFailed, RangeNotHonoured
from storage_core.ranges import RangeReader
from storage_core.stores.base import Tail

DATA = bytes(range(256)) * 400  # 102,400 bytes


class FakeStore:
    """A GetRange over in-memory objects that records every request; faults on demand."""

    def __init__(self, objects: dict[str, bytes]) -> None:
        self.objects = dict(objects)
        self.versions = {key: 1 for key in objects}
        self.calls: list[tuple] = []
        self.ignore_range = False
        self.shift = 0  # answer a range this many bytes off

    def etag(self, key: str) -> str:
        return f'"v{self.versions[key]}"'

    def replace(self, key: str, data: bytes) -> None:
        self.objects[key] = data
        self.versions[key] += 1

    def get_range(self, key: str, start: int, end: int, *, if_match: str | None = None) -> bytes:
        self.calls.append(("range", start, end, if_match))
        if if_match is not None and if_match != self.etag(key):
            raise PreconditionFailed(f"{key} changed", key=key)
        data = self.objects[key]
        if self.ignore_range:
            return data
        return data[start + self.shift : end + self.shift]

    def get_tail(self, key: str, length: int, *, if_match: str | None = None) -> Tail:
        self.calls.append(("tail", length))
        data = self.objects[key]
        start = max(0, len(data) - length)
        if self.ignore_range:
            return Tail(data, 0, len(data), self.etag(key))
        return Tail(data[start:], start, len(data), self.etag(key))


def open_reader(store: FakeStore, **options) -> RangeReader:
    options.setdefault("tail_size", 1024)
    options.setdefault("read_ahead", 4096)
    return RangeReader.from_store(store, "obj", **options)


def test_open_learns_size_etag_and_tail_in_one_request() -> None:
    store = FakeStore({"obj": DATA})
    reader = open_reader(store)
    assert (reader.size, reader.etag) == (len(DATA), '"v1"')
    assert store.calls == [("tail", 1024)]
    reader.seek(-1024, io.SEEK_END)
    assert reader.read() == DATA[-1024:]
    assert reader.stats.requests == 1 and reader.stats.hits == 1 and reader.stats.misses == 0
    assert reader.stats.bytes_fetched == 1024


def test_reads_fetch_ahead_and_never_refetch_cached_bytes() -> None:
    store = FakeStore({"obj": DATA})
    reader = open_reader(store)
    assert reader.read(10) == DATA[:10]
    assert store.calls[-1] == ("range", 0, 4096, '"v1"')  # read-ahead, pinned to the ETag
    assert reader.read(4086) == DATA[10:4096]  # all cached
    assert reader.stats.requests == 2
    # a read spanning cached and uncached bytes fetches only the uncached part
    reader.seek(4000)
    assert reader.read(200) == DATA[4000:4200]
    assert store.calls[-1][:3] == ("range", 4096, 4000 + 4096)  # at least read_ahead from the read
    # read-ahead stops at the cached tail
    reader.seek(len(DATA) - 1024 - 100)
    assert reader.read(200) == DATA[-1124:-924]
    assert store.calls[-1][:3] == ("range", len(DATA) - 1124, len(DATA) - 1024)
    fetched = [(c[1], c[2]) for c in store.calls if c[0] == "range"]
    assert sum(e - s for s, e in fetched) + 1024 == reader.stats.bytes_fetched
    assert len({i for s, e in fetched for i in range(s, e)}) == sum(e - s for s, e in fetched)  # no byte twice
    stats = reader.stats
    assert (stats.hits, stats.misses) == (1, 3)


def test_whole_read_matches_and_read_past_eof_is_empty() -> None:
    reader = open_reader(FakeStore({"obj": DATA}))
    assert reader.read() == DATA
    assert reader.read(10) == b""
    reader.seek(len(DATA) + 10)
    assert reader.read(1) == b""
    assert io.BufferedReader(open_reader(FakeStore({"obj": DATA}))).read() == DATA


def test_prefetch_fetches_only_uncovered_gaps_in_parallel() -> None:
    store = FakeStore({"obj": DATA})
    reader = open_reader(store, max_gap=0, part_size=10_000)
    reader.prefetch_range(0, 100)
    reader.prefetch_range(200, 300)
    store.calls.clear()
    reader.prefetch_range(0, 30_000)
    asked = sorted((c[1], c[2]) for c in store.calls)
    assert asked == [(100, 200), (300, 10_300), (10_300, 20_300), (20_300, 30_000)]
    before = reader.stats.requests
    reader.prefetch_range(50, 29_000)  # all cached now
    assert reader.stats.requests == before
    reader.seek(0)
    assert reader.read(30_000) == DATA[:30_000]


def test_prefetch_coalesces_small_uncached_gaps() -> None:
    store = FakeStore({"obj": DATA})
    reader = open_reader(store, max_gap=100)
    reader.prefetch_ranges([(1000, 2000), (2050, 3000), (5000, 6000)])
    assert sorted((c[1], c[2]) for c in store.calls[1:]) == [(1000, 3000), (5000, 6000)]
    with pytest.raises(ValueError):
        reader.prefetch_range(0, len(DATA) + 1)


def test_a_store_that_ignores_range_fails_clearly() -> None:
    store = FakeStore({"obj": DATA})
    store.ignore_range = True
    with pytest.raises(RangeNotHonoured, match="last 1024 bytes"):
        open_reader(store)
    store.ignore_range = False
    reader = open_reader(store)
    store.ignore_range = True
    with pytest.raises(RangeNotHonoured, match=r"asked for bytes \[0, 4096\)"):
        reader.read(1)


def test_a_store_that_answers_the_wrong_range_fails_clearly() -> None:
    store = FakeStore({"obj": DATA})
    reader = open_reader(store)
    store.shift = 2000  # the answer runs off the end of the object: a short answer
    reader.seek(len(DATA) - 1024 - 10)
    with pytest.raises(RangeNotHonoured):
        reader.read(5)


def test_a_replaced_object_fails_with_precondition_failed() -> None:
    store = FakeStore({"obj": DATA})
    reader = open_reader(store)
    store.replace("obj", DATA[::-1])
    with pytest.raises(PreconditionFailed):
        reader.read(10)
    assert reader.regions == [(len(DATA) - 1024, len(DATA))]  # nothing of the new version kept


def test_iter_blocks_streams_in_order_without_caching() -> None:
    store = FakeStore({"obj": DATA})
    reader = open_reader(store, max_workers=3)
    assert b"".join(reader.iter_blocks(0, reader.size, block_size=7000)) == DATA
    assert reader.regions == [(len(DATA) - 1024, len(DATA))]
    asked = [(c[1], c[2]) for c in store.calls if c[0] == "range"]
    # the last block lies in the cached tail: served from the cache, not fetched
    assert all(e <= len(DATA) - 1024 or s < len(DATA) - 1024 for s, e in asked)
    assert list(reader.iter_blocks(5, 5)) == []


def test_a_cached_read_neither_lists_regions_nor_plans(monkeypatch: pytest.MonkeyPatch) -> None:
    import storage_core.ranges.reader as reader_module
    from storage_core.ranges import SparseBuffer

    reader = open_reader(FakeStore({"obj": DATA}), read_ahead=1, max_gap=0)
    reader.prefetch_ranges([(i, i + 50) for i in range(0, 50_000, 100)])  # 500 separate regions
    listed = []
    regions = SparseBuffer.regions
    monkeypatch.setattr(SparseBuffer, "regions", property(lambda buffer: listed.append(1) or regions.fget(buffer)))
    monkeypatch.setattr(reader_module, "plan_read", lambda *args, **kwargs: pytest.fail("planned a cached read"))
    before = reader.stats
    for start in range(0, 50_000, 100):
        assert reader.pread(start + 10, start + 50) == DATA[start + 10 : start + 50]
    assert listed == [] and reader.stats.requests == before.requests
    assert reader.stats.hits == before.hits + 500 and reader.stats.misses == before.misses
    monkeypatch.undo()
    assert reader.pread(49_950, 50_100) == DATA[49_950:50_100]  # a miss still plans and fetches
    assert reader.stats.misses == before.misses + 1


def test_empty_object() -> None:
    reader = open_reader(FakeStore({"obj": b""}))
    assert reader.size == 0 and reader.read() == b""
    reader.close()
    with pytest.raises(ValueError):
        reader.read()


# --- over HTTP ------------------------------------------------------------------------------
class RangeServer(http.server.ThreadingHTTPServer):
    """Serves one object with ETag, Range, If-Match; tokens in `?token=` can expire."""

    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), RangeHandler)
        self.data = DATA
        self.etag = '"abc"'
        self.ignore_range = False
        self.shift = 0
        self.valid_tokens = {"t1"}
        self.requests: list[dict[str, str]] = []


class RangeHandler(http.server.BaseHTTPRequestHandler):
    server: RangeServer

    def log_message(self, *args) -> None:
        pass

    def _send(self, status: int, body: bytes = b"", headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        for name, value in {"ETag": self.server.etag, "Content-Length": str(len(body)), **(headers or {})}.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        srv = self.server
        query = parse_qs(urlsplit(self.path).query)
        srv.requests.append({"path": self.path, **dict(self.headers)})
        if urlsplit(self.path).path != "/obj":
            return self._send(404, b"<Error><Code>NoSuchKey</Code></Error>")
        if query.get("token", [""])[0] not in srv.valid_tokens:
            return self._send(403, b"<Error><Code>AccessDenied</Code><Message>Request has expired</Message></Error>")
        if_match = self.headers.get("If-Match")
        if if_match and if_match != srv.etag:
            return self._send(412, b"<Error><Code>PreconditionFailed</Code></Error>")
        size = len(srv.data)
        match = re.fullmatch(r"bytes=(\d*)-(\d*)", self.headers.get("Range", ""))
        if srv.ignore_range or not match:
            return self._send(200, srv.data)
        first, last = match.groups()
        if first == "":
            start, end = max(0, size - int(last)), size
        else:
            start, end = int(first), min(size, int(last) + 1)
        start, end = start + srv.shift, min(size, end + srv.shift)
        self._send(206, srv.data[start:end], {"Content-Range": f"bytes {start}-{end - 1}/{size}"})


@pytest.fixture
def server() -> Iterator[RangeServer]:
    srv = RangeServer()
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    try:
        yield srv
    finally:
        srv.shutdown()
        srv.server_close()


def url(srv: RangeServer, token: str = "t1", path: str = "/obj") -> str:
    return f"http://127.0.0.1:{srv.server_address[1]}{path}?token={token}"


def test_url_reader_reads_by_ranges_pinned_to_the_etag(server: RangeServer) -> None:
    reader = RangeReader.from_url(url(server), tail_size=1024, read_ahead=4096)
    assert (reader.size, reader.etag) == (len(DATA), '"abc"')
    assert reader.read(100) == DATA[:100]
    reader.prefetch_ranges([(10_000, 20_000), (50_000, 60_000)])
    reader.seek(10_000)
    assert reader.read(10_000) == DATA[10_000:20_000]
    # the two prefetched ranges are 30 KB apart (< max_gap): one request
    assert reader.stats.requests == 3
    assert server.requests[-1]["Range"] == "bytes=10000-59999"
    assert server.requests[0]["Range"] == "bytes=-1024" and "If-Match" not in server.requests[0]
    assert all(r["If-Match"] == '"abc"' for r in server.requests[1:])


def test_url_reader_fails_clearly_when_range_is_ignored(server: RangeServer) -> None:
    server.ignore_range = True
    with pytest.raises(RangeNotHonoured, match="200 instead of 206"):
        RangeReader.from_url(url(server), tail_size=1024)
    server.ignore_range = False
    reader = RangeReader.from_url(url(server), tail_size=1024)
    server.ignore_range = True
    with pytest.raises(RangeNotHonoured, match="200 instead of 206"):
        reader.read(1)


def test_url_reader_fails_clearly_on_a_wrong_range(server: RangeServer) -> None:
    reader = RangeReader.from_url(url(server), tail_size=1024)
    server.shift = 7
    with pytest.raises(RangeNotHonoured, match=r"asked for bytes \[0, "):
        reader.read(1)


def test_url_reader_refreshes_an_expired_url(server: RangeServer) -> None:
    refreshed: list[str] = []

    def refresh() -> str:
        refreshed.append("x")
        server.valid_tokens.add("t2")
        return url(server, "t2")

    reader = RangeReader.from_url(url(server), refresh_url=refresh, tail_size=1024, read_ahead=10)
    server.valid_tokens.discard("t1")  # the first URL expires
    assert reader.read(5) == DATA[:5]
    assert reader.read(5) == DATA[5:10]
    assert len(refreshed) == 1
    assert "token=t2" in server.requests[-1]["path"]


def test_url_reader_without_refresh_reports_access_denied_without_the_signature(server: RangeServer) -> None:
    server.valid_tokens.clear()
    with pytest.raises(AccessDenied) as info:
        RangeReader.from_url(url(server, "secret-signature"), tail_size=1024)
    assert "secret-signature" not in str(info.value)
    with pytest.raises(ObjectNotFound):
        server.valid_tokens.add("t1")
        RangeReader.from_url(url(server, path="/missing"), tail_size=1024)


def test_url_reader_fails_when_the_object_is_replaced(server: RangeServer) -> None:
    reader = RangeReader.from_url(url(server), tail_size=1024)
    server.etag = '"def"'
    with pytest.raises(PreconditionFailed):
        reader.read(1)
