"""`ferry jobs show`: a fanned-out job's items in the catalog (who claimed what, how often,
what failed). Answers from the catalog alone: no Prefect on the way."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from ferry.cli.common import JsonOpt, app, emit_json, open_default_catalog, out, plain

jobs_app = typer.Typer(no_args_is_help=True, help="Inspect work jobs that several workers share (fan-out).")
app.add_typer(jobs_app, name="jobs")


@jobs_app.command("show")
def jobs_show(
    job_id: Annotated[str, typer.Argument(help="The work job's id (in a fan-out's report).")],
    as_json: JsonOpt = False,
) -> None:
    """A work job's counts and items: status, attempts, who holds or held each, its error."""
    from storage_core.catalog.work import get_job, job_status, list_items
    from storage_core.errors import ConfigError

    catalog = open_default_catalog()
    job = get_job(catalog, job_id)
    if job is None:
        raise ConfigError(f"no work job {job_id!r}")
    status, items = job_status(catalog, job_id), list_items(catalog, job_id)
    if as_json:
        emit_json({"job": job, "status": {**plain(status), "total": status.total, "finished": status.finished},
                   "items": items})
        return
    out.print(f"{job.kind} job {job.id}: {status.done} done, {status.failed} failed, {status.pending} pending, "
              f"{status.claimed} claimed (of {status.total})")
    table = Table("item", "status", "attempts", "worker", "lease until", "error")
    for item in items:
        until = item.lease_until.strftime("%H:%M:%S") if item.lease_until else "-"
        table.add_row(str(item.number), item.status, str(item.attempts), item.claimed_by or "-", until,
                      escape(item.error or ""))
    out.print(table)
