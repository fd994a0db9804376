"""Commands that put data in: `ingest`, `transactions list|show|abort|resume`,
`reconcile` and `demo`."""

from __future__ import annotations

import sys
import threading
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich.markup import escape
from rich.table import Table

from ferry.cli.common import (
    JsonOpt,
    VerboseOpt,
    app,
    emit_json,
    err,
    flow_runs_here,
    open_default_catalog,
    out,
    size_text,
    transactions_app,
    use_prefect_api,
)


def _watch_transaction(transaction_id: str, work: Callable[[], Any], *, show: bool) -> Any:
    """Run `work` while a byte progress bar follows the transaction's durable progress."""
    if not show:
        return work()
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn, TransferSpeedColumn

    from storage_core.catalog.transactions import transaction_progress

    catalog = open_default_catalog()
    stop = threading.Event()
    columns = (TextColumn("[bold]uploading"), BarColumn(), DownloadColumn(), TransferSpeedColumn(), TimeRemainingColumn())
    with Progress(*columns, console=err, transient=True) as progress:
        bar = progress.add_task("upload", total=None)

        def poll() -> None:
            while not stop.wait(0.25):
                now = transaction_progress(catalog, transaction_id)
                if now.total_bytes:
                    progress.update(bar, completed=now.stored_bytes, total=now.total_bytes)

        watcher = threading.Thread(target=poll, daemon=True)
        watcher.start()
        try:
            return work()
        finally:
            stop.set()
            watcher.join()


def _print_ingest(report: Any) -> None:
    colour = "yellow" if report.held_back else "green"
    if report.transaction_id is None:
        out.print(f"[{colour}]{report.outcome}[/]: nothing new → {report.destination}\n"
                  f"  all {report.files_skipped} file(s) are stored already, identical; no transaction recorded")
    else:
        out.print(
            f"[{colour}]{report.outcome}[/]: transaction {report.transaction_id} → {report.destination}\n"
            f"  stored {report.files_stored} file(s), {size_text(report.bytes_stored)}"
            f" ({report.parts_sent} part(s) sent, {report.parts_reused} reused);"
            f" skipped {report.files_skipped} already stored; {report.seconds:.1f}s, {report.mb_per_s:.1f} MB/s"
        )
    if report.summaries or report.summary_failures:
        out.print(f"  summarized {report.summaries} MCAP/Parquet file(s), {report.summary_failures} could not be")
    for line in report.summary_errors:
        err.print(f"[yellow]not summarized:[/] {line} (stored all the same; `ferry summarize --missing` retries)")
    for line in report.held_back:
        err.print(f"[yellow]held back:[/] {escape(line)}", highlight=False, soft_wrap=True)
    if report.held_back:
        err.print("the next ingest of this source retries the recordings held back (stored files are skipped)")


def _print_fanout(report: Any) -> None:
    colour = "red" if report.groups_failed else "yellow" if report.held_back else "green"
    out.print(
        f"[{colour}]{report.outcome}[/]: work job {report.job_id}, {report.groups} group(s) in "
        f"{len(report.transactions)} transaction(s) → {report.destination}\n"
        f"  stored {report.files_stored} file(s), {size_text(report.bytes_stored)}"
        f" ({report.parts_sent} part(s) sent, {report.parts_reused} reused);"
        f" skipped {report.files_skipped} already stored; {report.seconds:.1f}s"
    )
    for line in report.held_back:
        err.print(f"[yellow]held back:[/] {escape(line)}", highlight=False, soft_wrap=True)


