"""`ferry`: the command line. Output is for people by default; `--json` prints one JSON
document for scripts. Every failure is one line on stderr and a non-zero exit.

Each command group lives in its own module and registers itself on `common.app`; they are
loaded by `main()`, after a flow command has been offered to the warm process
(ferry.cli.warm), so a delegated command costs this process no more than a socket."""

from __future__ import annotations

import os
import sys
from typing import Any


def load_commands() -> Any:
    """Import every command module (each registers its commands); returns the Typer app."""
    from ferry.cli import (  # noqa: F401 - each module registers its commands on `app`
        archive_cmds,
        bench_cmds,
        catalog_cmds,
        gateway_cmds,
        ingest_cmds,
        jobs_cmds,
        products_cmds,
        serve_cmds,
        server_cmds,
        stream_cmds,
        summarize_cmds,
        worker_cmds,
    )
    from ferry.cli.common import app

    return app


_command: Any = None


def click_command() -> Any:
    """The Typer app as a click command, built once per process: what `app()` builds again
    on each call (~20 ms of a command's child in the warm process, ferry.cli.warm, which
    builds it before it forks)."""
    global _command
    if _command is None:
        import typer.main

        _command = typer.main.get_command(load_commands())
    return _command


def main() -> None:
    """Entry point: map every failure to one line and a non-zero exit.

    Typer (0.29) carries its own copy of click: its usage errors are TyperExceptions, and
    `typer.Exit(code)` comes back as the return value of a non-standalone call."""
    from ferry.cli import warm
    from ferry.cli.home import prefect_home, set_process_defaults

    set_process_defaults()
    try:
        code = warm.delegate(sys.argv[1:], prefect_home())
    except KeyboardInterrupt:  # before the warm process named its child: nothing runs there
        sys.stderr.write("aborted\n")
        sys.exit(130)
    if code is not None:
        sys.exit(code)

    import typer

    from ferry.cli.common import err
    from storage_core.errors import FerryError, one_line

    try:
        code = click_command()(standalone_mode=False)
    except FerryError as exc:
        err.print(f"[red]error:[/] {one_line(exc)}", highlight=False, soft_wrap=True)
        sys.exit(1)
    except (typer.Abort, KeyboardInterrupt):
        err.print("aborted")
        sys.exit(130)
    except typer.TyperException as exc:  # bad usage: a wrong option or value
        message = exc.format_message() if hasattr(exc, "format_message") else str(exc)
        err.print(f"[red]error:[/] {one_line(message)}", highlight=False, soft_wrap=True)
        sys.exit(getattr(exc, "exit_code", 2))
    except Exception as exc:  # noqa: BLE001 - the last line of defence against tracebacks
        if os.environ.get("FERRY_DEBUG"):
            raise
        err.print(f"[red]error:[/] unexpected {type(exc).__name__}: {one_line(exc)}", highlight=False, soft_wrap=True)
        sys.exit(1)
    sys.exit(code if isinstance(code, int) else 0)


__all__ = ["click_command", "load_commands", "main"]
