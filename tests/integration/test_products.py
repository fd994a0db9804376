"""Derived products on a real store (SeaweedFS) and catalog (SQLite, PostgreSQL): keys,
publish, reuse, broken attempts, force, rechunk, get through the cache, gc. Outside readers:
pyarrow reads the Parquet, the mcap library counts the messages."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest

from storage_core.catalog import Catalog
from storage_core.catalog import products as catalog_products
from storage_core.catalog.models import ProductAttempt, utcnow
from storage_core.config import load_settings
from storage_core.errors import AttemptLost, ConfigError, IntegrityError, ProductBusy
from storage_core.keys import join_key
from storage_core.products import (
    collect_garbage,
    dataset_name,
    derive_one,
    get_product,
    plan_derive,
    read_manifest,
    rechunk_product,
)
from tests.support.recordings import mcap_with_topics, message_counts, store_recording

COUNTS_A = {"/imu": 700, "/log": 300, "/raw": 50}
COUNTS_B = {"/imu": 120, "/gps": 80}


@pytest.fixture
def env(bucket, monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    monkeypatch.setenv("FERRY_STORE", f"{bucket.uri}/data")
    monkeypatch.setenv("FERRY_HOME", str(tmp_path / "home"))
    return bucket


@pytest.fixture
def catalog(catalog_url: str):
    catalog = Catalog(catalog_url)
    yield catalog
    catalog.dispose()


def two_recordings(catalog: Catalog, store) -> dict[str, bytes]:
    files = {"r1/a.mcap": mcap_with_topics(COUNTS_A, seed=1), "r2/b.mcap": mcap_with_topics(COUNTS_B, seed=2)}
    store_recording(catalog, store, "data/dev/r1/a.mcap", files["r1/a.mcap"], device="dev", recording="r1")
    store_recording(catalog, store, "data/dev/r2/b.mcap", files["r2/b.mcap"], device="dev", recording="r2")
    return files


def derive_all(catalog: Catalog, **kwargs) -> list:
    options = kwargs.pop("options", None)
    mode = kwargs.pop("mode", "reuse")
    plan = plan_derive(catalog, "topics", options=options, mode=mode, **kwargs)
    return [derive_one(catalog, item, options=options, mode=mode) for item in plan]


def test_topics_rows_equal_mcap_counts_and_a_rerun_computes_nothing(env, catalog, tmp_path) -> None:
    files = two_recordings(catalog, env)
    plan = plan_derive(catalog, "topics")
    assert [(p.recording, p.action, p.reason) for p in plan] == [("r1", "compute", "new"), ("r2", "compute", "new")]
    outcomes = [derive_one(catalog, item, options={"chunk_rows": 256}) for item in plan]
    assert [o.outcome for o in outcomes] == ["computed", "computed"]
    for outcome, data in zip(outcomes, files.values()):
        info = catalog_products.get_product(catalog, outcome.key)
        assert info.committed is not None and info.committed.state == "committed"
        folder = tmp_path / "out" / outcome.key
        get_product(catalog, outcome.key[:12], folder, cache=tmp_path / "cache")
        for topic, count in message_counts(data).items():
            table = ds.dataset(folder / dataset_name(topic), format="parquet").to_table()
            assert table.num_rows == count, topic
    assert len(list((tmp_path / "out" / outcomes[0].key / dataset_name("/imu")).iterdir())) == 3  # 700 rows by 256
    imu = ds.dataset(tmp_path / "out" / outcomes[0].key / dataset_name("/imu"), format="parquet").to_table()
    assert {"log_time", "publish_time", "sequence", "data", "ax", "n", "ok"} <= set(imu.column_names)
    assert imu.column("n").to_pylist()[:3] == [0, 3, 6] and imu.column("ok").to_pylist()[0] is True
    log = pq.read_table(tmp_path / "out" / outcomes[0].key / dataset_name("/log"))
    assert {"text", "level", "meta"} <= set(log.column_names)
    raw = pq.read_table(tmp_path / "out" / outcomes[0].key / dataset_name("/raw"))
    assert raw.column_names == ["log_time", "publish_time", "sequence", "channel_id", "data"]
    again = plan_derive(catalog, "topics")
    assert [(p.action, p.reason) for p in again] == [("reuse", "committed")] * 2
    assert {o.outcome for o in derive_all(catalog)} == {"reused"}


def test_untracked_options_reuse_tracked_ones_and_changed_inputs_recompute(env, catalog) -> None:
    two_recordings(catalog, env)
    first = {o.recording: o.key for o in derive_all(catalog)}
    assert {p.action for p in plan_derive(catalog, "topics", options={"compression": "lz4"})} == {"reuse"}
    undecoded = plan_derive(catalog, "topics", options={"decode": "false"})
    assert [(p.action, p.reason) for p in undecoded] == [("compute", "option")] * 2
    assert {p.key for p in undecoded}.isdisjoint(first.values())
    changed = mcap_with_topics(COUNTS_A, seed=9)  # other bytes, same shape: a re-ingest
    store_recording(catalog, env, "data/dev/r1/a.mcap", changed, device="dev", recording="r1")
    plan = plan_derive(catalog, "topics")
    assert [(p.recording, p.action, p.reason) for p in plan] == [("r1", "compute", "input"), ("r2", "reuse", "committed")]
    with pytest.raises(ConfigError, match="no option"):
        plan_derive(catalog, "topics", options={"decod": "false"})


def test_changed_bytes_behind_the_catalog_fail_the_attempt_and_publish_nothing(env, catalog) -> None:
    two_recordings(catalog, env)
    env.put("data/dev/r2/b.mcap", mcap_with_topics(COUNTS_B, seed=5), size=len(mcap_with_topics(COUNTS_B, seed=5)))
    plan = [p for p in plan_derive(catalog, "topics") if p.recording == "r2"]
    with pytest.raises(IntegrityError, match="not the ones catalogued"):
        derive_one(catalog, plan[0])
    info = catalog_products.get_product(catalog, plan[0].key)
    assert info.committed is None and info.attempts[0].state == "failed"
    assert not list(env.list(info.attempts[0].prefix + "/"))  # its files were deleted
    assert plan_derive(catalog, "topics", recording="r2")[0].action == "broken"


def test_an_expired_lease_is_broken_and_a_live_one_is_busy(env, catalog) -> None:
    two_recordings(catalog, env)
    item = plan_derive(catalog, "topics", recording="r1")[0]
    catalog_products.claim_attempt(
        catalog, key=item.key, product="topics", recording_id=item.recording_id, lineage_json="{}", attempt_id="a" * 32,
        store_uri=env.uri, prefix="data/products/x", lease=timedelta(seconds=60), owner="other", settings={},
    )
    assert plan_derive(catalog, "topics", recording="r1")[0].action == "busy"
    with pytest.raises(ProductBusy):
        derive_one(catalog, item, wait=0.3)
    with catalog.session() as session:
        session.get(ProductAttempt, "a" * 32).lease_expires_at = utcnow() - timedelta(seconds=1)
    again = plan_derive(catalog, "topics", recording="r1")[0]
    assert (again.action, again.reason) == ("broken", "broken: its writer stopped (lease expired)")
    assert derive_one(catalog, again).outcome == "computed"
    with pytest.raises(AttemptLost):
        catalog_products.renew_lease(catalog, "a" * 32, timedelta(seconds=60))


def test_force_keeps_the_old_files_readable_and_if_broken_repairs(env, catalog, tmp_path) -> None:
    two_recordings(catalog, env)
    first = derive_all(catalog, recording="r1", options={"chunk_rows": 200})[0]
    old = catalog_products.get_product(catalog, first.key).committed
    manifest = read_manifest(env, old.prefix)
    reader_files = [join_key(old.prefix, f.path) for f in manifest.files]
    opened = env.open_read(reader_files[0])  # a reader is part-way through the old product
    forced = derive_all(catalog, recording="r1", mode="force")[0]
    assert forced.outcome == "computed" and forced.key == first.key and forced.attempt != old.id
    info = catalog_products.get_product(catalog, first.key)
    assert info.committed_attempt_id == forced.attempt
    assert [a.state for a in info.attempts if a.id == old.id] == ["superseded"]
    assert opened.read() and all(env.head(k).size for k in reader_files)  # the reader finishes on the old files
    opened.close()
    # a file of the committed attempt vanishes: reuse does not look, if_broken does
    new_manifest = read_manifest(env, info.committed.prefix)
    env.delete(join_key(info.committed.prefix, new_manifest.files[0].path))
    assert plan_derive(catalog, "topics", recording="r1")[0].action == "reuse"
    broken = plan_derive(catalog, "topics", recording="r1", mode="if_broken")[0]
    assert broken.action == "broken" and "missing" in broken.reason
    assert derive_one(catalog, broken, mode="if_broken").outcome == "computed"
    assert plan_derive(catalog, "topics", recording="r1", mode="if_broken")[0].action == "reuse"
    # gc: superseded attempts go after the grace period, the committed one stays
    assert collect_garbage(catalog, older_than=timedelta(hours=1)).attempts == []
    report = collect_garbage(catalog, older_than=timedelta(0))
    assert old.id in report.attempts and report.products == []
    assert not list(env.list(old.prefix + "/"))
    out = tmp_path / "after-gc"
    get_product(catalog, first.key, out)
    assert ds.dataset(out / dataset_name("/imu"), format="parquet").count_rows() == COUNTS_A["/imu"]


def test_rechunk_keeps_key_and_rows_and_get_fills_the_cache(env, catalog, tmp_path) -> None:
    two_recordings(catalog, env)
    first = derive_all(catalog, recording="r2")[0]
    result = rechunk_product(catalog, first.key[:12], chunk_rows=50)
    assert result.key == first.key and result.files > result.files_before
    manifest = read_manifest(env, catalog_products.get_product(catalog, first.key).committed.prefix)
    assert all(f.rows <= 50 for f in manifest.files) and manifest.rows == sum(COUNTS_B.values())
    cache = tmp_path / "cache"
    got = get_product(catalog, first.key, tmp_path / "one", cache=cache)
    assert got.source == env.uri and got.rows == sum(COUNTS_B.values())
    again = get_product(catalog, first.key, tmp_path / "two", cache=cache)
    assert again.source == "cache"
    part = next((cache / first.key / result.attempt).rglob("*.parquet"))
    part.write_bytes(b"x" + part.read_bytes()[1:])  # a flipped byte: the cache copy is not used
    assert get_product(catalog, first.key, tmp_path / "three", cache=cache).source == env.uri
    sequence = pq.read_table(tmp_path / "three" / dataset_name("/gps")).column("sequence").to_pylist()
    assert sequence == sorted(sequence)


def test_gc_removes_products_no_recording_reaches(env, catalog) -> None:
    two_recordings(catalog, env)
    first = derive_all(catalog, recording="r2")[0]
    store_recording(catalog, env, "data/dev/r2/b.mcap", mcap_with_topics(COUNTS_B, seed=7), device="dev", recording="r2")
    prefix = catalog_products.get_product(catalog, first.key).committed.prefix
    assert collect_garbage(catalog, older_than=timedelta(hours=1)).products == []
    report = collect_garbage(catalog, older_than=timedelta(0))
    assert report.products == [first.key] and not list(env.list(prefix + "/"))
    assert catalog_products.find_product(catalog, first.key) is None


def test_two_derives_of_one_key_at_once_compute_it_once(env, catalog) -> None:
    from concurrent.futures import ThreadPoolExecutor

    two_recordings(catalog, env)
    [item] = plan_derive(catalog, "topics", recording="r1")
    with ThreadPoolExecutor(2) as pool:
        outcomes = list(pool.map(lambda _: derive_one(catalog, item, options={"chunk_rows": 64}), range(2)))
    assert sorted(o.outcome for o in outcomes) == ["computed", "reused"]
    info = catalog_products.get_product(catalog, item.key)
    assert [a.state for a in info.attempts] == ["committed"]


CHILD = """
import sys
from datetime import timedelta
from storage_core.catalog import Catalog
from storage_core.products import derive_one, plan_derive
catalog = Catalog(sys.argv[1])
[item] = plan_derive(catalog, "topics", recording="big")
derive_one(catalog, item, options={"chunk_rows": 50}, lease=timedelta(seconds=float(sys.argv[2])))
"""


@pytest.mark.slow
def test_sigkill_during_a_derive_leaves_it_broken_and_the_next_run_recomputes(env, sqlite_url, tmp_path) -> None:
    import os
    import signal
    import subprocess
    import sys
    import time

    catalog = Catalog(sqlite_url)
    data = mcap_with_topics({"/imu": 30_000, "/log": 10_000}, seed=3)
    store_recording(catalog, env, "data/dev/big/x.mcap", data, device="dev", recording="big")
    [item] = plan_derive(catalog, "topics", recording="big")
    child = subprocess.Popen([sys.executable, "-c", CHILD, sqlite_url, "3"], env=os.environ.copy(),
                             cwd=Path(__file__).resolve().parents[2])
    try:
        deadline = time.monotonic() + 120
        while True:  # kill it once it has written files under its attempt
            info = catalog_products.find_product(catalog, item.key)
            running = info.running if info else None
            if running is not None and len(list(env.list(running.prefix + "/"))) >= 3:
                break
            assert child.poll() is None and time.monotonic() < deadline, "the child ended before it could be killed"
            time.sleep(0.05)
        child.send_signal(signal.SIGKILL)
        child.wait()
    finally:
        if child.poll() is None:
            child.kill()
    info = catalog_products.get_product(catalog, item.key)
    assert info.committed is None  # never visible as committed
    deadline = time.monotonic() + 30
    while (planned := plan_derive(catalog, "topics", recording="big")[0]).action == "busy":
        assert time.monotonic() < deadline
        time.sleep(0.2)
    assert planned.action == "broken" and "lease expired" in planned.reason
    outcome = derive_one(catalog, planned)
    assert outcome.outcome == "computed" and outcome.rows == 40_000
    states = sorted(a.state for a in catalog_products.get_product(catalog, item.key).attempts)
    assert states == ["committed", "failed"]
    catalog.dispose()
