"""Ferry's deployments in one place: names, schedules, parameters, concurrency limits,
triggers, tags and descriptions. `ferry serve` turns them into Prefect deployments;
prefect.yaml lists the same ones for work pools (a test keeps the two in step).

| deployment | when it runs | concurrency |
|---|---|---|
| `ingest/landing-<name>-<hash>` | every N (or cron), one per declared landing folder or bucket prefix | 1, a tick that finds the previous run still going is cancelled |
| `ingest/reingest` | from the UI: a folder or bucket prefix, device, destination | 2, more wait |
| `reconcile/reconcile` | hourly, and from the UI | 1, a tick that collides is cancelled |
| `summarize/resummarize` | from the UI: SummarizeParams | 2, more wait |
| `summarize/summarize-on-upload` | event `ferry.upload.completed` → its transaction | 4, more wait |
| `download/restore-to-disk` | from the UI: DownloadParams | 2, more wait |
| `derive/backfill` | from the UI: DeriveParams (product, filters, options, mode) | 1, more wait |
| `ingest-fanout/ingest-fanout` | from the UI: a large source split per recording group for several workers | 2, more wait |
| `ingest-items/ingest-items` | started by ingest-fanout (`claimers` runs): claims and stores groups | 16, more wait |
| `derive-fanout/derive-fanout` | from the UI: DeriveParams split per batch of recordings | 1, more wait |
| `derive-items/derive-items` | started by derive-fanout: claims and derives batches | 16, more wait |
| `download-fanout/download-fanout` | from the UI: DownloadParams split per batch, into a shared folder | 2, more wait |
| `download-items/download-items` | started by download-fanout: claims and restores batches | 16, more wait |

A fan-out parent started from a deployment runs its children as the `*-items` deployment
(`fan_out.deployment` "auto"), so a work pool spreads them over its workers' hosts.

Overlap is safe by construction, not only by the limits: ingest's planning skips bytes
already stored and claims destinations, so two overlapping ingests store each file once.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from deployments.landing import LandingSource
from storage_core.catalog.outbox import UPLOAD_COMPLETED  # the event the gateway's outbox emits

if TYPE_CHECKING:
    from prefect.deployments.runner import RunnerDeployment
    from prefect.events import DeploymentEventTrigger

TRANSACTION_RESOURCE = "ferry.transaction.*"
RECONCILE_EVERY = timedelta(hours=1)


@dataclass(frozen=True)
class Concurrency:
    """A deployment concurrency limit; `cancel_new` drops a run that finds every slot taken
    (right for schedules: the next tick picks up what is new), else it waits its turn."""

    limit: int
    cancel_new: bool = False

    def to_prefect(self):
        from prefect.client.schemas.objects import ConcurrencyLimitConfig, ConcurrencyLimitStrategy

        strategy = ConcurrencyLimitStrategy.CANCEL_NEW if self.cancel_new else ConcurrencyLimitStrategy.ENQUEUE
        return ConcurrencyLimitConfig(limit=self.limit, collision_strategy=strategy)


@dataclass(frozen=True)
class DeploymentSpec:
    """What Prefect needs to register one deployment, without importing the flow yet.
    `entrypoint` is a file path (prefect.yaml's form); `module`/`function` import it."""

    name: str
    entrypoint: str
    description: str
    concurrency: Concurrency
    tags: tuple[str, ...] = ("ferry",)
    parameters: dict[str, Any] = field(default_factory=dict)
    interval: timedelta | None = None
    cron: str | None = None
    on_upload: dict[str, Any] | None = None  # parameters templated from a ferry.upload.completed event

    @property
    def module(self) -> str:
        return self.entrypoint.split(":")[0].removesuffix(".py").replace("/", ".")

    @property
    def function(self) -> str:
        return self.entrypoint.split(":")[1]

    @property
    def flow_name(self) -> str:
        """The flow's name in Prefect (`ingest_fanout` is the flow `ingest-fanout`): the first
        half of `FLOW/DEPLOYMENT`."""
        return self.function.replace("_", "-")


def upload_completed_trigger(parameters: dict[str, Any], *, name: str) -> DeploymentEventTrigger:
    """Run once per `ferry.upload.completed` event, with `parameters` rendered from it
    (e.g. `{{ event.resource['ferry.transaction.id'] }}`). The server drops an event id it
    has seen (in memory, so also the gateway emits each outbox id once)."""
    from prefect.events import DeploymentEventTrigger

    return DeploymentEventTrigger(
        name=name,
        description=f"{UPLOAD_COMPLETED} from the device gateway",
        expect={UPLOAD_COMPLETED},
        match={"prefect.resource.id": TRANSACTION_RESOURCE},
        parameters=parameters,
    )


def landing_deployment(source: LandingSource) -> DeploymentSpec:
    from storage_core.config import load_settings

    to = source.to or load_settings().store_uri  # pinned, so the UI shows where data goes
    return DeploymentSpec(
        name=source.deployment_name,
        entrypoint="flows/ingest.py:ingest",
        description=f"Ingest what is new in {source.source} → {to}, {source.schedule_text}.",
        concurrency=Concurrency(1, cancel_new=True),
        tags=("ferry", "scheduled", "landing"),
        parameters={"source": source.source, "to": to, "device": source.device, "origination": f"schedule {source.deployment_name}"},
        interval=source.every,
        cron=source.cron,
    )


INGEST = "flows/ingest.py:ingest"
RECONCILE = "flows/reconcile.py:reconcile"
SUMMARIZE = "flows/summarize.py:summarize"
DOWNLOAD = "flows/download.py:download"
DERIVE = "flows/derive.py:derive"
INGEST_FANOUT = "flows/ingest_fanout.py:ingest_fanout"
INGEST_ITEMS = "flows/ingest_fanout.py:ingest_items"
DERIVE_FANOUT = "flows/derive.py:derive_fanout"
DERIVE_ITEMS = "flows/derive.py:derive_items"
DOWNLOAD_FANOUT = "flows/download.py:download_fanout"
DOWNLOAD_ITEMS = "flows/download.py:download_items"
CLAIMERS_LIMIT = 16  # child runs of fanned-out jobs at once; more wait their turn

STANDING: tuple[DeploymentSpec, ...] = (
    DeploymentSpec(
        name="reingest",
        entrypoint=INGEST,
        description="Re-ingest a landing folder or s3://bucket/prefix (DEVICE/RECORDING/files, or RECORDING/files "
        "with a device) into a destination (default FERRY_STORE). Identical bytes already stored are skipped.",
        concurrency=Concurrency(2),
        tags=("ferry", "backfill"),
        parameters={"origination": "backfill reingest"},
    ),
    DeploymentSpec(
        name="reconcile",
        entrypoint=RECONCILE,
        description="Abort (or resume) transactions idle longer than the threshold and abort orphaned multipart uploads.",
        concurrency=Concurrency(1, cancel_new=True),
        tags=("ferry", "scheduled", "maintenance"),
        interval=RECONCILE_EVERY,
    ),
    DeploymentSpec(
        name="resummarize",
        entrypoint=SUMMARIZE,
        description="Re-read MCAP/Parquet summaries for a device, a time window or one transaction.",
        concurrency=Concurrency(2),
        tags=("ferry", "backfill"),
    ),
    DeploymentSpec(
        name="summarize-on-upload",
        entrypoint=SUMMARIZE,
        description=f"Summarize a device upload when the gateway emits {UPLOAD_COMPLETED}.",
        concurrency=Concurrency(4),
        tags=("ferry", "event"),
        on_upload={"params": {"transaction_id": "{{ event.resource['ferry.transaction.id'] }}"}},
    ),
    DeploymentSpec(
        name="restore-to-disk",
        entrypoint=DOWNLOAD,
        description="Restore catalogued objects to a folder on disk: planned first, verified, atomic per file.",
        concurrency=Concurrency(2),
        tags=("ferry", "backfill"),
    ),
    DeploymentSpec(
        name="backfill",
        entrypoint=DERIVE,
        description="Derive a product (topics: MCAP → per-topic Parquet) for recordings; only what changed "
        "(code, options, inputs) is computed, each product published atomically.",
        concurrency=Concurrency(1),  # two backfills would only wait on each other's keys
        tags=("ferry", "backfill"),
    ),
    DeploymentSpec(
        name="ingest-fanout",
        entrypoint=INGEST_FANOUT,
        description="Ingest a large landing folder or s3://bucket/prefix with several workers: scanned once, "
        "one work item per group of recordings (one transaction each), claimed by ingest-items runs.",
        concurrency=Concurrency(2),
        tags=("ferry", "backfill", "fan-out"),
    ),
    DeploymentSpec(
        name="ingest-items",
        entrypoint=INGEST_ITEMS,
        description="Claim and store recording groups of an ingest-fanout job (started by it); a group whose "
        "worker died is resumed once its lease runs out.",
        concurrency=Concurrency(CLAIMERS_LIMIT),
        tags=("ferry", "fan-out"),
    ),
    DeploymentSpec(
        name="derive-fanout",
        entrypoint=DERIVE_FANOUT,
        description="Derive a product for many recordings with several workers: one work item per batch of "
        "recordings, claimed by derive-items runs.",
        concurrency=Concurrency(1),
        tags=("ferry", "backfill", "fan-out"),
    ),
    DeploymentSpec(
        name="derive-items",
        entrypoint=DERIVE_ITEMS,
        description="Claim and derive batches of a derive-fanout job (started by it).",
        concurrency=Concurrency(CLAIMERS_LIMIT),
        tags=("ferry", "fan-out"),
    ),
    DeploymentSpec(
        name="download-fanout",
        entrypoint=DOWNLOAD_FANOUT,
        description="Restore catalogued objects with several workers into one shared folder: planned first, "
        "one work item per batch of recordings, claimed by download-items runs.",
        concurrency=Concurrency(2),
        tags=("ferry", "backfill", "fan-out"),
    ),
    DeploymentSpec(
        name="download-items",
        entrypoint=DOWNLOAD_ITEMS,
        description="Claim and restore batches of a download-fanout job (started by it).",
        concurrency=Concurrency(CLAIMERS_LIMIT),
        tags=("ferry", "fan-out"),
    ),
)


def ferry_deployments(landings: list[LandingSource] = ()) -> list[DeploymentSpec]:
    """One scheduled ingest per landing source, then every standing deployment whose flow exists."""
    return [landing_deployment(s) for s in landings] + list(STANDING)


def load_flow(spec: DeploymentSpec):
    return getattr(importlib.import_module(spec.module), spec.function)


def to_runner_deployment(spec: DeploymentSpec) -> RunnerDeployment:
    """The spec as a Prefect RunnerDeployment (module entrypoint: runs wherever Ferry is installed)."""
    from prefect.deployments.runner import EntrypointType

    flow = load_flow(spec)
    triggers = [upload_completed_trigger(spec.on_upload, name=f"{flow.name}/{spec.name}")] if spec.on_upload else None
    return flow.to_deployment(
        name=spec.name,
        interval=spec.interval,
        cron=spec.cron,
        parameters=spec.parameters or None,
        description=spec.description,
        tags=list(spec.tags),
        concurrency_limit=spec.concurrency.to_prefect(),
        triggers=triggers,
        enforce_parameter_schema=True,
        entrypoint_type=EntrypointType.MODULE_PATH,
    )


__all__ = [
    "STANDING",
    "Concurrency",
    "DeploymentSpec",
    "UPLOAD_COMPLETED",
    "ferry_deployments",
    "landing_deployment",
    "load_flow",
    "to_runner_deployment",
    "upload_completed_trigger",
]