@app.command()
def ingest(
    source: Annotated[str, typer.Argument(help="Landing folder or bucket prefix (s3://bucket/prefix): DEVICE/RECORDING/files (or RECORDING/files with --device).")],
    to: Annotated[Optional[str], typer.Option("--to", help="Destination URI (file:///dir or s3://bucket/prefix); default FERRY_STORE.")] = None,
    device: Annotated[Optional[str], typer.Option("--device", help="Device id, when SOURCE holds one device's recordings.")] = None,
    fan_out: Annotated[Optional[int], typer.Option("--fan-out", min=1, help="Split the ingest into one transaction per recording group, claimed by N workers (claim loops) from the catalog.")] = None,
    group_size: Annotated[int, typer.Option("--group-size", min=1, help="With --fan-out: recordings per group.")] = 1,
    via: Annotated[Optional[str], typer.Option("--via", help="With --fan-out: run the workers as this deployment (e.g. ingest-items/ingest-items) so a work pool spreads them; default: in this process.")] = None,
    lease: Annotated[float, typer.Option("--lease", min=1, help="With --fan-out: seconds a claim lasts unless renewed (a dead worker's group is taken over after it).")] = 60.0,
    job_id: Annotated[Optional[str], typer.Option("--job-id", help="With --fan-out: name the work job; an existing one is carried on.")] = None,
    as_json: JsonOpt = False,
    verbose: VerboseOpt = False,
) -> None:
    """Upload a landing folder or bucket prefix into object storage, completely or not at all.
    A recording with a bad file is held back (named, exit code 1) while the others are stored.
    With --fan-out N, each recording group is its own transaction and N workers share them."""
    from storage_core.keys import parse_uri

    if to is not None:
        parse_uri(to)  # a bad URI is refused before Prefect starts
    if "://" in source:
        parse_uri(source)
    else:
        source = str(Path(source).expanduser().resolve())
    use_prefect_api()
    from flows.fanout import FanOut
    from flows.ingest import ingest as ingest_flow
    from flows.ingest_fanout import IngestFanoutParams, ingest_fanout

    if fan_out is not None:
        with flow_runs_here(verbose):
            report = ingest_fanout(IngestFanoutParams(
                source=source, to=to, device=device, group_size=group_size, job_id=job_id,
                origination="ferry ingest --fan-out",
                fan_out=FanOut(claimers=fan_out, deployment=via or None, lease_seconds=lease),
            ))
        emit_json(report) if as_json else _print_fanout(report)
    else:
        transaction_id = uuid.uuid4().hex
        with flow_runs_here(verbose):
            report = _watch_transaction(
                transaction_id,
                lambda: ingest_flow(source, to=to, device=device, transaction_id=transaction_id),
                show=not as_json and sys.stderr.isatty(),
            )
        emit_json(report) if as_json else _print_ingest(report)
    if report.held_back:
        raise typer.Exit(1)


def _transactions_table(items: list[Any]) -> Table:
    table = Table("id", "status", "device", "files", "bytes", "created", "error")
    for txn in items:
        stored = txn.count("stored") + txn.count("skipped")
        table.add_row(
            txn.id, txn.status, txn.device_id or "-", f"{stored}/{len(txn.items)}", size_text(txn.total_bytes),
            txn.created_at.strftime("%Y-%m-%d %H:%M:%S"), txn.error or "",
        )
    return table


@transactions_app.command("list")
def transactions_list(
    status: Annotated[Optional[str], typer.Option(help="Only this status: pending, uploading, completed, aborted.")] = None,
    limit: int = 50,
    as_json: JsonOpt = False,
) -> None:
    """Recent upload transactions, newest first."""
    from storage_core.catalog.transactions import list_transactions

    found = list_transactions(open_default_catalog(), status=status, limit=limit)
    emit_json(found) if as_json else out.print(_transactions_table(found))


@transactions_app.command("show")
def transactions_show(transaction_id: str, as_json: JsonOpt = False) -> None:
    """One transaction with its items."""
    from storage_core.catalog.transactions import get_transaction

    txn = get_transaction(open_default_catalog(), transaction_id)
    if as_json:
        emit_json(txn)
        return
    out.print(_transactions_table([txn]))
    table = Table("item", "status", "uri", "bytes", "parts", "upload id", "error")
    for item in txn.items:
        table.add_row(str(item.id), item.status, item.uri, size_text(item.size), str(item.parts_stored), item.upload_id or "", item.error or "")
    out.print(table)


