"""How many transfers may write to one store at once, across every host: a Prefect global
concurrency limit per store, named `ferry-store:<bucket>` (`ferry-store:file-<hash of the
folder>` for a local store; Prefect refuses `/` in names). `ferry worker` and `ferry deploy`
create it with DEFAULT_STORE_SLOTS when it is missing; an operator changes it in the UI or
with `--store-limit`.

Each upload task (a batch of files, or one large file) holds one slot while it transfers:
a slot per file would cost two API calls per small file, and inside a task storage_core
bounds its own requests (FERRY_MAX_IN_FLIGHT). Slots are taken only with
FERRY_STORE_LIMITS on, which `ferry worker` sets for the flow runs it starts: on one
machine (`ferry ingest`, `ferry serve`) there is nothing to share and no limit to look up
(Prefect would log a warning per task for a missing one). A limit that does not exist is
not waited for (`strict=False`).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from contextlib import contextmanager

from storage_core.keys import parse_uri

STORE_LIMIT_PREFIX = "ferry-store:"
DEFAULT_STORE_SLOTS = 8


def store_limit_name(uri: str) -> str:
    """The concurrency limit of the store `uri` (any URI in it) is counted against."""
    parsed = parse_uri(uri)
    if parsed.scheme == "s3":
        return f"{STORE_LIMIT_PREFIX}{parsed.root}"
    return f"{STORE_LIMIT_PREFIX}file-{hashlib.sha256(parsed.root.encode()).hexdigest()[:12]}"


@contextmanager
def store_slot(uri: str | None) -> Iterator[None]:
    """Hold one slot of `uri`'s store limit for the block (waits for a free one); nothing
    when `uri` is None or the limit does not exist."""
    if uri is None:
        yield
        return
    from prefect.concurrency.sync import concurrency

    with concurrency(store_limit_name(uri), occupy=1, strict=False):
        yield


__all__ = ["DEFAULT_STORE_SLOTS", "STORE_LIMIT_PREFIX", "store_limit_name", "store_slot"]
