"""Retry with exponential backoff and full jitter, for errors marked `retryable` only.

One retry layer per concern; this table is the one place the attempt budget is stated:

    what is retried                        owner                                  tries
    an S3 request a loop below retries     botocore (S3Store.client)              1: botocore never retries
      (HEAD, ranged GET, PUT, part,
      create/complete multipart)
    an S3 request no loop retries          botocore (S3Store.unlooped_client)     UNLOOPED_ATTEMPTS (3),
      (listing, whole-object read,                                                  standard mode
      delete, abort, ListParts)
    an upload's part, create, complete,    storage_core.upload.transfer,          FERRY_PART_ATTEMPTS (6)
      single PUT, ranged source read         call_with_retries
    a download's HEAD and range GETs       storage_core.download.transfer,        RetryPolicy.attempts (6)
                                             RetryPolicy
    a device upload round (begin, PUTs,    storage_core.device.client,            device_upload(attempts=5)
      complete), re-asking what is stored    backoff_delays
    a whole Prefect task, only when it     tasks.retry.RETRY_POLICY               1 + TASK_RETRIES (3) = 4
      failed with a retryable error
    an upload event's POST to Prefect      ferry.gateway.events.PrefectEmitter    1 per flusher round (5 s
                                             (no retry); the gateway's flusher      timeout); rounds every
                                             sends it again next round              --flush-interval, unbounded

A part that keeps failing retryably is sent exactly FERRY_PART_ATTEMPTS times by one task
run, and at most 4 × FERRY_PART_ATTEMPTS times by an ingest flow (each task retry resumes
the upload; parts already stored are not sent again). Every wait is `backoff_delays`: full
jitter over base·2^n, capped.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")
log = logging.getLogger(__name__)


def backoff_delays(attempts: int, *, base: float = 0.5, cap: float = 8.0, rng: random.Random | None = None) -> list[float]:
    """The sleeps between `attempts` tries: full jitter over base·2^n, capped (pure)."""
    rng = rng or random.Random()
    return [rng.uniform(0, min(cap, base * 2**n)) + base / 2 for n in range(max(0, attempts - 1))]


def call_with_retries(
    fn: Callable[[], T],
    *,
    attempts: int = 6,
    base: float = 0.5,
    cap: float = 8.0,
    what: str = "operation",
    sleep: Callable[[float], None] = time.sleep,
) -> T:
    """Call `fn`; on an error whose `retryable` is true, wait and try again, up to `attempts` times.
    The last error is raised unchanged; non-retryable errors are raised at once."""
    delays = backoff_delays(attempts, base=base, cap=cap)
    for attempt in range(attempts):
        try:
            return fn()
        except Exception as exc:
            if not getattr(exc, "retryable", False) or attempt == attempts - 1:
                raise
            log.warning("%s failed (%s); retry %d/%d in %.1fs", what, exc, attempt + 1, attempts - 1, delays[attempt])
            sleep(delays[attempt])
    raise AssertionError("unreachable")


def poll(check: Callable[[], T], *, timeout: float, what: str, every: float = 0.1) -> T:
    """Call `check` every `every` seconds until it returns something truthy, and return that;
    TimeoutError naming `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(every)


__all__ = ["backoff_delays", "call_with_retries", "poll"]
