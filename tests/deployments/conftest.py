"""Deployments against one real Prefect server (tests/support/prefect_server.py), SeaweedFS and a SQLite catalog.
`ferry serve` runs as a subprocess, as an operator would start it (tests/support/serve.py)."""

from tests.support.serve import MiB, ferry_serve, serve_env, wait_for  # noqa: F401 - fixtures and helpers
