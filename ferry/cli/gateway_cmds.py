"""`ferry gateway`, `ferry devices add|revoke|list` and `ferry device-upload`: event-driven uploads from devices."""

from __future__ import annotations

import gc
import os
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table

from ferry.cli.common import JsonOpt, app, emit_json, err, open_default_catalog, out, size_text
from storage_core.errors import ConfigError

GATEWAY_SWITCH_INTERVAL = 0.001  # seconds (Python's default: 0.005)
GATEWAY_GC_THRESHOLDS = (700, 10, 100)  # Python's default: (700, 10, 10)
devices_app = typer.Typer(no_args_is_help=True, help="Device tokens for the gateway: add, revoke, list.")
app.add_typer(devices_app, name="devices")


@app.command()
def gateway(
    host: Annotated[str, typer.Option("--host", help="Address to bind (loopback unless you mean it).")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", help="Port to listen on.")] = 8470,
    expires_in: Annotated[Optional[int], typer.Option("--url-expiry", help="Seconds a presigned URL stays valid (default and most: FERRY_URL_EXPIRY, 900).")] = None,
    url_window: Annotated[Optional[int], typer.Option("--url-window", min=1, help="Single-file URLs one answer carries at most (default: FERRY_URL_WINDOW, 1000).")] = None,
    max_files: Annotated[int, typer.Option("--max-files", help="Most files one manifest may list.")] = 10_000,
    max_bytes: Annotated[Optional[int], typer.Option("--max-bytes", help="Most bytes one manifest may declare.")] = None,
    max_file_bytes: Annotated[Optional[int], typer.Option("--max-file-bytes", help="Largest file a device may send.")] = None,
    flush_interval: Annotated[float, typer.Option("--flush-interval", help="Seconds between retries of unemitted events.")] = 30,
    forwarded_allow_ips: Annotated[Optional[str], typer.Option(
        "--forwarded-allow-ips", help="Comma-separated addresses of proxies whose X-Forwarded-For names the device's "
        "address (default: FORWARDED_ALLOW_IPS, else none: a device is the address that connects).")] = None,
) -> None:
    """Serve the device gateway: devices upload through presigned URLs into FERRY_STORE."""
    import uvicorn

    from ferry.gateway.app import create_app
    from storage_core.config import load_settings
    from storage_core.errors import Unsupported
    from storage_core.keys import parse_uri
    from storage_core.upload.device import UploadLimits, require_presign

    settings = load_settings()
    destination = parse_uri(settings.store_uri)
    try:
        require_presign(destination, settings)
    except Unsupported:
        raise ConfigError(
            f"the gateway needs a store that can presign URLs (s3://...); FERRY_STORE is {settings.store_uri}"
        ) from None
    limits = UploadLimits(max_files=max_files)
    if max_bytes is not None:
        limits = UploadLimits(**{**limits.__dict__, "max_total_bytes": max_bytes})
    if max_file_bytes is not None:
        limits = UploadLimits(**{**limits.__dict__, "max_file_bytes": max_file_bytes})
    gateway_app = create_app(
        open_default_catalog(), destination=destination, limits=limits, expires_in=expires_in, url_window=url_window, flush_interval=flush_interval, settings=settings
    )
    from prefect.settings import PREFECT_API_URL

    if not PREFECT_API_URL.value():
        err.print(
            "warning: PREFECT_API_URL is not set; upload events stay queued in the catalog until the gateway runs with it",
            highlight=False,
        )
    err.print(f"ferry gateway on http://{host}:{port} → {destination}", highlight=False)
    # a thread answering a 10,000-file manifest holds the GIL for up to the switch interval
    # at a time; 1 ms instead of 5 lets the small requests of other devices through sooner
    sys.setswitchinterval(GATEWAY_SWITCH_INTERVAL)
    # A full garbage collection walks every tracked object while holding the GIL: with
    # Prefect, SQLAlchemy and boto3 loaded, the ones a 10,000-file begin set off took
    # 170-650 ms each (another device's /v1/me waited as long). What is alive now lives as
    # long as the process: frozen out of the walk; and full collections come 10x rarer.
    # Measured during such a begin: no collection over 12 ms, /v1/me max 66 ms (was 357).
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GATEWAY_GC_THRESHOLDS)
    # uvicorn would otherwise believe X-Forwarded-For from loopback: a guesser there could
    # name a new address per try and never meet the refused-token limit
    trusted = forwarded_allow_ips if forwarded_allow_ips is not None else os.environ.get("FORWARDED_ALLOW_IPS", "")
    uvicorn.run(gateway_app, host=host, port=port, log_level="warning",
                proxy_headers=bool(trusted.strip()), forwarded_allow_ips=trusted.strip() or None)


