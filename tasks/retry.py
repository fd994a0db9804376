"""Task retry policy: exponential backoff with jitter, only for errors storage_core marks
retryable. The outermost retry layer: the whole budget is in storage_core.retry's docstring."""

from __future__ import annotations

from typing import Any

from prefect.tasks import exponential_backoff


def only_retryable(task: Any, task_run: Any, state: Any) -> bool:
    """Prefect retry condition: retry when the raised error says a retry can help."""
    try:
        state.result()
    except Exception as exc:  # the task's own error, re-raised by the failed state
        return bool(getattr(exc, "retryable", False))
    return False


TASK_RETRIES = 3  # a task runs at most 1 + 3 times (storage_core.retry states the whole budget)

RETRY_POLICY: dict[str, Any] = {
    "retries": TASK_RETRIES,
    "retry_delay_seconds": exponential_backoff(backoff_factor=2),
    "retry_jitter_factor": 0.5,
    "retry_condition_fn": only_retryable,
}

__all__ = ["RETRY_POLICY", "TASK_RETRIES", "only_retryable"]
