"""The derive flow and `ferry derive` / `ferry products` on a real store, catalog and Prefect
API: two recordings commit two products, a rerun and an untracked option compute nothing,
pyarrow reads every topic's rows as the mcap library counts them."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.dataset as ds
import pytest

from storage_core.catalog import open_default_catalog
from storage_core.products import dataset_name
from tests.flows.conftest import run_ferry
from tests.support.recordings import mcap_with_topics, message_counts, store_recording


@pytest.mark.slow
def test_derive_backfill_through_the_flow_and_the_cli(ferry_env, bucket, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("FERRY_STORE", f"{bucket.uri}/data")
    monkeypatch.setenv("FERRY_PRODUCTS_CACHE", str(tmp_path / "cache"))
    env = {**ferry_env, "FERRY_STORE": f"{bucket.uri}/data", "FERRY_PRODUCTS_CACHE": str(tmp_path / "cache")}
    catalog = open_default_catalog()
    files = {"r1": mcap_with_topics({"/imu": 300, "/log": 90}, seed=1), "r2": mcap_with_topics({"/gps": 40}, seed=2)}
    for name, data in files.items():
        store_recording(catalog, bucket, f"data/dev/{name}/x.mcap", data, device="dev", recording=name)

    dry = run_ferry(["derive", "topics", "--dry-run", "--json"], env)
    assert dry.returncode == 0, dry.stderr
    assert [(p["recording"], p["action"], p["reason"]) for p in json.loads(dry.stdout)] == [
        ("r1", "compute", "new"), ("r2", "compute", "new")]

    from flows.derive import DeriveParams, derive

    report = derive(DeriveParams(options={"chunk_rows": "100"}))
    assert (report.computed, report.reused, report.failed) == (2, 0, 0)
    again = derive(DeriveParams())
    assert (again.computed, again.reused) == (0, 2)

    lz4 = run_ferry(["derive", "topics", "--set", "compression=lz4", "--json"], env)
    assert lz4.returncode == 0, lz4.stderr
    assert json.loads(lz4.stdout)["computed"] == 0
    undecoded = run_ferry(["derive", "topics", "--set", "decode=false", "--dry-run", "--json"], env)
    assert {(p["action"], p["reason"]) for p in json.loads(undecoded.stdout)} == {("compute", "option")}

    listed = json.loads(run_ferry(["products", "list", "--json"], env).stdout)
    assert [(p["recording"], p["state"]) for p in listed] == [("r1", "committed"), ("r2", "committed")]
    key = listed[0]["key"]
    shown = json.loads(run_ferry(["products", "show", key[:12], "--json"], env).stdout)
    assert shown["rows"] == 390 and all(f["uri"].startswith(bucket.uri) for f in shown["files"])
    got = run_ferry(["products", "get", key[:12], "--to", str(tmp_path / "r1"), "--json"], env)
    assert got.returncode == 0, got.stderr
    for topic, count in message_counts(files["r1"]).items():
        assert ds.dataset(tmp_path / "r1" / dataset_name(topic), format="parquet").count_rows() == count
    bad = run_ferry(["derive", "topics", "--set", "decode=maybe"], env)
    assert bad.returncode == 1 and bad.stderr.startswith("error:") and "Traceback" not in bad.stderr
