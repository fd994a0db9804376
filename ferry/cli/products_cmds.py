"""`ferry derive` and `ferry products`: derived data keyed by lineage (storage_core/products).

`derive --dry-run` and every `products` command read the catalog and store directly; a
real derive runs the derive flow (one task per recording) like `ferry summarize`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
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
    parse_time,
    size_text,
    use_prefect_api,
)
from storage_core.errors import ConfigError, ProductError

products_app = typer.Typer(no_args_is_help=True, help="Derived products: list, show, get, rechunk, gc.")
app.add_typer(products_app, name="products")


def _options(values: list[str] | None) -> dict[str, str]:
    options = {}
    for value in values or ():
        name, sep, text = value.partition("=")
        if not sep or not name.strip():
            raise ConfigError(f"--set {value!r}: write NAME=VALUE")
        options[name.strip()] = text.strip()
    return options


@app.command()
def derive(
    product: Annotated[str, typer.Argument(help="The product: topics (MCAP → one Parquet dataset per topic).")],
    device: Annotated[Optional[str], typer.Option("--device", help="Only this device's recordings.")] = None,
    recording: Annotated[Optional[str], typer.Option("--recording", help="Only recordings of this name.")] = None,
    since: Annotated[Optional[str], typer.Option("--since", help="Recordings overlapping [since, until) (ISO 8601).")] = None,
    until: Annotated[Optional[str], typer.Option("--until", help="End of the window (exclusive).")] = None,
    sets: Annotated[Optional[list[str]], typer.Option("--set", help="An option NAME=VALUE (decode, compression, chunk_rows).")] = None,
    mode: Annotated[str, typer.Option("--mode", help="reuse | if_broken | force")] = "reuse",
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Only list what would be computed, reused or repaired, and why.")] = False,
    as_json: JsonOpt = False,
    verbose: VerboseOpt = False,
) -> None:
    """Derive PRODUCT for the matching recordings: only what changed (code, options, inputs) is computed."""
    since_at, until_at = parse_time(since, "--since"), parse_time(until, "--until")
    options = _options(sets)
    if dry_run:
        from storage_core.products import plan_derive

        plan = plan_derive(open_default_catalog(), product, device_id=device, recording=recording, since=since_at,
                           until=until_at, options=options, mode=mode)
        if as_json:
            emit_json([p.to_dict() for p in plan])
            return
        table = Table("device", "recording", "key", "plan", "reason", box=None, padding=(0, 2))
        for p in plan:
            table.add_row(p.device_id, p.recording, p.key[:12], p.action, p.reason)
        out.print(table)
        out.print(f"{sum(p.action != 'reuse' for p in plan)} to compute, {sum(p.action == 'reuse' for p in plan)} to reuse")
        return
    use_prefect_api()
    from pydantic import ValidationError

    from flows.derive import DeriveParams
    from flows.derive import derive as derive_flow

    try:
        params = DeriveParams(product=product, device_id=device, recording=recording, since=since_at, until=until_at,
                              options=options, mode=mode)
    except ValidationError as exc:
        first = exc.errors()[0]
        raise ConfigError(f"{'.'.join(map(str, first['loc']))}: {str(first['msg']).removeprefix('Value error, ')}") from None
    with flow_runs_here(verbose):
        report = derive_flow(params)
    if as_json:
        emit_json(report)
    else:
        out.print(f"{product}: computed {report.computed}, reused {report.reused}, failed {report.failed} of "
                  f"{report.recordings} recording(s); {report.rows} rows, {size_text(report.bytes_written)} written; "
                  f"{report.seconds:.1f}s")
        for line in report.failures:
            err.print(f"[red]failed:[/] {line}", highlight=False, soft_wrap=True)
    if report.failed:
        raise ProductError(f"{report.failed} of {report.recordings} recording(s) could not be derived")


def _product_dict(info) -> dict:  # noqa: ANN001
    committed = info.committed
    return {
        "key": info.key, "product": info.product, "device_id": info.device_id, "recording": info.recording,
        "state": "committed" if committed else (info.attempts[0].state if info.attempts else "new"),
        "lineage": info.lineage, "committed_attempt": committed.id if committed else None,
        "rows": committed.rows if committed else None, "bytes": committed.bytes if committed else None,
        "attempts": [{"id": a.id, "state": a.state, "started_at": a.started_at, "ended_at": a.ended_at,
                      "error": a.error, "owner": a.owner, "settings": a.settings} for a in info.attempts],
    }


@products_app.command("list")
def list_products(
    product: Annotated[Optional[str], typer.Option("--product", help="Only this product.")] = None,
    device: Annotated[Optional[str], typer.Option("--device", help="Only this device's.")] = None,
    recording: Annotated[Optional[str], typer.Option("--recording", help="Only this recording's.")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Products in the catalog: key, recording, state, rows."""
    from storage_core.catalog.products import list_products as catalog_list

    rows = [_product_dict(i) for i in catalog_list(open_default_catalog(), product=product, device_id=device, recording=recording)]
    if as_json:
        emit_json(rows)
        return
    table = Table("key", "product", "device", "recording", "state", "rows", "size", box=None, padding=(0, 2))
    for r in rows:
        table.add_row(r["key"][:12], r["product"], r["device_id"] or "-", r["recording"] or "-", r["state"],
                      str(r["rows"] if r["rows"] is not None else "-"), size_text(r["bytes"]) if r["bytes"] else "-")
    out.print(table)