@devices_app.command("add")
def devices_add(
    device: Annotated[str, typer.Argument(help="Device id (its prefix in storage).")],
    label: Annotated[Optional[str], typer.Option("--label", help="What this token is for.")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Create a gateway token for DEVICE. The token is printed once; only its hash is kept."""
    from storage_core.catalog.devices import add_device_token

    new = add_device_token(open_default_catalog(), device, label=label)
    if as_json:
        emit_json({"device_id": new.info.device_id, "token_id": new.info.id, "label": new.info.label, "token": new.token})
        return
    err.print(f"token {new.info.id} for device {device} (shown once; store it on the device):", highlight=False)
    out.print(new.token, highlight=False, soft_wrap=True)


@devices_app.command("revoke")
def devices_revoke(
    device: Annotated[str, typer.Argument(help="Device id.")],
    token_id: Annotated[Optional[int], typer.Option("--token-id", help="Revoke just this token (default: all of the device's).")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Revoke a device's tokens: the gateway refuses them from the next request on. A device
    left with no live token has its open uploads aborted (multipart uploads aborted, what
    its URLs put deleted)."""
    from storage_core.catalog.devices import list_device_tokens, revoke_device_tokens
    from storage_core.upload.device import abort_device_uploads

    catalog = open_default_catalog()
    revoked = revoke_device_tokens(catalog, device, token_id=token_id)
    aborted: list[str] = []
    if all(t.revoked_at is not None for t in list_device_tokens(catalog, device_id=device)):
        aborted = abort_device_uploads(catalog, device, reason=f"device {device} revoked")
    if as_json:
        emit_json({"device_id": device, "revoked": [t.id for t in revoked], "aborted": aborted})
        return
    out.print(f"revoked {len(revoked)} token(s) of device {device}; aborted {len(aborted)} open upload(s)", highlight=False)


@devices_app.command("list")
def devices_list(as_json: JsonOpt = False) -> None:
    """Every device token: device, label, created, last used, revoked."""
    from storage_core.catalog.devices import list_device_tokens

    tokens = list_device_tokens(open_default_catalog())
    if as_json:
        emit_json(tokens)
        return
    table = Table("token", "device", "label", "created", "last used", "revoked")
    for t in tokens:
        when = lambda d: d.strftime("%Y-%m-%d %H:%M") if d else "-"  # noqa: E731
        table.add_row(str(t.id), t.device_id, t.label or "", when(t.created_at), when(t.last_used_at), when(t.revoked_at))
    out.print(table)


@app.command("device-upload")
def device_upload_cmd(
    folder: Annotated[Path, typer.Argument(help="FOLDER/RECORDING/files to upload.")],
    gateway_url: Annotated[str, typer.Option("--gateway", help="Gateway base URL, e.g. http://127.0.0.1:8470.")],
    token: Annotated[Optional[str], typer.Option("--token", help="Device token (default: $FERRY_DEVICE_TOKEN).")] = None,
    device: Annotated[Optional[str], typer.Option("--device", help="Device id (default: the token's device).")] = None,
    part_size: Annotated[int, typer.Option("--part-size", help="Bytes per part; larger files go multipart.")] = 16 * 1024 * 1024,
    limit_rate: Annotated[Optional[int], typer.Option("--limit-rate", help="Upload at most this many bytes per second.")] = None,
    parallel: Annotated[int, typer.Option("--parallel", min=1, help="Files and parts PUT at once.")] = 4,
    replace: Annotated[bool, typer.Option("--replace", help="Store files whose path is stored with other bytes in place of that version (refused otherwise).")] = False,
    archives: Annotated[bool, typer.Option("--archives", help="FOLDER holds rolling archives: hand each closed one over exactly once.")] = False,
    keep_uploaded: Annotated[bool, typer.Option("--keep-uploaded", help="--archives: move uploaded archives under uploaded/ instead of deleting them.")] = False,
    keep_bytes: Annotated[Optional[int], typer.Option("--keep-bytes", help="--archives: drop the oldest uploaded archives beyond this many bytes.")] = None,
    keep_archives: Annotated[Optional[int], typer.Option("--keep-archives", help="--archives: drop the oldest uploaded archives beyond this many.")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Upload a folder through the gateway, as a device does; rerun to resume."""
    from storage_core.device.client import device_upload

    token = token or os.environ.get("FERRY_DEVICE_TOKEN")
    if not token:
        raise ConfigError("no device token: pass --token or set FERRY_DEVICE_TOKEN")
    if archives:
        from storage_core.device.archive.handoff import hand_off

        handed = hand_off(folder, gateway=gateway_url, token=token, device=device, keep_uploaded=keep_uploaded,
                          keep_bytes=keep_bytes, keep_archives=keep_archives)
        if as_json:
            emit_json(handed)
        else:
            out.print(f"{len(handed.uploaded)} archive(s) uploaded, {len(handed.removed)} removed locally,"
                      f" {len(handed.pending)} pending" + (" (back-pressure: over the retention budget)" if handed.back_pressure else ""),
                      highlight=False)
        return
    report = device_upload(folder, gateway=gateway_url, token=token, device=device, part_size=part_size,
                           limit_rate=limit_rate, parallel=parallel, replace=replace)
    if as_json:
        emit_json(report)
        return
    out.print(
        f"[green]{report.status}[/]: transaction {report.transaction_id}: {report.files} file(s), {size_text(report.bytes)};"
        f" sent {report.pieces_sent} piece(s) ({size_text(report.bytes_sent)}), {report.pieces_reused} already stored",
        highlight=False,
    )
