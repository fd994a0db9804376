"""Where a `ferry` process keeps its Prefect state, and the defaults its process starts with
(stdlib only: the warm client reads them before anything else is imported)."""

from __future__ import annotations

import os
from pathlib import Path


def set_process_defaults() -> None:
    """Defaults for the CLI's own process (called by `main()`, never on import): nothing
    phones home, and Prefect's files stay under .ferry/ unless the user says otherwise."""
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("DO_NOT_TRACK", "1")
    if "PREFECT_HOME" not in os.environ:
        home = Path.cwd() / ".ferry" / "prefect"
        home.mkdir(parents=True, exist_ok=True)  # Prefect creates only the last level
        os.environ["PREFECT_HOME"] = str(home)


def prefect_home() -> Path:
    """PREFECT_HOME (set_process_defaults makes it ./.ferry/prefect unless the user set it)."""
    return Path(os.environ.get("PREFECT_HOME") or Path.cwd() / ".ferry" / "prefect")


__all__ = ["prefect_home", "set_process_defaults"]
