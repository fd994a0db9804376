"""Many small files: several in flight within one budget, catalog writes in groups, each
file read once, and a re-scan of an unchanged landing folder that reads nothing (stat memo)."""

from __future__ import annotations

import builtins
import os
import threading
import time
from pathlib import Path

import pytest

from storage_core import retrieve
from storage_core.catalog import Catalog
from storage_core.catalog import transactions as records
from storage_core.checksums import crc32c
from storage_core.config import load_settings
from storage_core.errors import AccessDenied, IntegrityError
from storage_core.keys import parse_uri
from storage_core.manifest import scan_source
from storage_core.statmemo import GRANULARITY_NS, StatMemo
from storage_core.stores.registry import open_store
from storage_core.upload import transactions as uploads


def make_landing(root: Path, count: int, size: int = 1000) -> Path:
    folder = root / "landing" / "dev" / "rec"
    folder.mkdir(parents=True)
    for n in range(count):
        (folder / f"{n:05d}.bin").write_bytes(os.urandom(size))
    return root / "landing"


def wait_until_settled(folder: Path) -> None:
    """Until the files' times are older than the memo's granularity (git's racy rule)."""
    newest = max(p.stat().st_mtime_ns for p in folder.rglob("*") if p.is_file())
    while time.time_ns() <= newest + GRANULARITY_NS:
        time.sleep(0.05)


class Watched:
    """A store that counts PUTs in flight at once, HEADs, and fails PUTs of chosen keys."""

    def __init__(self, store, fail: set[str] = frozenset()) -> None:
        self._store, self.fail = store, fail
        self.lock = threading.Lock()
        self.running = self.most = self.heads = 0

    def __getattr__(self, name):
        return getattr(self._store, name)

    def put(self, key, source, *, size, crc32c=None):
        with self.lock:
            self.running += 1
            self.most = max(self.most, self.running)
        try:
            time.sleep(0.01)  # a round trip's latency: what many files in flight hide
            if key.rsplit("/", 1)[-1] in self.fail:
                raise AccessDenied(f"{key}: refused (injected)", key=key)
            return self._store.put(key, source, size=size, crc32c=crc32c)
        finally:
            with self.lock:
                self.running -= 1

    def head(self, key):
        with self.lock:
            self.heads += 1
        return self._store.head(key)


def begin(catalog, source: Path, destination: str, settings):
    dest = parse_uri(destination)
    memo = StatMemo.in_home(settings.home)
    entries = uploads.prepare_manifest(catalog, scan_source(source, memo=memo).entries, dest, settings=settings)
    return records.begin_transaction(catalog, entries, destination=dest, origination="test")


@pytest.fixture
def settings(s3_env, tmp_path):
    return load_settings(home=tmp_path / "home", max_in_flight=8)


def test_a_batch_of_small_files_is_sent_several_at_once_and_recorded_in_groups(
        catalog_url, bucket, settings, tmp_path, monkeypatch):
    catalog = Catalog(catalog_url)
    source = make_landing(tmp_path, 60)
    store, _ = open_store(f"s3://{bucket.bucket}", settings)
    watched = Watched(store)
    monkeypatch.setattr(uploads, "open_store", lambda uri, s=None: (watched, ""))
    commits = []
    real_record = records.record_items_stored
    monkeypatch.setattr(records, "record_items_stored", lambda c, v: commits.append(len(v := list(v))) or real_record(c, v))
    txn = begin(catalog, source, f"s3://{bucket.bucket}/raw", settings)

    outcome = uploads.upload_items(catalog, [i.id for i in txn.items], settings=settings)

    assert (outcome.items, outcome.bytes) == (60, 60_000)
    assert 1 < watched.most <= settings.max_in_flight
    assert sum(commits) == 60 and len(commits) < 60  # groups, not one commit per file
    done = records.complete_transaction(catalog, txn.id)
    assert done.count("stored") == 60
    stored = {i.key: i.crc32c for i in done.items}
    sample = source / "dev/rec/00007.bin"
    assert stored["raw/dev/rec/00007.bin"] == crc32c(sample.read_bytes())
    known = StatMemo.in_home(settings.home).entries_under(source.resolve())  # each file read once, remembered
    assert known[str(sample.resolve())].crc32c == stored["raw/dev/rec/00007.bin"]
    catalog.dispose()


def test_a_failing_file_stops_the_batch_and_what_was_stored_is_recorded(sqlite_url, bucket, settings, tmp_path,
                                                                         monkeypatch):
    catalog = Catalog(sqlite_url)
    source = make_landing(tmp_path, 30)
    store, _ = open_store(f"s3://{bucket.bucket}", settings)
    watched = Watched(store, fail={"00003.bin"})
    monkeypatch.setattr(uploads, "open_store", lambda uri, s=None: (watched, ""))
    txn = begin(catalog, source, f"s3://{bucket.bucket}/raw", settings)

    with pytest.raises(AccessDenied):
        uploads.upload_items(catalog, [i.id for i in txn.items], settings=settings)

    after = records.get_transaction(catalog, txn.id)
    failed = [i for i in after.items if i.status == "failed"]
    assert [i.relative_path for i in failed] == ["00003.bin"] and "injected" in failed[0].error
    listed = {o.key for o in store.list("raw/")}
    stored = {i.key for i in after.items if i.status == "stored"}
    assert stored and stored <= listed  # every object stored is recorded as stored (checked just below)
    assert listed - stored == set()
    catalog.dispose()


