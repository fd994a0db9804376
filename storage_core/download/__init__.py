"""Download stored objects to local disk: plan every write first, then ranged, verified, atomic I/O."""

from storage_core.download.api import DEFAULT_MAX_FILES, download, plan_download
from storage_core.download.plan import (
    LAYOUTS,
    PART_SUFFIX,
    Layout,
    PlannedWrite,
    PlanProblem,
    WritePlanError,
    plan_writes,
)
from storage_core.download.source import DownloadSource, expand_prefix
from storage_core.download.targets import Target, sources_of
from storage_core.download.transfer import (
    DEFAULT_CHUNK_SIZE,
    DEFAULT_MAX_WORKERS,
    DEFAULT_RETRY,
    OnProgress,
    RetryPolicy,
    download_object,
    plan_ranges,
)

__all__ = [
    "DEFAULT_CHUNK_SIZE",
    "DEFAULT_MAX_FILES",
    "DEFAULT_MAX_WORKERS",
    "DEFAULT_RETRY",
    "LAYOUTS",
    "PART_SUFFIX",
    "DownloadSource",
    "Layout",
    "OnProgress",
    "PlanProblem",
    "PlannedWrite",
    "RetryPolicy",
    "Target",
    "WritePlanError",
    "download",
    "download_object",
    "expand_prefix",
    "plan_download",
    "plan_ranges",
    "plan_writes",
    "sources_of",
]
