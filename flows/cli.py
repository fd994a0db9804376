"""`ferry`: the command line. Output is for people by default; `--json` prints one JSON
document for scripts. Every failure is one line on stderr and a non-zero exit."""

from __future__ import annotations

import json
import logging
import os
import sys
import threading
import uuid
from collections.abc import Callable
from dataclasses import asdict, is_dataclass
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any, Optional

import click
import typer
from rich.console import Console
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn, TransferSpeedColumn
from rich.table import Table

# The CLI is a process entry point, so it may set defaults for its own environment:
# nothing phones home, and Prefect's files stay under .ferry/ unless the user says otherwise.
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("DO_NOT_TRACK", "1")
if "PREFECT_HOME" not in os.environ:
    _prefect_home = Path.cwd() / ".ferry" / "prefect"
    _prefect_home.mkdir(parents=True, exist_ok=True)  # Prefect creates only the last level
    os.environ["PREFECT_HOME"] = str(_prefect_home)

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Move recorded data reliably and fast, and know what is where.")
transactions_app = typer.Typer(no_args_is_help=True, help="Inspect, abort and resume upload transactions.")
bench_app = typer.Typer(no_args_is_help=True, help="Side-by-side benchmarks against the tools a user would pick instead.")
app.add_typer(transactions_app, name="transactions")
app.add_typer(bench_app, name="bench")

out = Console()
err = Console(stderr=True)
JsonOpt = Annotated[bool, typer.Option("--json", help="Print one JSON document instead of tables.")]


def _plain(value: Any) -> Any:
    if hasattr(value, "model_dump"):
        return value.model_dump(mode="json")
    if is_dataclass(value):
        return _plain(asdict(value))
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, Path):
        return str(value)
    return value


def _emit_json(value: Any) -> None:
    sys.stdout.write(json.dumps(_plain(value), indent=2) + "\n")


def _size(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n} B"


def _quiet_prefect_console(verbose: bool) -> None:
    """Prefect logs flow-run states (with tracebacks) to the console; the CLI prints its
    own one-line outcome, so its console handler is silenced unless asked for."""
    if verbose:
        return
    from prefect.logging.handlers import PrefectConsoleHandler

    for logger in (logging.getLogger(), *(logging.getLogger(n) for n in ("uvicorn", "fastapi", "prefect"))):
        for handler in logger.handlers:
            if isinstance(handler, PrefectConsoleHandler):
                handler.setLevel(logging.CRITICAL + 1)


def _catalog():
    from storage_core.catalog import open_catalog
    from storage_core.config import load_settings

    return open_catalog(load_settings().catalog_url)


def _watch_transaction(transaction_id: str, work: Callable[[], Any], *, show: bool) -> Any:
    """Run `work` while a byte progress bar follows the transaction's durable progress."""
    if not show:
        return work()
    from storage_core.upload.transactions import transaction_progress

    catalog = _catalog()
    stop = threading.Event()
    columns = (TextColumn("[bold]uploading"), BarColumn(), DownloadColumn(), TransferSpeedColumn(), TimeRemainingColumn())
    with Progress(*columns, console=err, transient=True) as progress:
        bar = progress.add_task("upload", total=None)

        def poll() -> None:
            while not stop.wait(0.25):
                done, total = transaction_progress(catalog, transaction_id)
                if total:
                    progress.update(bar, completed=done, total=total)

        watcher = threading.Thread(target=poll, daemon=True)
        watcher.start()
        try:
            return work()
        finally:
            stop.set()
            watcher.join()


def _print_ingest(report: Any) -> None:
    out.print(
        f"[green]{report.status}[/]: transaction {report.transaction_id} → {report.destination}\n"
        f"  stored {report.files_stored} file(s), {_size(report.bytes_stored)}"
        f" ({report.parts_sent} part(s) sent, {report.parts_reused} reused);"
        f" skipped {report.files_skipped} already stored; {report.seconds:.1f}s, {report.mb_per_s:.1f} MB/s"
    )


