"""prefect.yaml lists the same deployments as deployments/definitions.py, and every
entrypoint whose flow has landed imports as a Prefect flow."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from deployments.definitions import STANDING, landing_deployment
from deployments.landing import landing_source

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def entries() -> dict[str, dict]:
    document = yaml.safe_load((ROOT / "prefect.yaml").read_text())
    found = {entry["name"]: entry for entry in document["deployments"]}
    assert len(found) == len(document["deployments"]), "deployment names repeat"
    return found


def _limits(entry: dict) -> tuple[int, str]:
    return entry["concurrency_limit"]["limit"], entry["concurrency_limit"]["collision_strategy"]


@pytest.mark.parametrize("spec", STANDING, ids=lambda spec: spec.name)
def test_each_definition_is_listed_alike(entries: dict[str, dict], spec):
    entry = entries[spec.name]
    assert entry["entrypoint"] == spec.entrypoint
    assert _limits(entry) == (spec.concurrency.limit, "CANCEL_NEW" if spec.concurrency.cancel_new else "ENQUEUE")
    assert entry["tags"] == list(spec.tags)
    assert entry.get("parameters", {}) == spec.parameters
    assert [s["interval"] for s in entry.get("schedules", [])] == ([spec.interval.total_seconds()] if spec.interval else [])
    assert entry["enforce_parameter_schema"] is True and entry["work_pool"]["name"] == "ferry-process"
    if spec.on_upload:
        [trigger] = entry["triggers"]
        assert trigger["expect"] == ["ferry.upload.completed"] and trigger["match"] == {"prefect.resource.id": "ferry.transaction.*"}
        assert trigger["parameters"] == spec.on_upload
    else:
        assert "triggers" not in entry


@pytest.mark.parametrize("spec", STANDING, ids=lambda spec: spec.name)
def test_entrypoints_import_as_flows(spec, monkeypatch: pytest.MonkeyPatch):
    from prefect.flows import Flow, load_flow_from_entrypoint

    monkeypatch.chdir(ROOT)  # prefect.yaml's entrypoints are relative to the checkout
    flow = load_flow_from_entrypoint(spec.entrypoint, use_placeholder_flow=False)
    assert isinstance(flow, Flow) and flow.name == spec.flow_name


def test_landing_example_matches_what_serve_registers(entries: dict[str, dict], tmp_path: Path):
    served = landing_deployment(landing_source(tmp_path, every="10m", to="file:///tmp/store"))
    listed = [entry for name, entry in entries.items() if name.startswith("landing-")]
    assert listed, "prefect.yaml shows no landing deployment"
    for entry in listed:
        assert entry["entrypoint"] == served.entrypoint and entry["tags"] == list(served.tags)
        assert _limits(entry) == (1, "CANCEL_NEW") and entry["schedules"]
        assert set(entry["parameters"]) == set(served.parameters)


def test_nothing_listed_that_is_not_defined(entries: dict[str, dict]):
    defined = {spec.name for spec in STANDING}
    assert {name for name in entries if not name.startswith("landing-")} == defined
