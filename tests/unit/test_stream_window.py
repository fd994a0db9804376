"""The client's window of appends in flight, sent several per request: an append the gateway
refused as beyond the end while its predecessors were still in flight goes again once they
are acknowledged, whatever stale end the refusal carried (a fault-injecting fake gateway;
the real one is in tests/streams)."""

from __future__ import annotations

import threading

import pytest

from storage_core.device.stream import _acknowledged_in_order, _Append, _requests
from storage_core.errors import AppendOutOfRange, StaleEpoch


class RacingGateway:
    """Commits an append only at the committed end; the first time each later append arrives
    it is refused with the end as it stands then (its predecessors not yet committed)."""

    def __init__(self) -> None:
        self.end = 0
        self.lock = threading.Lock()
        self.refused: set[int] = set()
        self.first_committed = threading.Event()

    def send(self, frames: list[bytes]) -> list:
        return [self._one(int(frame)) for frame in frames]

    def _one(self, offset: int) -> dict | AppendOutOfRange:
        if offset > 0 and offset not in self.refused:
            self.refused.add(offset)
            with self.lock:
                stale = self.end
            return AppendOutOfRange(f"append at row {offset} is beyond the committed end {stale}", committed_end=stale)
        with self.lock:
            if offset != self.end:
                return AppendOutOfRange(f"append at row {offset} is beyond the committed end {self.end}", committed_end=self.end)
            self.end += 100
            return {"result": "committed", "committed_end": self.end}


def appends(n: int, *, per_request: int = 1, request_bytes: int = 1 << 20):
    return _requests(iter([_Append(i * 100, 100, str(i * 100).encode()) for i in range(n)]), per_request, request_bytes)


@pytest.mark.parametrize("per_request", [1, 4])
def test_appends_refused_behind_their_predecessors_go_again_in_order(per_request: int) -> None:
    gateway = RacingGateway()
    answered = [(item.offset, answer["committed_end"])
                for item, answer in _acknowledged_in_order(appends(6, per_request=per_request), gateway.send, 3)]
    assert answered == [(i * 100, (i + 1) * 100) for i in range(6)]
    assert gateway.end == 600


def test_a_refusal_that_no_acknowledgement_explains_is_raised() -> None:
    def send(frames: list[bytes]) -> list:
        return [AppendOutOfRange("beyond the committed end 0", committed_end=0) for _ in frames]

    with pytest.raises(AppendOutOfRange):
        list(_acknowledged_in_order(iter([[_Append(500, 100, b"500")]]), send, 3))


def test_the_appends_before_a_refusal_in_one_request_are_answered_first() -> None:
    def send(frames: list[bytes]) -> list:
        return [{"result": "committed", "committed_end": 100}, StaleEpoch("fenced by epoch 3", committed_end=100, epoch=3)]

    answered = []
    with pytest.raises(StaleEpoch):
        for item, _ in _acknowledged_in_order(appends(2, per_request=2), send, 3):
            answered.append(item.offset)
    assert answered == [0]


def test_requests_hold_up_to_their_count_and_bytes_and_at_least_one_append() -> None:
    items = [_Append(i, 1, bytes(size)) for i, size in enumerate([10, 10, 10, 50, 10, 10, 10, 10, 10])]
    cut = [[item.offset for item in request] for request in _requests(iter(items), 3, 25)]
    assert cut == [[0, 1], [2], [3], [4, 5], [6, 7], [8]]  # 25 bytes: two of 10; the frame of 50 alone
    assert [len(r) for r in _requests(iter(items), 4, 1 << 20)] == [4, 4, 1]


def test_the_window_holds_no_more_bytes_than_its_bound_and_one_request() -> None:
    lock, state = threading.Lock(), {"now": 0, "most": 0}

    def send(frames: list[bytes]) -> list:
        with lock:
            state["now"] += len(frames)
            state["most"] = max(state["most"], state["now"])
        threading.Event().wait(0.01)  # the gateway's commit: the others keep arriving meanwhile
        with lock:
            state["now"] -= len(frames)
        return [{"result": "committed", "committed_end": int(frame[:8]) + 100} for frame in frames]

    items = iter([_Append(i * 100, 100, b"%08d" % (i * 100) + bytes(92)) for i in range(20)])
    answered = [item.offset for item, _ in _acknowledged_in_order(_requests(items, 2, 1 << 20), send, 10, window_bytes=250)]
    assert answered == [i * 100 for i in range(20)]
    assert 1 <= state["most"] <= 4  # 250 bytes of 100-byte frames in requests of two: two, then two more
