"""`ferry serve`: register Ferry's deployments and run them against a Prefect server."""

from __future__ import annotations
