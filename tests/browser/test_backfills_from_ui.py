"""An operator's backfills from the Prefect UI in a real browser (issue 17): `ferry serve`
registers its deployments with the session's Prefect server; for `reingest`, `resummarize`
and `derive/backfill` the browser opens the deployment, clicks Run → Custom run, fills the
typed form, submits, follows the toast to the flow run, waits for Completed and opens the
run's report artifact. The runs execute in `ferry serve` against SeaweedFS and a SQLite
catalog, on MCAP recordings with JSON topics; what each report shows is checked against
the catalog and what the server recorded as the run's parameters."""

from __future__ import annotations

from pathlib import Path

import pytest

from storage_core.catalog import Catalog
from storage_core.catalog.products import list_products
from storage_core.catalog.transactions import list_transactions
from tests.support.prefect_ui import PrefectUI
from tests.support.recordings import mcap_with_topics, message_counts
from tests.support.serve import client, registered

# a `ferry serve` subprocess, three flow runs and a browser: about a minute on a quiet machine
pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

RUN_TIMEOUT = 240  # a flow run's subprocess on a busy 2-core machine


def finish(ui: PrefectUI, name: str) -> str:
    """Submit the filled form, follow the toast to the run, wait for its final state."""
    ui.shot(f"{name}-form")
    run_id = ui.submit()
    state = ui.wait_final_state(timeout=RUN_TIMEOUT)
    shot = ui.shot(f"{name}-{state.lower()}")
    assert state == "Completed", f"{name} ended {state} (screenshot {shot})"
    return run_id


def parameters_of(run_id: str) -> dict:
    with client() as c:
        return c.read_flow_run(run_id).parameters


def test_reingest_resummarize_and_derive_backfill_from_custom_run_forms(
    prefect_ui: PrefectUI, ferry_serve, serve_env, tmp_path: Path
) -> None:
    ui = prefect_ui
    recordings = {"r1": mcap_with_topics({"/imu": 300, "/log": 90}, seed=1), "r2": mcap_with_topics({"/gps": 40}, seed=2)}
    landing = tmp_path / "landing"
    for name, data in recordings.items():
        (landing / "dev" / name).mkdir(parents=True)
        (landing / "dev" / name / "log.mcap").write_bytes(data)
    serve = ferry_serve()
    for name in ("ingest/reingest", "summarize/resummarize", "derive/backfill"):
        registered(name, serve)
    catalog = Catalog(serve_env["FERRY_DATABASE_URL"])

    # reingest: the landing folder typed into `source`
    ui.open_deployment("reingest")
    ui.custom_run()
    ui.fill_text("source", str(landing))
    run_id = finish(ui, "reingest")
    assert parameters_of(run_id) == {"source": str(landing), "to": None, "device": None,
                                     "origination": "backfill reingest", "transaction_id": None}
    report = ui.open_artifact("ingest-report")
    ui.shot("reingest-report")
    [row] = report.tables[0]
    [txn] = list_transactions(catalog)
    assert (row["transaction"], row["stored"], row["summaries"], row["summary failures"]) == (txn.id, "2", "2", "0")
    assert txn.status == "completed" and txn.flow_run_id == run_id

    # resummarize: one device, everything again (Only Missing switched off, Force on)
    ui.open_deployment("resummarize")
    ui.custom_run()
    ui.fill_text("Device Id", "dev")
    ui.toggle("Only Missing", False)
    ui.toggle("Force", True)
    run_id = finish(ui, "resummarize")
    params = parameters_of(run_id)["params"]
    assert (params["device_id"], params["only_missing"], params["force"]) == ("dev", False, True)
    report = ui.open_artifact("summarize-report")
    ui.shot("resummarize-report")
    [row] = report.tables[0]
    assert (row["objects"], row["summarized"], row["failed"]) == ("2", "2", "0")

    # derive/backfill: one device, an untracked option typed as JSON, a mode picked
    ui.open_deployment("backfill")
    ui.custom_run()
    ui.fill_text("Device Id", "dev")
    ui.fill_json("Options", {"chunk_rows": "100"})
    ui.choose("Mode", "if_broken")
    run_id = finish(ui, "backfill")
    params = parameters_of(run_id)["params"]
    assert (params["device_id"], params["options"], params["mode"]) == ("dev", {"chunk_rows": "100"}, "if_broken")
    report = ui.open_artifact("derive-report")
    ui.shot("backfill-report")
    assert "2 recording(s), computed 2, reused 0, failed 0" in report.text
    products = list_products(catalog, device_id="dev")
    assert [(r["recording"], r["plan"], r["reason"]) for r in report.tables[0]] == [("r1", "compute", "new"), ("r2", "compute", "new")]
    assert [r["key"] for r in report.tables[0]] == [p.key[:12] for p in products]
    for product in products:
        committed = product.committed
        assert committed is not None and committed.rows == sum(message_counts(recordings[product.recording]).values())
        assert str(committed.settings["chunk_rows"]) == "100"
