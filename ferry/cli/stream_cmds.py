"""`ferry stream append|list|show|read|compact`: telemetry streams. A device appends through the
gateway; an operator lists, shows and reads streams from the catalog and the store."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated, BinaryIO, Optional

import typer
from rich.table import Table

from ferry.cli.common import JsonOpt, app, emit_json, open_default_catalog, out, parse_time, size_text
from storage_core.device.frame import encode_blocks
from storage_core.errors import ConfigError

stream_app = typer.Typer(no_args_is_help=True, help="Telemetry streams: append through the gateway, list, show, read, compact.")
app.add_typer(stream_app, name="stream")

FORMATS = ("arrow", "parquet", "csv", "framed")


@stream_app.command("append")
def append_cmd(
    stream: Annotated[str, typer.Argument(help="The device's stream name (one segment, e.g. state).")],
    files: Annotated[list[Path], typer.Argument(help="Parquet, Arrow IPC or CSV files, appended in order.")],
    gateway_url: Annotated[str, typer.Option("--gateway", help="Gateway base URL, e.g. http://127.0.0.1:8470.")],
    token: Annotated[Optional[str], typer.Option("--token", help="Device token (default: $FERRY_DEVICE_TOKEN).")] = None,
    batch_rows: Annotated[int, typer.Option("--batch-rows", min=1, help="Rows per append.")] = 5_000,
    compression: Annotated[str, typer.Option("--compression", help="zstd, lz4 or none.")] = "zstd",
    state: Annotated[Optional[Path], typer.Option("--state", help="Position file (default ./.ferry-stream-STREAM.json).")] = None,
    inflight: Annotated[int, typer.Option("--inflight", min=1, help="Appends in flight at most (the gateway commits those waiting as one group).")] = 128,
    per_request: Annotated[int, typer.Option("--per-request", min=1, help="Appends sent in one request at most.")] = 16,
    as_json: JsonOpt = False,
) -> None:
    """Append files to a stream, exactly once; rerun after a failure to send only the rest."""
    from storage_core.device.stream import stream_append

    token = token or os.environ.get("FERRY_DEVICE_TOKEN")
    if not token:
        raise ConfigError("no device token: pass --token or set FERRY_DEVICE_TOKEN")
    report = stream_append([str(f) for f in files], stream=stream, gateway=gateway_url, token=token,
                           batch_rows=batch_rows, compression=compression, state_file=state, inflight=inflight,
                           per_request=per_request)
    if as_json:
        emit_json(report)
        return
    out.print(f"{report.stream}: committed end {report.committed_end} (epoch {report.epoch}); this run committed "
              f"{report.batches_sent} append(s), {report.rows_sent} rows, {size_text(report.bytes_sent)}"
              + (f"; {report.duplicates} already committed" if report.duplicates else ""), highlight=False)


def _info_json(info) -> dict:  # noqa: ANN001
    return {"stream": info.id, "device_id": info.device_id, "name": info.name, "rows": info.committed_end,
            "committed_end": info.committed_end, "epoch": info.epoch, "table_uri": info.table_uri,
            "table_format": info.table_format, "table_version": info.table_version,
            "updated_at": info.updated_at.isoformat()}


def _find(stream: str):  # noqa: ANN202
    from storage_core.catalog.streams import get_stream

    info = get_stream(open_default_catalog(), stream)
    if info is None:
        raise ConfigError(f"no stream {stream!r} (streams are named DEVICE/NAME; see `ferry stream list`)")
    return info


@stream_app.command("list")
def list_cmd(
    device: Annotated[Optional[str], typer.Option("--device", help="Only this device's streams.")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Every stream: rows committed, epoch, table location."""
    from storage_core.catalog.streams import list_streams

    infos = list_streams(open_default_catalog(), device_id=device)
    if as_json:
        emit_json([_info_json(i) for i in infos])
        return
    table = Table("stream", "rows", "epoch", "format", "table")
    for i in infos:
        table.add_row(i.id, str(i.committed_end), str(i.epoch), i.table_format, i.table_uri)
    out.print(table)


@stream_app.command("show")
def show_cmd(stream: Annotated[str, typer.Argument(help="DEVICE/NAME")], as_json: JsonOpt = False) -> None:
    """One stream: rows committed (its committed end), epoch, table URI and format."""
    info = _info_json(_find(stream))
    if as_json:
        emit_json(info)
        return
    for key, value in info.items():
        out.print(f"{key}: {value}", highlight=False)


