"""The gateway's budget of decoded appends held at once: a request that does not fit waits
for others to finish, then is told to come back (GatewayBusy, retryable); one larger than
the whole budget is refused."""

from __future__ import annotations

import threading

import pytest

from storage_core.errors import GatewayBusy, ManifestRefused
from storage_core.streams.table import DecodedBudget


def test_a_request_waits_for_room_and_gets_it_when_another_finishes() -> None:
    budget = DecodedBudget(100, wait=30)
    first_in, release, second_in = threading.Event(), threading.Event(), threading.Event()

    def first() -> None:
        with budget.holding(70):
            first_in.set()
            release.wait(30)

    def second() -> None:
        with budget.holding(50):
            second_in.set()

    threads = [threading.Thread(target=first), threading.Thread(target=second)]
    threads[0].start()
    first_in.wait(30)
    threads[1].start()
    assert not second_in.wait(0.2)  # 70 + 50 over 100: it waits
    release.set()
    assert second_in.wait(30)
    for thread in threads:
        thread.join(30)
    assert budget.held == 0


def test_no_room_in_time_is_busy_and_too_large_is_refused() -> None:
    budget = DecodedBudget(100, wait=0.05)
    with budget.holding(90):
        with pytest.raises(GatewayBusy, match="holds 90 bytes of decoded appends") as busy:
            with budget.holding(20):
                pass
        assert busy.value.retryable
    with pytest.raises(ManifestRefused, match="decode to 101 bytes, over the gateway's bound of 100"):
        with budget.holding(101):
            pass
    with budget.holding(100):  # all of it, once free
        assert budget.held == 100
    assert budget.held == 0


def test_an_error_inside_gives_the_bytes_back() -> None:
    budget = DecodedBudget(100)
    with pytest.raises(RuntimeError):
        with budget.holding(60):
            raise RuntimeError("the commit failed")
    assert budget.held == 0
