"""`ferry summarize`: MCAP and Parquet summaries read through ranges.

With URIs it reads those objects directly (no catalog); without, it runs the summarize
flow over the catalog."""

from __future__ import annotations

from typing import Annotated, Any, Optional

import typer
from rich.table import Table

from ferry.cli.common import (
    JsonOpt,
    VerboseOpt,
    app,
    emit_json,
    err,
    flow_runs_here,
    out,
    parse_time,
    size_text,
    use_prefect_api,
)
from storage_core.errors import ConfigError, FerryError, SummariesFailed

# typer vendors its own click: its BadParameter escapes main()'s click handler and its Exit
# is swallowed (exit 0), so failures here are FerryErrors (one `error:` line, exit 1)




def _ns_text(ns: int | None) -> str:
    if ns is None:
        return "-"
    from storage_core.catalog.summaries import ns_to_datetime

    when = ns_to_datetime(ns)
    return when.isoformat().replace("+00:00", "Z") if when else str(ns)


def _print_mcap(summary: dict[str, Any]) -> None:
    flags = f"source: {summary['source']}" + (", [yellow]truncated[/]" if summary["truncated"] else "")
    start, end = summary.get("start_time"), summary.get("end_time")
    span = f"{_ns_text(start)} → {_ns_text(end)}" + (f" ({(end - start) / 1e9:.3f} s)" if start is not None and end is not None else "")
    out.print(f"  mcap, {summary['message_count']} message(s), {len(summary['topics'])} topic(s); {flags}")
    out.print(f"  time: {span}")
    table = Table("topic", "messages", "schema", "encoding", box=None, padding=(0, 2))
    for topic in summary["topics"]:
        table.add_row(topic["topic"], str(topic["message_count"]), topic["schema_name"] or "-", topic["message_encoding"] or "-")
    out.print(table)


def _print_parquet(summary: dict[str, Any]) -> None:
    out.print(
        f"  parquet, {summary['num_rows']} row(s) in {summary['num_row_groups']} row group(s), "
        f"{summary['num_columns']} column(s)"
    )
    table = Table("column", "type", "nulls", "min", "max", box=None, padding=(0, 2))
    for column in summary["columns"]:
        kind = column["logical_type"] or column["physical_type"]
        nulls = "-" if column["null_count"] is None else str(column["null_count"])
        table.add_row(column["path"], kind, nulls, str(column["min"]), str(column["max"]))
    out.print(table)


def _summarize_uris(uris: list[str], as_json: bool) -> None:
    from storage_core.formats.summarize import summarize_uri

    results = [summarize_uri(uri) for uri in uris]  # the first failure is the one error line
    if as_json:
        emit_json([r.to_dict() for r in results])
        return
    for result in results:
        out.print(f"[bold]{result.uri}[/]")
        (_print_mcap if result.modality == "mcap" else _print_parquet)(result.summary)
        out.print(f"  {result.requests} request(s), {size_text(result.bytes_fetched)} fetched, {result.seconds:.3f}s")


def _params(**values: Any) -> Any:
    from pydantic import ValidationError

    from flows.summarize import SummarizeParams

    try:
        return SummarizeParams(**{k: v for k, v in values.items() if v is not None})
    except ValidationError as exc:
        first = exc.errors()[0]
        raise ConfigError(str(first["msg"]).removeprefix("Value error, ")) from None


@app.command()
def summarize(
    uris: Annotated[
        Optional[list[str]],
        typer.Argument(help="Objects to summarize directly (s3://bucket/key, file:///path): no catalog involved."),
    ] = None,
    device: Annotated[Optional[str], typer.Option("--device", help="Catalog: only this device's objects.")] = None,
    since: Annotated[Optional[str], typer.Option("--since", help="Catalog: recordings overlapping [since, until) (ISO 8601; UTC if no offset).")] = None,
    until: Annotated[Optional[str], typer.Option("--until", help="Catalog: end of the window (exclusive).")] = None,
    transaction: Annotated[Optional[str], typer.Option("--transaction", help="Catalog: only what this transaction stored.")] = None,
    missing: Annotated[bool, typer.Option("--missing", help="Catalog: only objects without a good summary (the default).")] = False,
    force: Annotated[bool, typer.Option("--force", help="Catalog: summarize every matching object again.")] = False,
    as_json: JsonOpt = False,
    verbose: VerboseOpt = False,
) -> None:
    """Summarize MCAP and Parquet objects: topics, schemas, message counts, time range.

    With URIs: read those objects directly (one or two range requests each when the file has a summary), no catalog.

    Without: run the summarize flow over the catalog (--device, --since/--until, --transaction; --missing or --force) and record the summaries there."""
    if uris:
        if device or since or until or transaction or missing or force:
            raise ConfigError("give URIs, or catalog filters (--device/--since/--until/--transaction/--missing/--force), not both")
        _summarize_uris(uris, as_json)
        return
    if missing and force:
        raise ConfigError("--missing and --force are mutually exclusive")
    since_at, until_at = parse_time(since, "--since"), parse_time(until, "--until")
    use_prefect_api()  # before flows.summarize imports Prefect, which reads PREFECT_API_URL once
    params = _params(device_id=device, since=since_at, until=until_at, transaction_id=transaction, force=force or None)
    from flows.summarize import summarize as summarize_flow

    with flow_runs_here(verbose):
        report = summarize_flow(params)
    if as_json:
        emit_json(report)
    else:
        out.print(
            f"summarized {report.summarized}, failed {report.failed}, skipped {report.skipped} "
            f"of {report.objects} object(s); {report.requests} request(s), "
            f"{size_text(report.bytes_fetched)} fetched; {report.seconds:.1f}s"
        )
        for line in report.failures:
            err.print(f"[red]failed:[/] {line}", highlight=False, soft_wrap=True)
    if report.failed:
        raise SummariesFailed(f"{report.failed} of {report.objects} object(s) could not be summarized (see summary_error)")


__all__ = ["SummariesFailed", "summarize"]