@products_app.command("show")
def show(key: Annotated[str, typer.Argument(help="A product key or its prefix (≥ 6 hex digits).")], as_json: JsonOpt = False) -> None:
    """One product: state, lineage, and its committed files with URIs and rows."""
    from storage_core.catalog.products import get_product
    from storage_core.keys import join_key
    from storage_core.products import read_manifest
    from storage_core.stores.registry import open_store

    info = get_product(open_default_catalog(), key)
    value = _product_dict(info)
    committed = info.committed
    if committed is not None:
        store, _ = open_store(committed.store_uri)
        manifest = read_manifest(store, committed.prefix)
        value["files"] = [{"uri": f"{committed.store_uri}/{join_key(committed.prefix, f.path)}", "dataset": f.dataset,
                           "rows": f.rows, "size": f.size, "crc32c": f"{f.crc32c:08x}"} for f in manifest.files]
        value["writing_ended"] = manifest.writing_ended
    if as_json:
        emit_json(value)
        return
    out.print(f"[bold]{info.key}[/] {info.product} {info.device_id}/{info.recording}: {value['state']}")
    lineage = info.lineage
    out.print(f"  code {lineage['code_version']} ({lineage['code_fingerprint'][:12]}), options {lineage['options']}")
    for i in lineage["inputs"]:
        out.print(f"  input {i.get('uri') or i.get('product_key')} ({i.get('size')} B, crc32c {i.get('crc32c', 0):08x})")
    table = Table("dataset", "rows", "size", "uri", box=None, padding=(0, 2))
    for f in value.get("files", []):
        table.add_row(f["dataset"], str(f["rows"]), size_text(f["size"]), f["uri"])
    out.print(table)


@products_app.command("get")
def get(
    key: Annotated[str, typer.Argument(help="A product key or its prefix.")],
    to: Annotated[Path, typer.Option("--to", help="Folder to write the product's datasets into.")],
    as_json: JsonOpt = False,
) -> None:
    """Write a product's files to a folder from the nearest verified copy (cache, then store)."""
    from storage_core.products import get_product

    result = get_product(open_default_catalog(), key, to)
    if as_json:
        emit_json(result)
    else:
        out.print(f"{result.key[:12]}: {result.files} file(s), {result.rows} rows, {size_text(result.bytes)} "
                  f"from {result.source} → {result.to}")


@products_app.command("rechunk")
def rechunk(
    key: Annotated[str, typer.Argument(help="A product key or its prefix.")],
    chunk_rows: Annotated[int, typer.Option("--chunk-rows", help="Rows per file, at most.")],
    as_json: JsonOpt = False,
) -> None:
    """Rewrite a product's files with another chunk size: same key, same rows."""
    from storage_core.products import rechunk_product

    result = rechunk_product(open_default_catalog(), key, chunk_rows=chunk_rows)
    if as_json:
        emit_json(result)
    else:
        out.print(f"{result.key[:12]}: {result.files_before} → {result.files} file(s), {result.rows} rows (attempt {result.attempt})")


@products_app.command("gc")
def gc(
    older_than: Annotated[str, typer.Option("--older-than", help="Grace period, e.g. 12h, 30m.")] = "24h",
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Only list what would be deleted.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Delete attempts that never committed or were superseded, and products no recording reaches."""
    from storage_core.products import collect_garbage
    from storage_core.units import parse_duration

    from datetime import timedelta

    try:
        grace = timedelta(seconds=parse_duration(older_than))
    except ValueError as exc:
        raise ConfigError(f"--older-than: {exc}") from None
    report = collect_garbage(open_default_catalog(), older_than=grace, dry_run=dry_run)
    if as_json:
        emit_json(report)
    else:
        verb = "would delete" if dry_run else "deleted"
        out.print(f"{verb} {len(report.attempts)} attempt(s) and {len(report.products)} product(s); "
                  f"{report.objects_deleted} object(s) removed")


__all__ = ["derive", "products_app"]