def _count_reads(monkeypatch, folder: Path) -> list[str]:
    """Every open of a file under `folder` from here on (the scan's reads go through open)."""
    opened: list[str] = []
    real_open = builtins.open
    prefix = str(folder.resolve())

    def counting_open(file, *args, **kwargs):
        if isinstance(file, (str, os.PathLike)) and os.fspath(file).startswith(prefix):
            opened.append(os.fspath(file))
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", counting_open)
    return opened


def _rescan_reads(count: int, catalog_url: str, tmp_path: Path, monkeypatch) -> tuple[list[str], float]:
    settings = load_settings(home=tmp_path / "home")
    catalog = Catalog(catalog_url)
    source = make_landing(tmp_path, count, size=100)
    destination = f"file://{tmp_path / 'store'}"
    wait_until_settled(source)
    txn = begin(catalog, source, destination, settings)
    uploads.upload_items(catalog, [i.id for i in txn.items], settings=settings)
    records.complete_transaction(catalog, txn.id)

    opened = _count_reads(monkeypatch, source)
    started = time.perf_counter()
    again = begin(catalog, source, destination, settings)
    scan_seconds = time.perf_counter() - started
    assert again.count("skipped") == count
    catalog.dispose()
    return opened, scan_seconds


@pytest.mark.slow
def test_a_rescan_of_an_unchanged_folder_reads_no_file(sqlite_url, tmp_path, monkeypatch):
    opened, _ = _rescan_reads(2_000, sqlite_url, tmp_path, monkeypatch)
    assert opened == []


@pytest.mark.soak
def test_a_rescan_of_an_unchanged_10000_file_folder_reads_no_file(sqlite_url, tmp_path, monkeypatch):
    opened, seconds = _rescan_reads(10_000, sqlite_url, tmp_path, monkeypatch)
    print(f"re-scan and begin of 10,000 unchanged files: {seconds:.2f} s")
    assert opened == []


def test_a_file_rewritten_within_the_timestamp_granularity_is_read_again(sqlite_url, tmp_path, monkeypatch):
    settings = load_settings(home=tmp_path / "home")
    catalog = Catalog(sqlite_url)
    source = make_landing(tmp_path, 3, size=100)
    destination = f"file://{tmp_path / 'store'}"
    txn = begin(catalog, source, destination, settings)  # at once: the memo's entries are racy
    uploads.upload_items(catalog, [i.id for i in txn.items], settings=settings)
    records.complete_transaction(catalog, txn.id)
    path = source / "dev/rec/00001.bin"
    before = path.stat()
    path.write_bytes(b"x" * 100)  # same size, and the same mtime put back
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))

    opened = _count_reads(monkeypatch, source)
    again = begin(catalog, source, destination, settings)
    assert str(path.resolve()) in opened
    rewritten = next(i for i in again.items if i.relative_path == "00001.bin")
    assert rewritten.status == "pending" and rewritten.crc32c == crc32c(b"x" * 100)
    catalog.dispose()


def test_small_cataloged_objects_download_without_a_head_and_a_grown_object_is_refused(
        sqlite_url, bucket, settings, tmp_path, monkeypatch):
    catalog = Catalog(sqlite_url)
    source = make_landing(tmp_path, 20)
    txn = begin(catalog, source, f"s3://{bucket.bucket}/raw", settings)
    uploads.upload_items(catalog, [i.id for i in txn.items], settings=settings)
    records.complete_transaction(catalog, txn.id)
    found = retrieve.query(catalog=catalog, device_id="dev")
    watched: list[Watched] = []

    def watched_sources(target, settings=None):
        from storage_core.download.targets import sources_of as real
        sources = real(target, settings)
        watched.append(Watched(sources[0].store))
        from dataclasses import replace
        return [replace(s, store=watched[0]) for s in sources]

    monkeypatch.setattr("storage_core.download.api.sources_of", watched_sources)
    paths = retrieve.download(found, tmp_path / "out")
    assert len(paths) == 20 and watched[0].heads == 0
    assert all(p.read_bytes() == (source / "dev/rec" / p.name).read_bytes() for p in paths)

    bucket.put("raw/dev/rec/00004.bin", os.urandom(1001), size=1001)  # grew behind the catalog's back
    with pytest.raises(IntegrityError, match="holds more"):
        retrieve.download(found, tmp_path / "out2")
    catalog.dispose()


def test_two_batches_storing_a_new_devices_first_files_at_once_both_succeed(catalog_url, tmp_path):
    catalog = Catalog(catalog_url)
    for round_ in range(4):  # a fresh device and recording each round: both batches create them
        source = tmp_path / f"landing{round_}"
        for n in range(2):
            (source / f"dev{round_}" / "rec").mkdir(parents=True, exist_ok=True)
            (source / f"dev{round_}" / "rec" / f"{n}.bin").write_bytes(b"x" * (n + 1))
        dest = parse_uri(f"file://{tmp_path / 'store'}")
        txn = records.begin_transaction(catalog, scan_source(source).entries, destination=dest, origination="race")
        started = records.start_items_upload(catalog, [i.id for i in txn.items])
        barrier = threading.Barrier(2)
        errors: list[BaseException] = []

        def store(item_id: int) -> None:
            barrier.wait()
            try:
                records.record_items_stored(catalog, [records.VerifiedItem(item_id, 1, "etag")])
            except BaseException as exc:  # noqa: BLE001 - collected for the assertion
                errors.append(exc)

        threads = [threading.Thread(target=store, args=(s.item.id,)) for s in started]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert errors == []
        assert records.complete_transaction(catalog, txn.id).count("stored") == 2
    catalog.dispose()
