"""`ferry server start|status|stop`: the local Prefect server that flow commands start in
the background and reuse when PREFECT_API_URL is not set (deployments/local_server.py),
and the warm `ferry` process beside it (ferry.cli.warm)."""

from __future__ import annotations

import os
from typing import Any

from ferry.cli.common import JsonOpt, emit_json, err, out, prefect_home, server_app


def _describe(check: Any) -> dict[str, Any]:
    server = check.server
    return {
        "state": check.state,
        "running": check.running,
        "prefect_home": str(prefect_home()),
        "pid": server.pid if server else None,
        "api_url": server.api_url if server else None,
        "ui_url": server.ui_url if server else None,
        "log": str(server.log_path) if server else None,
        "started_at": server.started_at if server else None,
        "reason": None if check.running else check.health,
        "prefect_api_url_env": os.environ.get("PREFECT_API_URL") or None,
        "warm": _warm(),
    }


def _warm() -> dict[str, Any] | None:
    """The warm ferry process of PREFECT_HOME (pid, since, log), None when none runs."""
    from ferry.cli import warm

    state = warm.read_state(prefect_home())
    if state is None or not warm.is_alive(int(state.get("pid", 0))):
        return None
    return {"pid": state["pid"], "started_at": state.get("started_at"), "log": str(prefect_home() / warm.LOG_NAME)}


def _print_running(server: Any) -> None:
    warm = _warm()
    warm_line = (f"\n  warm ferry process: pid {warm['pid']}, since {warm['started_at']} (log {warm['log']})" if warm
                 else "\n  warm ferry process: none yet (the next flow command starts it)")
    out.print(f"local Prefect server running (pid {server.pid}, since {server.started_at})\n"
              f"  API: {server.api_url}\n  UI:  {server.ui_url}\n  log: {server.log_path}{warm_line}",
              highlight=False, soft_wrap=True)


def _note_env() -> None:
    if os.environ.get("PREFECT_API_URL"):
        err.print(f"note: PREFECT_API_URL is set ({os.environ['PREFECT_API_URL']}): flow commands use that API, not this server",
                  highlight=False, soft_wrap=True)


@server_app.command("start")
def server_start(as_json: JsonOpt = False) -> None:
    """Start the local Prefect server (or find it running) and the warm ferry process, and
    leave them running."""
    from deployments.local_server import check_local_server

    from ferry.cli.common import use_prefect_api

    explicit = os.environ.pop("PREFECT_API_URL", None)  # this command is about the local server
    use_prefect_api()
    server = check_local_server(prefect_home()).server
    os.environ.pop("PREFECT_API_URL", None)
    if explicit:
        os.environ["PREFECT_API_URL"] = explicit
    if as_json:
        emit_json(_describe(check_local_server(prefect_home())))
        return
    _print_running(server)
    _note_env()


@server_app.command("status")
def server_status(as_json: JsonOpt = False) -> None:
    """The local server's API URL and UI address, or that none runs."""
    from deployments.local_server import check_local_server

    check = check_local_server(prefect_home())
    if as_json:
        emit_json(_describe(check))
        return
    server = check.server
    if check.running and server is not None:
        _print_running(server)
    elif check.state == "unhealthy" and server is not None:
        out.print(f"local Prefect server (pid {server.pid}) runs but its API at {server.api_url} does not answer "
                  f"({check.health}); see {server.log_path}", highlight=False, soft_wrap=True)
    elif check.state == "stale" and server is not None:
        out.print(f"no local Prefect server runs (the one recorded, pid {server.pid}, is gone); "
                  "the next flow command or `ferry server start` starts one", highlight=False, soft_wrap=True)
    else:
        out.print(f"no local Prefect server runs under {prefect_home()}; "
                  "the next flow command or `ferry server start` starts one", highlight=False, soft_wrap=True)
    _note_env()


@server_app.command("stop")
def server_stop(as_json: JsonOpt = False) -> None:
    """Stop the warm ferry process and the local server and forget them (the server's
    database and the logs stay under PREFECT_HOME)."""
    from deployments.local_server import stop_local_server

    from ferry.cli import warm

    warm.stop(prefect_home())
    found = stop_local_server(prefect_home())
    if as_json:
        emit_json({**_describe(found), "stopped": found.alive})
        return
    if found.alive and found.server is not None:
        out.print(f"stopped the local Prefect server (pid {found.server.pid}, {found.server.ui_url})", highlight=False, soft_wrap=True)
    else:
        out.print("no local Prefect server was running", highlight=False, soft_wrap=True)
