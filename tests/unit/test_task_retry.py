"""Prefect retries a task only when the whole task failed with an error marked retryable."""

from __future__ import annotations

import pytest
from prefect.states import Completed, Failed

from storage_core.errors import CatalogConflict, CatalogUnavailable, ConfigError, PartUploadFailed
from tasks.retry import RETRY_POLICY, TASK_RETRIES, only_retryable


@pytest.mark.parametrize(
    ("error", "retried"),
    [
        (CatalogUnavailable("catalog sqlite:///c.db unavailable: database is locked"), True),
        (PartUploadFailed("part 1 of k failed", retryable=True), True),
        (PartUploadFailed("part 1 of k failed", retryable=False), False),
        (CatalogConflict("catalog sqlite:///c.db: a concurrent writer took the same key first"), False),
        (ConfigError("bad input"), False),
        (RuntimeError("a bug"), False),
    ],
)
def test_only_retryable_errors_are_retried(error: Exception, retried: bool) -> None:
    assert only_retryable(None, None, Failed(data=error)) is retried


def test_a_completed_task_is_not_retried_and_the_policy_uses_the_condition() -> None:
    assert only_retryable(None, None, Completed(data=1)) is False
    assert RETRY_POLICY["retries"] == TASK_RETRIES and RETRY_POLICY["retry_condition_fn"] is only_retryable
