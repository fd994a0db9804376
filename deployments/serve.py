"""Serve Ferry's deployments from this process: register them with the Prefect API named
by PREFECT_API_URL, then run their flow runs (scheduled, triggered or started from the UI)
as subprocesses until interrupted. Schedules are paused on shutdown."""

from __future__ import annotations

from deployments.definitions import DeploymentSpec, ferry_deployments, to_runner_deployment
from deployments.landing import LandingSource


def serve_ferry(specs: list[DeploymentSpec], *, limit: int | None = None) -> None:
    """Block serving `specs` (see `ferry_deployments`); `limit` caps concurrent flow runs."""
    from prefect import serve

    serve(*[to_runner_deployment(spec) for spec in specs], limit=limit, print_starting_message=False)


def main(landings: list[LandingSource] = ()) -> None:
    """`python -m deployments.serve`: the standing deployments plus `landings`."""
    serve_ferry(ferry_deployments(list(landings)))


if __name__ == "__main__":
    main()


__all__ = ["main", "serve_ferry"]
