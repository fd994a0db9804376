"""`ferry archive record|verify|recover|cat`: rolling MCAP archives on a device."""

from __future__ import annotations

import base64
import json
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from ferry.cli.common import JsonOpt, app, emit_json, err, out, size_text
from storage_core import units
from storage_core.errors import ConfigError

archive_app = typer.Typer(no_args_is_help=True, help="Rolling MCAP archives: record, verify, recover, read.")
app.add_typer(archive_app, name="archive")

EXIT_LOST = 3  # verify / recover: something was damaged (0: nothing was)


def parse_size(text: str, option: str) -> int:
    try:
        return units.parse_size(text)
    except ValueError as exc:
        raise ConfigError(f"{option}: {exc}") from None


def parse_duration(text: str, option: str) -> float:
    try:
        return units.parse_duration(text)
    except ValueError as exc:
        raise ConfigError(f"{option}: {exc}") from None


def _record_from_line(line: str, number: int, default_topic: str) -> tuple[str, dict[str, str], bytes, int | None]:
    try:
        item = json.loads(line)
    except ValueError as exc:
        raise ConfigError(f"stdin line {number}: not JSON ({exc})") from None
    if not isinstance(item, dict):
        raise ConfigError(f"stdin line {number}: a JSON object is expected")
    topic = item.get("topic", default_topic)
    metadata = item.get("metadata") or {}
    when = item.get("time_ns")
    if not isinstance(topic, str) or not isinstance(metadata, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()
    ) or (when is not None and (not isinstance(when, int) or when < 0)):
        raise ConfigError(f"stdin line {number}: topic must be a string, metadata an object of strings, time_ns an integer")
    if "payload_b64" in item:
        try:
            payload = base64.b64decode(item["payload_b64"], validate=True)
        except (ValueError, TypeError):
            raise ConfigError(f"stdin line {number}: payload_b64 is not base64") from None
    else:
        payload = item.get("payload", "")
        if not isinstance(payload, str):
            payload = json.dumps(payload, separators=(",", ":"))
        payload = payload.encode()
    return topic, metadata, payload, when


@archive_app.command("record")
def archive_record(
    folder: Annotated[Path, typer.Argument(help="Folder of the archives (created if needed).")],
    roll_size: Annotated[Optional[str], typer.Option("--roll-size", help="Roll before an archive passes this size (e.g. 64MiB).")] = None,
    roll_every: Annotated[Optional[str], typer.Option("--roll-every", help="Roll an archive this old (e.g. 10m).")] = None,
    durability: Annotated[str, typer.Option("--durability", help="record (fsync each), group (default) or close.")] = "group",
    group_ms: Annotated[int, typer.Option("--group-ms", min=1, help="group: most milliseconds of records at risk.")] = 100,
    compression: Annotated[str, typer.Option("--compression", help="zstd, lz4 or none.")] = "zstd",
    chunk_size: Annotated[str, typer.Option("--chunk-size", help="Bytes of records per MCAP chunk.")] = "1MiB",
    name: Annotated[str, typer.Option("--name", help="Archive name template: strftime fields (UTC) and {seq}.")] = "%Y%m%dT%H%M%SZ-{seq:06d}",
    topic: Annotated[str, typer.Option("--topic", help="Topic of lines that name none.")] = "/records",
    keep_bytes: Annotated[Optional[str], typer.Option("--keep-bytes", help="Budget of archives not yet uploaded (e.g. 10GiB).")] = None,
    keep_archives: Annotated[Optional[int], typer.Option("--keep-archives", min=1, help="Budget of archives not yet uploaded, in archives.")] = None,
    when_full: Annotated[str, typer.Option("--when-full", help="Over budget: block (wait for the hand-off) or refuse (exit 1).")] = "block",
    as_json: JsonOpt = False,
) -> None:
    """Record JSON lines from stdin into rolling MCAP archives in FOLDER.

    Each line: {"topic": "/t", "metadata": {"k": "v"}, "payload": "...", "time_ns": 123}
    (topic and time optional; "payload_b64" for binary payloads). Open archives of an
    earlier crash are recovered first."""
    from storage_core.device.archive import ArchiveWriter

    writer = ArchiveWriter(
        folder,
        roll_size=parse_size(roll_size, "--roll-size") if roll_size else None,
        roll_every=parse_duration(roll_every, "--roll-every") if roll_every else None,
        durability=durability, group_ms=group_ms, compression=compression,
        chunk_size=parse_size(chunk_size, "--chunk-size"), name_template=name,
        keep_bytes=parse_size(keep_bytes, "--keep-bytes") if keep_bytes else None, keep_archives=keep_archives,
        when_full=when_full,
    )
    for recovered in writer.recovered:
        for lost in recovered.possibly_lost:
            err.print(f"recovered {recovered.output}: sequences {lost.text()} in a crash", highlight=False, soft_wrap=True)
    try:
        for number, line in enumerate(sys.stdin, start=1):
            if not line.strip():
                continue
            line_topic, metadata, payload, when = _record_from_line(line, number, topic)
            writer.write(payload, topic=line_topic, metadata=metadata, log_time=when)
    finally:
        report = writer.close()
    if as_json:
        emit_json({"folder": str(folder), **vars(report)})
        return
    out.print(f"{report.records} record(s) into {report.archives} archive(s) in {folder}", highlight=False, soft_wrap=True)


def _range_json(d) -> dict:
    return {"start": d.start, "end": d.end, "reason": d.reason, "lost_from": d.lost_from, "lost_to": d.lost_to, "lost": d.lost}


