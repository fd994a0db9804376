"""Derive tasks: plan, then one coarse task per recording. They pass names and keys, never bytes."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from prefect import task
from pydantic import BaseModel

from storage_core.catalog import open_default_catalog
from storage_core.config import load_settings
from storage_core.products import derive_one, plan_derive
from tasks.retry import RETRY_POLICY


class PlannedRow(BaseModel):
    device_id: str
    recording: str
    key: str
    action: str  # compute | reuse | broken | busy
    reason: str


class DerivedRow(BaseModel):
    device_id: str
    recording: str
    key: str
    outcome: str  # computed | reused
    reason: str
    files: int = 0
    rows: int = 0
    bytes: int = 0
    input_bytes: int = 0


@task(name="plan-derive")
def plan(product: str, *, device_id: str | None, recording: str | None, since: datetime | None,
         until: datetime | None, options: dict[str, Any], mode: str) -> list[PlannedRow]:
    items = plan_derive(open_default_catalog(), product, device_id=device_id, recording=recording, since=since,
                        until=until, options=options, mode=mode)
    return [PlannedRow(**item.to_dict()) for item in items]


@task(name="derive-recording", **RETRY_POLICY)
def derive_recording(product: str, device_id: str, recording: str, *, options: dict[str, Any], mode: str) -> DerivedRow:
    """Plan this one recording again (a retry, or another run, may have committed it
    meanwhile) and compute it when the plan says so."""
    catalog = open_default_catalog()
    [item] = plan_derive(catalog, product, device_id=device_id, recording=recording, options=options, mode=mode)
    outcome = derive_one(catalog, item, options=options, mode=mode, settings=load_settings())
    return DerivedRow(device_id=device_id, recording=recording, key=outcome.key, outcome=outcome.outcome,
                      reason=outcome.reason, files=outcome.files, rows=outcome.rows, bytes=outcome.bytes,
                      input_bytes=outcome.input_bytes)


__all__ = ["DerivedRow", "PlannedRow", "derive_recording", "plan"]