@app.command()
def ingest(
    source: Annotated[Path, typer.Argument(help="Landing folder: DEVICE/RECORDING/files (or RECORDING/files with --device).")],
    to: Annotated[Optional[str], typer.Option("--to", help="Destination URI (file:///dir or s3://bucket/prefix); default FERRY_STORE.")] = None,
    device: Annotated[Optional[str], typer.Option("--device", help="Device id, when SOURCE holds one device's recordings.")] = None,
    as_json: JsonOpt = False,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Show Prefect's own logs.")] = False,
) -> None:
    """Upload a landing folder into object storage, completely or not at all."""
    from flows.ingest import ingest as ingest_flow
    from storage_core.keys import parse_uri

    if to is not None:
        parse_uri(to)  # a bad URI is refused before Prefect starts
    _quiet_prefect_console(verbose)
    transaction_id = uuid.uuid4().hex
    report = _watch_transaction(
        transaction_id,
        lambda: ingest_flow(str(source.resolve()), to=to, device=device, transaction_id=transaction_id),
        show=not as_json and sys.stderr.isatty(),
    )
    _emit_json(report) if as_json else _print_ingest(report)


def _transactions_table(items: list[Any]) -> Table:
    table = Table("id", "status", "device", "files", "bytes", "created", "error")
    for txn in items:
        stored = txn.count("stored") + txn.count("skipped")
        table.add_row(
            txn.id, txn.status, txn.device_id or "-", f"{stored}/{len(txn.items)}", _size(txn.total_bytes),
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
    from storage_core.upload.transactions import list_transactions

    found = list_transactions(_catalog(), status=status, limit=limit)
    _emit_json(found) if as_json else out.print(_transactions_table(found))


@transactions_app.command("show")
def transactions_show(transaction_id: str, as_json: JsonOpt = False) -> None:
    """One transaction with its items."""
    from storage_core.upload.transactions import get_transaction

    txn = get_transaction(_catalog(), transaction_id)
    if as_json:
        _emit_json(txn)
        return
    out.print(_transactions_table([txn]))
    table = Table("item", "status", "uri", "bytes", "parts", "upload id", "error")
    for item in txn.items:
        table.add_row(str(item.id), item.status, item.uri, _size(item.size), str(item.parts_stored), item.upload_id or "", item.error or "")
    out.print(table)


@transactions_app.command("abort")
def transactions_abort(
    transaction_ids: Annotated[list[str], typer.Argument(help="One or more transaction ids.")],
    reason: str = "aborted by operator",
    as_json: JsonOpt = False,
) -> None:
    """Abort transactions: their in-flight multipart uploads are aborted, items released."""
    from storage_core.upload.transactions import abort_transactions

    aborted = abort_transactions(_catalog(), transaction_ids, reason=reason)
    _emit_json(aborted) if as_json else out.print(_transactions_table(aborted))


@transactions_app.command("resume")
def transactions_resume(
    transaction_id: str,
    as_json: JsonOpt = False,
    verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False,
) -> None:
    """Finish an interrupted transaction without resending parts already stored."""
    from flows.ingest import resume

    _quiet_prefect_console(verbose)
    report = _watch_transaction(transaction_id, lambda: resume(transaction_id), show=not as_json and sys.stderr.isatty())
    _emit_json(report) if as_json else _print_ingest(report)


@app.command()
def reconcile(
    older_than: Annotated[float, typer.Option("--older-than", help="Minutes a transaction must be idle to count as stale.")] = 60.0,
    action: Annotated[str, typer.Option(help="What to do with stale transactions: abort or resume.")] = "abort",
    as_json: JsonOpt = False,
    verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False,
) -> None:
    """Resume or abort transactions left by killed processes; abort orphaned multipart uploads."""
    from flows.reconcile import reconcile as reconcile_flow

    if action not in ("abort", "resume"):
        raise typer.BadParameter("must be 'abort' or 'resume'", param_hint="--action")
    _quiet_prefect_console(verbose)
    report = reconcile_flow(older_than_minutes=older_than, action=action)
    if as_json:
        _emit_json(report)
    else:
        out.print(
            f"resumed {len(report.resumed)}, aborted {len(report.aborted)} stale transaction(s); "
            f"aborted {len(report.orphans_aborted)} orphaned upload(s); {len(report.failed)} failure(s)"
        )
        for line in report.failed:
            err.print(f"[red]failed:[/] {line}")
    if report.failed:
        raise typer.Exit(1)


@app.command()
def demo(
    as_json: JsonOpt = False,
    verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False,
) -> None:
    """Generate a small landing folder (3 devices, MCAP + video segments + Parquet) and ingest
    it into the embedded default store (FERRY_STORE, SQLite catalog, Prefect's ephemeral API)."""
    import tempfile

    from flows.demo_data import make_landing
    from flows.ingest import ingest as ingest_flow
    from storage_core.catalog.queries import list_recordings

    _quiet_prefect_console(verbose)
    with tempfile.TemporaryDirectory(prefix="ferry-demo-") as tmp:
        landing = make_landing(Path(tmp) / "landing")
        if not as_json:
            out.print(f"generated a landing folder at {landing}; ingesting it (Prefect starts a local API on first use)…")
        report = ingest_flow(str(landing), origination="ferry demo")
    recordings = list_recordings(_catalog())
    if as_json:
        _emit_json({"ingest": report, "recordings": recordings})
        return
    _print_ingest(report)
    table = Table("device", "recording", "files", "bytes", "modalities", title="What the catalog holds")
    for rec in recordings:
        table.add_row(rec.device_id, rec.recording, str(rec.files), _size(rec.bytes), ", ".join(rec.modalities))
    out.print(table)
    out.print("Run the demo again: identical bytes are skipped. Try `ferry transactions list`.")


def _bench(name: str, args: list[str]) -> None:
    import importlib

    module = importlib.import_module(f"bench.{name}")
    code = module.main(args)
    if code:
        raise typer.Exit(code)


_PASS_THROUGH = {"allow_extra_args": True, "ignore_unknown_options": True}


@bench_app.command("upload", add_help_option=False, context_settings=_PASS_THROUGH)
def bench_upload(ctx: typer.Context) -> None:
    """Ferry vs boto3 upload_file vs curl (SeaweedFS on loopback), and local store vs cp."""
    _bench("upload", ctx.args)


@bench_app.command("download", add_help_option=False, context_settings=_PASS_THROUGH)
def bench_download(ctx: typer.Context) -> None:
    """Ferry's verified download vs boto3 download_file vs curl, and local store vs cp."""
    _bench("download", ctx.args)


@bench_app.command("summary", add_help_option=False, context_settings=_PASS_THROUGH)
def bench_summary(ctx: typer.Context) -> None:
    """Ferry's range-read MCAP summary vs a full download + mcap vs mcap's SeekingReader."""
    _bench("summary", ctx.args)


def main() -> None:
    """Entry point: map every failure to one line and a non-zero exit."""
    from storage_core.errors import FerryError, one_line

    try:
        app(standalone_mode=False)
    except FerryError as exc:
        err.print(f"[red]error:[/] {one_line(exc)}", highlight=False, soft_wrap=True)
        sys.exit(1)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except click.exceptions.Abort:
        err.print("aborted")
        sys.exit(130)
    except click.ClickException as exc:
        err.print(f"[red]error:[/] {exc.format_message()}", highlight=False, soft_wrap=True)
        sys.exit(exc.exit_code)
    except Exception as exc:  # noqa: BLE001 - the last line of defence against tracebacks
        if os.environ.get("FERRY_DEBUG"):
            raise
        err.print(f"[red]error:[/] unexpected {type(exc).__name__}: {one_line(exc)}", highlight=False, soft_wrap=True)
        sys.exit(1)


if __name__ == "__main__":
    main()