@stream_app.command("compact")
def compact_cmd(stream: Annotated[str, typer.Argument(help="DEVICE/NAME")], as_json: JsonOpt = False) -> None:
    """Rewrite a stream's small per-append files into few large ones (Delta OPTIMIZE + checkpoint)."""
    from storage_core.streams.commit import compact_stream

    metrics = compact_stream(open_default_catalog(), stream)
    if as_json:
        emit_json({"stream": stream, **{k: v for k, v in metrics.items() if isinstance(v, (int, float, str))}})
        return
    out.print(f"{stream}: {metrics.get('numFilesRemoved', 0)} files rewritten into {metrics.get('numFilesAdded', 0)}",
              highlight=False)


def _write(schema, batches, fmt: str, sink: BinaryIO) -> int:  # noqa: ANN001
    """Write batches to `sink` in `fmt`, one batch in memory at a time; returns the rows."""
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    from storage_core.streams.read import ipc_chunks

    rows = 0

    def counted():  # noqa: ANN202
        nonlocal rows
        for batch in batches:
            rows += batch.num_rows
            yield batch

    if fmt in ("arrow", "framed"):
        chunks = ipc_chunks(schema, counted())
        for chunk in encode_blocks(chunks) if fmt == "framed" else chunks:
            sink.write(chunk)
    elif fmt == "parquet":
        with pq.ParquetWriter(sink, schema, compression="zstd") as writer:
            for batch in counted():
                writer.write_batch(batch)
    else:
        with pacsv.CSVWriter(sink, schema) as writer:
            for batch in counted():
                writer.write_batch(batch)
    return rows


@stream_app.command("read")
def read_cmd(
    stream: Annotated[str, typer.Argument(help="DEVICE/NAME")],
    fmt: Annotated[str, typer.Option("--format", help="arrow (IPC stream, zstd), parquet, csv, or framed (arrow in CRC32C blocks).")] = "arrow",
    out_path: Annotated[str, typer.Option("--out", help="File to write, or - for stdout.")] = "-",
    columns: Annotated[Optional[str], typer.Option("--columns", help="Comma-separated columns (default all).")] = None,
    since: Annotated[Optional[str], typer.Option("--since", help="Rows with time at or after this ISO time.")] = None,
    until: Annotated[Optional[str], typer.Option("--until", help="Rows with time before this ISO time.")] = None,
    time_column: Annotated[str, typer.Option("--time-column", help="The column --since/--until filter on.")] = "time",
    cache: Annotated[str, typer.Option("--cache", help="adaptive (cache a file on local disk when the read takes most of "
                                       "its bytes), always, or never (range requests only).")] = "adaptive",
    as_json: JsonOpt = False,
) -> None:
    """Stream the committed rows out, batch by batch (never the whole table in memory)."""
    from storage_core.config import load_settings
    from storage_core.formats.parquet_batches import CachePolicy
    from storage_core.ranges.cache import DiskCache
    from storage_core.streams.read import read_batches
    from storage_core.streams.table import location_of

    if fmt not in FORMATS:
        raise ConfigError(f"--format must be one of {', '.join(FORMATS)} (got {fmt!r})")
    policies = [p.value for p in CachePolicy]
    if cache not in policies:
        raise ConfigError(f"--cache must be one of {', '.join(policies)} (got {cache!r})")
    settings = load_settings()
    info = _find(stream)
    schema, batches = read_batches(
        location_of(info.table_uri, settings=settings), columns=[c.strip() for c in columns.split(",")] if columns else None,
        since=parse_time(since, "--since"), until=parse_time(until, "--until"), time_column=time_column,
        policy=CachePolicy(cache), cache=DiskCache(settings.home / "cache", max_bytes=settings.cache_max_bytes),
    )
    if out_path == "-":
        rows = _write(schema, batches, fmt, sys.stdout.buffer)
        sys.stdout.buffer.flush()
    else:
        final = Path(out_path)
        part = final.with_name(final.name + ".part")
        with open(part, "wb") as sink:
            rows = _write(schema, batches, fmt, sink)
            sink.flush()
            os.fsync(sink.fileno())
        os.replace(part, final)
    if as_json and out_path != "-":
        emit_json({"stream": info.id, "rows": rows, "format": fmt, "out": out_path})
