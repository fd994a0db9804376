"""The reconcile flow: nothing stays in flight forever, storage keeps no orphans."""

from __future__ import annotations

from typing import Literal

from prefect import flow
from pydantic import BaseModel

from flows.ingest import resume
from storage_core.errors import FerryError, one_line
from storage_core.upload.device import ORIGINATION as DEVICE_ORIGINATION
from tasks import reconcile as reconcile_tasks
from tasks import upload as upload_tasks


class ReconcileReport(BaseModel):
    resumed: list[str]
    aborted: list[str]
    failed: list[str]
    orphans_aborted: list[str]
    gone: list[str] = []  # destinations whose bucket no longer exists: reported, not a failure


@flow(name="reconcile")
def reconcile(older_than_minutes: float = 60.0, action: Literal["abort", "resume"] = "abort") -> ReconcileReport:
    """Open transactions idle for `older_than_minutes` (their process died) are resumed or
    aborted; multipart uploads that no open transaction records, and older than that, are
    aborted. A stale device upload is always aborted: only the device holds its bytes.
    Stores with nothing in flight are not searched; a store whose bucket was deleted is
    named in `gone`, not counted as a failure."""
    report = ReconcileReport(resumed=[], aborted=[], failed=[], orphans_aborted=[])
    for txn in reconcile_tasks.find_stale(older_than_minutes):
        try:
            if action == "resume" and txn.origination != DEVICE_ORIGINATION:
                resume(txn.id)
                report.resumed.append(txn.id)
            else:
                upload_tasks.abort(txn.id, f"reconcile: idle for more than {older_than_minutes:g} minutes")
                report.aborted.append(txn.id)
        except FerryError as exc:
            report.failed.append(f"{txn.id}: {one_line(exc)}")
    orphans = reconcile_tasks.abort_orphans(older_than_minutes)
    report.orphans_aborted.extend(orphans.aborted)
    report.failed.extend(orphans.failed)
    report.gone.extend(orphans.gone)
    return report


__all__ = ["ReconcileReport", "reconcile"]
