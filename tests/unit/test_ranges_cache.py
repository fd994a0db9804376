"""Disk cache: keyed by URI + ETag, atomic entries, LRU bound, policy decisions."""

from __future__ import annotations

import io
import os
import threading

import pytest

from storage_core.errors import IntegrityError
from storage_core.ranges import CachePolicy, DiskCache, RangeReader, open_with_policy, should_download

from tests.unit.test_ranges_reader import DATA, FakeStore


def writer(data: bytes, calls: list[int]):
    def download(out) -> int:
        calls.append(1)
        out.write(data)
        return len(data)

    return download


def test_policy_decisions() -> None:
    assert should_download("always", cached=False, bytes_needed=1, size=100)
    assert not should_download("never", cached=True, bytes_needed=100, size=100)
    assert should_download(CachePolicy.ADAPTIVE, cached=True, bytes_needed=1, size=100)
    assert not should_download("adaptive", cached=False, bytes_needed=10, size=100)
    assert should_download("adaptive", cached=False, bytes_needed=60, size=100)
    assert should_download("adaptive", cached=False, bytes_needed=None, size=100)
    with pytest.raises(ValueError):
        should_download("sometimes", cached=False, bytes_needed=None, size=1)


def test_entries_are_keyed_by_uri_and_etag_and_downloaded_once(tmp_path) -> None:
    cache = DiskCache(tmp_path, max_bytes=1 << 20)
    calls: list[int] = []
    first = cache.fetch("s3://b/k", '"1"', writer(b"one", calls))
    again = cache.fetch("s3://b/k", '"1"', writer(b"xxx", calls))
    other = cache.fetch("s3://b/k", '"2"', writer(b"two", calls))
    assert first == again and first.read_bytes() == b"one" and other.read_bytes() == b"two"
    assert len(calls) == 2
    assert cache.get("s3://b/k", '"3"') is None


def test_a_failed_download_leaves_no_entry_and_no_part_file(tmp_path) -> None:
    cache = DiskCache(tmp_path, max_bytes=1 << 20)

    def broken(out) -> int:
        out.write(b"half")
        raise ConnectionError("gone")

    with pytest.raises(ConnectionError):
        cache.fetch("u", "e", broken)
    with pytest.raises(IntegrityError):
        cache.fetch("u", "e", writer(b"abc", []), expected_size=4)
    assert cache.get("u", "e") is None
    assert not list(tmp_path.glob("*.part")) and not list(tmp_path.glob("*.bin"))


def test_concurrent_fetches_download_once_and_never_see_a_torn_file(tmp_path) -> None:
    cache = DiskCache(tmp_path, max_bytes=1 << 30)
    calls: list[int] = []
    gate = threading.Event()

    def slow(out) -> int:
        calls.append(1)
        gate.wait(5)
        out.write(DATA)
        return len(DATA)

    results: list[bytes] = []
    threads = [threading.Thread(target=lambda: results.append(cache.fetch("u", "e", slow).read_bytes())) for _ in range(4)]
    for thread in threads:
        thread.start()
    assert cache.get("u", "e") is None  # still downloading: no entry yet
    gate.set()
    for thread in threads:
        thread.join()
    assert calls == [1] and results == [DATA] * 4


def test_lru_eviction_keeps_the_total_under_the_bound(tmp_path) -> None:
    cache = DiskCache(tmp_path, max_bytes=250)
    a = cache.fetch("a", "1", writer(b"a" * 100, []))
    b = cache.fetch("b", "1", writer(b"b" * 100, []))
    os.utime(a, ns=(1, 1))
    os.utime(b, ns=(2, 2))
    cache.get("a", "1")  # a becomes the most recently used
    c = cache.fetch("c", "1", writer(b"c" * 100, []))
    assert a.exists() and c.exists() and not b.exists()
    assert sum(size for _, size, _ in cache.entries()) <= 250
    big = cache.fetch("d", "1", writer(b"d" * 300, []))  # larger than the bound: kept, others go
    assert big.exists() and [p for p, _, _ in cache.entries()] == [big]


def test_open_with_policy_uses_the_reader_or_a_cached_copy(tmp_path) -> None:
    store = FakeStore({"obj": DATA})
    reader = RangeReader.from_store(store, "obj", tail_size=1024)
    cache = DiskCache(tmp_path, max_bytes=1 << 30)
    assert open_with_policy(reader, cache=cache, policy="adaptive", bytes_needed=10) is reader
    assert open_with_policy(reader, cache=None, policy="adaptive") is reader
    with pytest.raises(ValueError):
        open_with_policy(reader, cache=None, policy="always")
    with open_with_policy(reader, cache=cache, policy="always") as local:
        assert isinstance(local, io.BufferedReader) and local.read() == DATA
    requests = reader.stats.requests
    with open_with_policy(reader, cache=cache, policy="adaptive", bytes_needed=1) as local:
        assert local.read() == DATA  # reused, not downloaded again
    assert reader.stats.requests == requests
    assert open_with_policy(reader, cache=cache, policy="never") is reader
