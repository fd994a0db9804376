"""What every `ferry` command shares: the Typer app and its groups, the consoles, JSON
output, sizes, the catalog, the Prefect API flows report to, and quieting Prefect's
console logs.

Importing a command module must stay cheap (a quick command pays for nothing it does not use):
Prefect, pyarrow, boto3, FastAPI, uvicorn and Alembic are imported inside the commands
that use them, never at module level (tests/unit/test_cli_imports.py checks)."""

from __future__ import annotations

import json
import logging
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, is_dataclass
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from ferry.cli.home import prefect_home, set_process_defaults  # noqa: F401 - the commands' names for them

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Move recorded data reliably and fast, and know what is where.")
transactions_app = typer.Typer(no_args_is_help=True, help="Inspect, abort and resume upload transactions.")
bench_app = typer.Typer(no_args_is_help=True, help="Side-by-side benchmarks against the tools a user would pick instead.")
server_app = typer.Typer(no_args_is_help=True, help="The local Prefect server flow commands use when PREFECT_API_URL is not set.")
app.add_typer(transactions_app, name="transactions")
app.add_typer(bench_app, name="bench")
app.add_typer(server_app, name="server")

out = Console()
err = Console(stderr=True)
JsonOpt = Annotated[bool, typer.Option("--json", help="Print one JSON document instead of tables.")]
VerboseOpt = Annotated[bool, typer.Option("--verbose", "-v", help="Show Prefect's own logs.")]


def use_prefect_api() -> str:
    """The Prefect API the flows of this command report to: PREFECT_API_URL when set, else
    the warm local server of PREFECT_HOME, started in the background on first use (one
    progress line on stderr) and left running for later commands. Either way the warm
    `ferry` process of PREFECT_HOME (ferry.cli.warm) is started for the next flow command.
    Call it before Prefect is imported: Prefect reads PREFECT_API_URL from the environment
    once, on import."""
    from ferry.cli import warm

    url = os.environ.get("PREFECT_API_URL")
    if not url:
        from deployments.local_server import ensure_local_server

        server = ensure_local_server(prefect_home(), on_start=lambda line: err.print(line, highlight=False, soft_wrap=True))
        url = os.environ["PREFECT_API_URL"] = server.api_url  # this CLI process only (set_process_defaults' kind)
    warm.ensure_started(prefect_home())
    return url


def plain(value: Any) -> Any:
    if hasattr(value, "model_dump"):
        return value.model_dump(mode="json")
    if is_dataclass(value):
        return plain(asdict(value))
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, Path):
        return str(value)
    return value


def emit_json(value: Any) -> None:
    sys.stdout.write(json.dumps(plain(value), indent=2) + "\n")


def size_text(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n} B"


def parse_time(value: str | None, option: str) -> datetime | None:
    """An ISO 8601 time from an option (naive means UTC to the catalog), or None."""
    if value is None:
        return None
    try:
        return datetime.fromisoformat(value)
    except ValueError:
        from storage_core.errors import ConfigError

        raise ConfigError(f"{option}: {value!r} is not an ISO 8601 time (like 2026-11-21 or 2026-11-21T08:00Z)") from None


def quiet_prefect_console(verbose: bool) -> None:
    """Prefect logs flow-run states (with tracebacks) to the console; the CLI prints its
    own one-line outcome, so its console handler is silenced unless asked for."""
    if verbose:
        return
    from prefect.logging.handlers import PrefectConsoleHandler

    for logger in (logging.getLogger(), *(logging.getLogger(n) for n in ("uvicorn", "fastapi", "prefect"))):
        for handler in logger.handlers:
            if isinstance(handler, PrefectConsoleHandler):
                handler.setLevel(logging.CRITICAL + 1)


HEARTBEAT_VARIABLES = ("PREFECT_FLOWS_HEARTBEAT_FREQUENCY", "PREFECT_RUNNER_HEARTBEAT_FREQUENCY")


@contextmanager
def flow_runs_here(verbose: bool) -> Iterator[None]:
    """The block runs flows in this command's own process, in front of its user: Prefect's
    console logs quieted (`quiet_prefect_console`), and no flow-run heartbeats unless the
    user set their frequency. Prefect 3.8 sends them by default (every 180 s, for an
    automation that marks silent runs crashed), and its heartbeat thread sleeps in 1 s steps,
    so ending each flow run waited up to 1 s for it: 0.79 s of a 1.21 s one-file ingest
    (cProfile, warm server). Runs of deployments, on workers, keep Prefect's default."""
    import prefect.context

    quiet_prefect_console(verbose)
    if any(os.environ.get(name) for name in HEARTBEAT_VARIABLES):
        yield
        return
    context = prefect.context.get_settings_context()
    with prefect.context.SettingsContext(profile=context.profile, settings=without_heartbeats(context.settings)):
        yield


_heartbeats_off: list[tuple[Any, Any]] = []  # (Prefect settings, the same without heartbeats): the last pair


def without_heartbeats(settings: Any) -> Any:
    """Prefect's `settings` with flow-run heartbeats off, copied once per settings object:
    a copy validates every setting again (~30 ms), and ferry.cli.warm makes it before it
    forks the commands' processes, which then only look it up."""
    for original, updated in _heartbeats_off:
        if original is settings:
            return updated
    from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY

    updated = settings.copy_with_update(updates={PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None})
    _heartbeats_off[:] = [(settings, updated)]
    return updated


def open_default_catalog():
    """storage_core's one catalog opener, imported only by the commands that need SQL."""
    from storage_core.catalog import open_default_catalog

    return open_default_catalog()