def _lost_json(lost) -> dict:
    return {"first": lost.first, "last": lost.last, "count": lost.count}


def _lost_text(d) -> str:
    if d.lost_from is None and d.lost_to is None:
        return "sequences lost: unknown"
    if d.lost_to is None:
        return f"sequences lost: {d.lost_from} onwards (how many unknown)"
    if d.lost_from is None:
        return f"sequences lost: up to {d.lost_to}"
    return f"sequences lost: {d.lost_from}..{d.lost_to} ({d.lost})" if d.lost else "no sequence lost"


@archive_app.command("verify")
def archive_verify(
    paths: Annotated[list[str], typer.Argument(help="Archives, folders or glob patterns.")],
    as_json: JsonOpt = False,
) -> None:
    """Check every chunk of each archive: records, sequence and time ranges, every damaged
    byte range with the sequences lost, and the sequences possibly lost in a crash (named
    by recovery, or skipped between two consecutive archives). Exits 3 when anything is
    damaged or possibly lost."""
    from storage_core.device.archive import archive_paths, scan_archive, sequence_gaps

    scans = [scan_archive(p) for p in archive_paths(paths)]
    gaps = sequence_gaps(scans)
    if as_json:
        emit_json([
            {"path": str(s.path), "size": s.size, "closed": s.closed, "intact": s.intact, "records": s.records,
             "archive_sequence": s.archive_sequence, "first_sequence": s.first_sequence, "last_sequence": s.last_sequence,
             "start_time_ns": s.start_time, "end_time_ns": s.end_time, "topics": s.topics,
             "damaged": [_range_json(d) for d in s.damaged], "problems": s.problems,
             "possibly_lost": [_lost_json(lost) for lost in [*s.possibly_lost, *gaps.get(s.path, [])]]}
            for s in scans
        ])
    else:
        for s in scans:
            state = ("ok" if s.intact else "DAMAGED") + ("" if s.closed else ", open (no footer)")
            seqs = f"sequences {s.first_sequence}..{s.last_sequence}" if s.records else "no records"
            out.print(f"{s.path}: {state}: {s.records} record(s), {seqs}, {size_text(s.size)}", highlight=False, soft_wrap=True)
            for d in s.damaged:
                out.print(f"  damaged bytes [{d.start}, {d.end}): {d.reason}; {_lost_text(d)}", highlight=False, soft_wrap=True)
            for problem in s.problems:
                out.print(f"  {problem}", highlight=False, soft_wrap=True)
            for lost in s.possibly_lost:
                out.print(f"  sequences {lost.text()} in a crash, after this archive", highlight=False, soft_wrap=True)
            for lost in gaps.get(s.path, []):
                out.print(f"  sequences {lost.text()} in a crash, before this archive", highlight=False, soft_wrap=True)
    if any(not s.intact or s.possibly_lost for s in scans) or gaps:
        raise typer.Exit(EXIT_LOST)


@archive_app.command("recover")
def archive_recover(
    path: Annotated[Path, typer.Argument(help="A damaged, cut or unfinished archive.")],
    to: Annotated[Path, typer.Option("--to", help="Where to write the valid archive (must not exist).")],
    as_json: JsonOpt = False,
) -> None:
    """Write every intact record of PATH into a valid MCAP at --to, resynchronising past
    damaged bytes. Exits 3 when anything was lost, 0 when nothing was."""
    from storage_core.device.archive import recover_file

    report = recover_file(path, to)
    if as_json:
        emit_json({"source": str(report.source), "output": str(report.output) if report.output else None,
                   "records": report.records, "first_sequence": report.first_sequence, "last_sequence": report.last_sequence,
                   "closed": report.closed, "lost": report.lost, "damaged": [_range_json(d) for d in report.damaged],
                   "problems": report.problems, "possibly_lost": [_lost_json(lost) for lost in report.possibly_lost]})
    else:
        out.print(f"{report.records} record(s) into {report.output}", highlight=False, soft_wrap=True)
        for d in report.damaged:
            out.print(f"  damaged bytes [{d.start}, {d.end}): {d.reason}; {_lost_text(d)}", highlight=False, soft_wrap=True)
        for problem in report.problems:
            out.print(f"  {problem}", highlight=False, soft_wrap=True)
        for lost in report.possibly_lost:
            out.print(f"  sequences {lost.text()} in an earlier crash (kept in the output)", highlight=False, soft_wrap=True)
    if report.lost:
        err.print(f"lost: {len(report.damaged)} damaged range(s) in {path}", highlight=False, soft_wrap=True)
        raise typer.Exit(EXIT_LOST)


@archive_app.command("cat")
def archive_cat(
    paths: Annotated[list[str], typer.Argument(help="Archives, folders or glob patterns (quote them).")],
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per record (JSON lines).")] = False,
) -> None:
    """Print the records of the archives in sequence order (open ones up to their last intact record)."""
    from storage_core.device.archive import read_archives

    write = sys.stdout.write
    for record in read_archives(paths):
        if as_json:
            try:
                payload = {"payload": record.payload.decode()}
            except UnicodeDecodeError:
                payload = {"payload_b64": base64.b64encode(record.payload).decode()}
            write(json.dumps({"sequence": record.sequence, "topic": record.topic, "time_ns": record.log_time,
                              "metadata": record.metadata, **payload, "archive": record.archive}) + "\n")
        else:
            text = record.payload.decode(errors="replace")
            write(f"{record.sequence}\t{record.topic}\t{record.log_time}\t{json.dumps(record.metadata)}\t{text}\n")
