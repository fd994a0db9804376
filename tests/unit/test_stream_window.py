"""The client's window of appends in flight: an append the gateway refused as beyond the end
while its predecessors were still in flight goes again once they are acknowledged, whatever
stale end the refusal carried (a fault-injecting fake gateway; the real one is in tests/streams)."""

from __future__ import annotations

import threading

import pytest

from storage_core.device.stream import _acknowledged_in_order, _Append
from storage_core.errors import AppendOutOfRange


class RacingGateway:
    """Commits an append only at the committed end; the first time each later append arrives
    it is refused with the end as it stands then (its predecessors not yet committed)."""

    def __init__(self) -> None:
        self.end = 0
        self.lock = threading.Lock()
        self.refused: set[int] = set()
        self.first_committed = threading.Event()

    def send(self, frame: bytes) -> dict:
        offset = int(frame)
        if offset > 0 and offset not in self.refused:
            self.refused.add(offset)
            with self.lock:
                stale = self.end
            raise AppendOutOfRange(f"append at row {offset} is beyond the committed end {stale}", committed_end=stale)
        with self.lock:
            if offset != self.end:
                raise AppendOutOfRange(f"append at row {offset} is beyond the committed end {self.end}", committed_end=self.end)
            self.end += 100
            return {"result": "committed", "committed_end": self.end}


def appends(n: int):
    return iter([_Append(i * 100, 100, str(i * 100).encode()) for i in range(n)])


def test_appends_refused_behind_their_predecessors_go_again_in_order() -> None:
    gateway = RacingGateway()
    answered = [(item.offset, answer["committed_end"]) for item, answer in _acknowledged_in_order(appends(6), gateway.send, 3)]
    assert answered == [(i * 100, (i + 1) * 100) for i in range(6)]
    assert gateway.end == 600


def test_a_refusal_that_no_acknowledgement_explains_is_raised() -> None:
    def send(frame: bytes) -> dict:
        raise AppendOutOfRange("beyond the committed end 0", committed_end=0)

    with pytest.raises(AppendOutOfRange):
        list(_acknowledged_in_order(iter([_Append(500, 100, b"500")]), send, 3))


def test_the_window_holds_no_more_bytes_than_its_bound_and_one_frame() -> None:
    lock, state = threading.Lock(), {"now": 0, "most": 0}

    def send(frame: bytes) -> dict:
        with lock:
            state["now"] += 1
            state["most"] = max(state["most"], state["now"])
        threading.Event().wait(0.01)  # the gateway's commit: the others keep arriving meanwhile
        with lock:
            state["now"] -= 1
        return {"result": "committed", "committed_end": int(frame[:8]) + 100}

    items = iter([_Append(i * 100, 100, b"%08d" % (i * 100) + bytes(92)) for i in range(20)])
    answered = [item.offset for item, _ in _acknowledged_in_order(items, send, 10, window_bytes=250)]
    assert answered == [i * 100 for i in range(20)]
    assert 1 <= state["most"] <= 3  # 250 bytes of 100-byte frames: two, then one more
