"""`ferry serve`: register Ferry's deployments and run them against a Prefect server."""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table

from ferry.cli.common import JsonOpt, app, emit_json, err, out, prefect_home

DEFAULT_PORT = 4200


def _api_url(explicit: str | None) -> str:
    """--api-url, else PREFECT_API_URL, else the local server flow commands started (when it
    runs), else Prefect's default address."""
    chosen = explicit or os.environ.get("PREFECT_API_URL")
    if chosen:
        return chosen
    from deployments.local_server import check_local_server

    local = check_local_server(prefect_home())
    return local.server.api_url if local.running and local.server else f"http://127.0.0.1:{DEFAULT_PORT}/api"


def _port_taken(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return True
    return False


def declared_landings(landing: list[str], every: str | None, cron: str | None, device: str | None, to: str | None, config: Path | None):
    from deployments.landing import landing_source, load_landing_config, unique_sources

    sources = [landing_source(place, every=every, cron=cron, device=device, to=to) for place in landing]
    if config is not None:
        sources += load_landing_config(config)
    return unique_sources(sources)


def _describe(spec) -> dict:
    from storage_core.catalog.outbox import UPLOAD_COMPLETED

    return {
        "name": spec.name,
        "entrypoint": spec.entrypoint,
        "interval_seconds": spec.interval.total_seconds() if spec.interval else None,
        "cron": spec.cron,
        "concurrency_limit": spec.concurrency.limit,
        "collision_strategy": "CANCEL_NEW" if spec.concurrency.cancel_new else "ENQUEUE",
        "parameters": spec.parameters,
        "trigger": UPLOAD_COMPLETED if spec.on_upload else None,
    }


def _print_plan(specs, api_url: str) -> None:
    from storage_core.catalog.outbox import UPLOAD_COMPLETED

    table = Table("flow/deployment", "runs", "concurrency", "parameters", title=f"Ferry deployments → {api_url}")
    for spec in specs:
        runs = (
            f"every {spec.interval}" if spec.interval else f"cron {spec.cron}" if spec.cron
            else f"on {UPLOAD_COMPLETED}" if spec.on_upload else "from the UI"
        )  # fmt: skip
        limit = f"{spec.concurrency.limit}, {'cancel new' if spec.concurrency.cancel_new else 'queue'}"
        params = ", ".join(f"{k}={v}" for k, v in spec.parameters.items() if v is not None)
        table.add_row(f"{spec.flow_name}/{spec.name}", runs, limit, params)
    out.print(table)


@app.command()
def serve(
    landing: Annotated[list[str], typer.Option("--landing", help="Landing folder or s3://bucket/prefix to ingest on a schedule (repeatable).")] = [],  # noqa: B006 - typer's repeatable option
    every: Annotated[Optional[str], typer.Option("--every", help="Interval for the --landing sources: 30s, 10m, 1h (default 10m).")] = None,
    cron: Annotated[Optional[str], typer.Option("--cron", help="Cron schedule for the --landing sources instead of --every.")] = None,
    device: Annotated[Optional[str], typer.Option("--device", help="Device id, when the --landing sources hold one device's recordings.")] = None,
    to: Annotated[Optional[str], typer.Option("--to", help="Destination URI for the --landing sources; default FERRY_STORE.")] = None,
    config: Annotated[Optional[Path], typer.Option("--config", help="TOML file with [[landing]] tables (folder|prefix, every|cron, device, to).")] = None,
    api_url: Annotated[Optional[str], typer.Option("--api-url", help="Prefect API URL; default PREFECT_API_URL, else the local server `ferry server start` runs, else http://127.0.0.1:4200/api.")] = None,
    start_server: Annotated[bool, typer.Option("--start-server", help="Also start `prefect server start` on 127.0.0.1 (PostgreSQL when PREFECT_API_DATABASE_CONNECTION_URL is set).")] = False,
    port: Annotated[int, typer.Option("--port", help="Port for --start-server.")] = DEFAULT_PORT,
    limit: Annotated[Optional[int], typer.Option("--limit", min=1, help="Most flow runs this process executes at once.")] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print the deployments and exit without registering them.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Register Ferry's deployments (scheduled ingests, backfills, event triggers) and run
    their flow runs here until interrupted. Start backfills from the Prefect UI."""
    from deployments.definitions import ferry_deployments

    specs = ferry_deployments(declared_landings(landing, every, cron, device, to, config))
    if start_server and api_url:
        raise typer.BadParameter("give either --api-url or --start-server", param_hint="--start-server")
    url = f"http://127.0.0.1:{port}/api" if start_server else _api_url(api_url)
    if dry_run:
        emit_json({"api_url": url, "deployments": [_describe(s) for s in specs]}) if as_json else _print_plan(specs, url)
        return

    server = None
    if start_server:
        from deployments.server import PrefectServer
        from storage_core.errors import ConfigError

        if _port_taken(port):
            raise ConfigError(f"port {port} on 127.0.0.1 is in use; is a Prefect server running? then use --api-url instead")
        server = PrefectServer(Path(os.environ["PREFECT_HOME"]), port=port)
        err.print(f"starting prefect server on {server.ui_url} (log: {server.log_path}) …")
        server.start()
    try:
        _serve(specs, url, limit=limit, quiet=as_json)
    finally:
        if server is not None:
            server.stop()


def _serve(specs, url: str, *, limit: int | None, quiet: bool) -> None:
    from deployments.serve import serve_ferry
    from deployments.server import require_api

    require_api(url)
    # this process and the flow-run subprocesses it starts talk to that API
    os.environ["PREFECT_API_URL"] = url
    from prefect.settings import PREFECT_API_URL, temporary_settings

    if not quiet:
        _print_plan(specs, url)
        err.print(f"UI: {url.removesuffix('/api').removesuffix('/')}  — Ctrl-C stops serving (schedules are paused).")
    with temporary_settings({PREFECT_API_URL: url}):
        serve_ferry(specs, limit=limit)