@transactions_app.command("abort")
def transactions_abort(
    transaction_ids: Annotated[list[str], typer.Argument(help="One or more transaction ids.")],
    reason: str = "aborted by operator",
    as_json: JsonOpt = False,
) -> None:
    """Abort transactions: their in-flight multipart uploads are aborted, items released."""
    from storage_core.upload.transactions import abort_transactions

    aborted = abort_transactions(open_default_catalog(), transaction_ids, reason=reason)
    emit_json(aborted) if as_json else out.print(_transactions_table(aborted))


@transactions_app.command("resume")
def transactions_resume(
    transaction_id: str,
    as_json: JsonOpt = False,
    verbose: VerboseOpt = False,
) -> None:
    """Finish an interrupted transaction without resending parts already stored."""
    use_prefect_api()
    from flows.ingest import resume

    with flow_runs_here(verbose):
        report = _watch_transaction(transaction_id, lambda: resume(transaction_id),
                                    show=not as_json and sys.stderr.isatty())
    emit_json(report) if as_json else _print_ingest(report)


@app.command()
def reconcile(
    older_than: Annotated[float, typer.Option("--older-than", help="Minutes a transaction must be idle to count as stale.")] = 60.0,
    action: Annotated[str, typer.Option(help="What to do with stale transactions: abort or resume.")] = "abort",
    as_json: JsonOpt = False,
    verbose: VerboseOpt = False,
) -> None:
    """Resume or abort transactions left by killed processes; abort orphaned multipart uploads."""
    if action not in ("abort", "resume"):
        raise typer.BadParameter("must be 'abort' or 'resume'", param_hint="--action")
    use_prefect_api()
    from flows.reconcile import reconcile as reconcile_flow

    with flow_runs_here(verbose):
        report = reconcile_flow(older_than_minutes=older_than, action=action)
    if as_json:
        emit_json(report)
    else:
        out.print(
            f"resumed {len(report.resumed)}, aborted {len(report.aborted)} stale transaction(s); "
            f"aborted {len(report.orphans_aborted)} orphaned upload(s); {len(report.failed)} failure(s)"
        )
        for line in report.gone:
            err.print(f"[yellow]destination gone:[/] {escape(line)} (nothing of it left to reconcile)",
                      highlight=False, soft_wrap=True)
        for line in report.failed:
            err.print(f"[red]failed:[/] {line}")
    if report.failed:
        raise typer.Exit(1)


@app.command()
def demo(
    as_json: JsonOpt = False,
    verbose: VerboseOpt = False,
) -> None:
    """Generate a small landing folder (3 devices, MCAP + video segments + Parquet) and ingest
    it into the embedded default store (FERRY_STORE, SQLite catalog, the local Prefect server)."""
    import tempfile

    use_prefect_api()
    from ferry.cli.demo_data import make_landing
    from flows.ingest import ingest as ingest_flow
    from storage_core.catalog.queries import list_recordings

    with flow_runs_here(verbose), tempfile.TemporaryDirectory(prefix="ferry-demo-") as tmp:
        landing = make_landing(Path(tmp) / "landing")
        if not as_json:
            out.print(f"generated a landing folder at {landing}; ingesting it…")
        report = ingest_flow(str(landing), origination="ferry demo")
    recordings = list_recordings(open_default_catalog())
    if as_json:
        emit_json({"ingest": report, "recordings": recordings})
        return
    _print_ingest(report)
    table = Table("device", "recording", "files", "bytes", "modalities", title="What the catalog holds")
    for rec in recordings:
        table.add_row(rec.device_id, rec.recording, str(rec.files), size_text(rec.bytes), ", ".join(rec.modalities))
    out.print(table)
    out.print("Run the demo again: identical bytes are skipped. Try `ferry transactions list`.")
