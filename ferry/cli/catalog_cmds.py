"""`ferry query` and `ferry download`: what the catalog holds, and restoring it to disk.

Both run in-process through storage_core.retrieve (no Prefect start-up on the way to the
bytes); the `download` flow is the same restore for the Prefect UI and schedules.
"""

from __future__ import annotations

import sys
from datetime import datetime
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table

from ferry.cli.common import JsonOpt, app, emit_json, err, open_default_catalog, out, parse_time, size_text

Device = Annotated[Optional[str], typer.Option("--device", help="Only this device.")]
Recording = Annotated[Optional[str], typer.Option("--recording", help="Only this recording name.")]
Since = Annotated[Optional[str], typer.Option("--since", help="Recordings overlapping this time or later (ISO 8601; UTC if no zone).")]
Until = Annotated[Optional[str], typer.Option("--until", help="Recordings starting before this time (ISO 8601; UTC if no zone).")]
Modality = Annotated[Optional[str], typer.Option("--modality", help="Only this modality: mcap, parquet, video, audio, other.")]
Topic = Annotated[Optional[str], typer.Option("--topic", help="Only recordings with this MCAP topic; a trailing * matches a prefix.")]
Limit = Annotated[Optional[int], typer.Option("--limit", min=1, help="At most this many recordings.")]


def _query(device, recording, since, until, modality, topic, limit):  # noqa: ANN001, ANN202 - the shared filters
    # storage_core.retrieve.query is this call; going straight to the catalog spares
    # `ferry query` importing the download machinery behind retrieve
    from storage_core.catalog.queries import find_recordings

    return find_recordings(open_default_catalog(), device_id=device, recording=recording, since=parse_time(since, "--since"),
                           until=parse_time(until, "--until"), modality=modality, topic=topic, limit=limit)


def _time(value: datetime | None) -> str:
    return value.strftime("%Y-%m-%d %H:%M:%S") if value else "-"


@app.command()
def query(
    device: Device = None,
    recording: Recording = None,
    since: Since = None,
    until: Until = None,
    modality: Modality = None,
    topic: Topic = None,
    limit: Limit = None,
    files: Annotated[bool, typer.Option("--files", help="List every stored object, not one line per recording.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Recordings in the catalog matching every filter given."""
    found = _query(device, recording, since, until, modality, topic, limit)
    if as_json:
        emit_json([r.to_dict() for r in found])
        return
    if files:
        table = Table("uri", "modality", "bytes", "crc32c", "stored")
        for rec in found:
            for obj in rec.objects:
                table.add_row(obj.uri, obj.modality, size_text(obj.size), f"{obj.crc32c:08x}", _time(obj.stored_at))
    else:
        table = Table("device", "recording", "start", "end", "files", "bytes", "modalities")
        for rec in found:
            table.add_row(rec.device_id, rec.recording, _time(rec.started_at), _time(rec.ended_at), str(rec.files),
                          size_text(rec.bytes), ", ".join(rec.modalities))
    out.print(table)
    total = sum(r.bytes for r in found)
    out.print(f"{len(found)} recording(s), {sum(r.files for r in found)} file(s), {size_text(total)}")


@app.command()
def download(
    dest: Annotated[Path, typer.Option("--dest", help="Folder to restore into (created if missing).")],
    device: Device = None,
    recording: Recording = None,
    since: Since = None,
    until: Until = None,
    modality: Modality = None,
    topic: Topic = None,
    limit: Limit = None,
    layout: Annotated[str, typer.Option("--layout", help="by_recording, by_modality or flat.")] = "by_recording",
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace existing files (each once its new copy is verified).")] = False,
    resume: Annotated[bool, typer.Option("--resume", help="Keep files already there with identical bytes; fetch the rest.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Restore the selected recordings to disk: planned first, verified, atomic per file."""
    import time

    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn, TransferSpeedColumn

    from storage_core.retrieve import download as restore

    if layout not in ("by_recording", "by_modality", "flat"):
        raise typer.BadParameter("must be by_recording, by_modality or flat", param_hint="--layout")
    found = _query(device, recording, since, until, modality, topic, limit)
    if not found:
        from storage_core.errors import ConfigError

        raise ConfigError("nothing in the catalog matches these filters; nothing downloaded")
    dest = dest.resolve()
    started = time.monotonic()
    moved = kept = 0
    show = not as_json and sys.stderr.isatty()
    columns = (TextColumn("[bold]downloading"), BarColumn(), DownloadColumn(), TransferSpeedColumn(), TimeRemainingColumn())
    with Progress(*columns, console=err, transient=True, disable=not show) as progress:
        bar = progress.add_task("download", total=None)

        def planned(writes) -> None:  # noqa: ANN001 - the checked plan, before any byte moves
            nonlocal kept
            kept = sum(1 for w in writes if w.present)
            progress.update(bar, total=sum(w.source.size or 0 for w in writes if not w.present))

        def advance(nbytes: int) -> None:
            nonlocal moved
            moved += nbytes
            progress.update(bar, advance=nbytes)

        paths = restore(found, dest, layout=layout, overwrite=overwrite, resume=resume,
                        on_progress=advance, on_plan=planned)
    seconds = time.monotonic() - started
    if as_json:
        emit_json({"dest": str(dest), "files": len(paths), "files_kept": kept, "bytes_fetched": moved,
                   "seconds": round(seconds, 3), "paths": [str(p) for p in paths]})
        return
    speed = moved / 1e6 / seconds if seconds > 0 else 0.0
    out.print(f"[green]restored[/] {len(paths)} file(s) of {len(found)} recording(s) to {dest}: "
              f"fetched {size_text(moved)} in {seconds:.1f}s ({speed:.1f} MB/s)"
              + (f", kept {kept} identical file(s)" if kept else ""))
