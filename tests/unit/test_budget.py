"""TransferBudget: requests and bytes in flight bounded together."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from storage_core.budget import TransferBudget


def _run(budget: TransferBudget, sizes: list[int]) -> list[tuple[int, int]]:
    seen: list[tuple[int, int]] = []
    lock = threading.Lock()

    def hold(size: int) -> None:
        with budget.hold(size):
            with lock:
                seen.append(budget.in_flight)
            time.sleep(0.002)

    with ThreadPoolExecutor(32) as pool:
        list(pool.map(hold, sizes))
    return seen


def test_many_small_holders_are_bounded_by_requests():
    budget = TransferBudget(requests=8, nbytes=64 << 20)
    seen = _run(budget, [100 << 10] * 200)
    assert max(r for r, _ in seen) <= 8
    assert budget.in_flight == (0, 0)


def test_large_holders_are_bounded_by_bytes():
    budget = TransferBudget(requests=16, nbytes=64 << 20)
    seen = _run(budget, [16 << 20] * 40 + [100 << 10] * 100)
    assert max(b for _, b in seen) <= 64 << 20
    assert max(r for r, _ in seen) <= 16


def test_a_holder_larger_than_the_budget_still_runs_alone():
    budget = TransferBudget(requests=4, nbytes=10)
    with budget.hold(1000):
        assert budget.in_flight == (1, 10)
    assert budget.in_flight == (0, 0)


def test_a_failing_holder_gives_its_share_back():
    budget = TransferBudget(requests=1, nbytes=10)
    with pytest.raises(RuntimeError), budget.hold(5):
        raise RuntimeError("boom")
    assert budget.in_flight == (0, 0)


def test_an_empty_budget_is_refused():
    with pytest.raises(ValueError):
        TransferBudget(requests=0, nbytes=1)


def test_batches_of_one_process_share_one_budget_of_a_size():
    one = TransferBudget.shared(requests=3, nbytes=7)
    assert TransferBudget.shared(requests=3, nbytes=7) is one
    assert TransferBudget.shared(requests=4, nbytes=7) is not one
