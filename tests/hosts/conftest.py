"""Ferry's workers on several hosts: network namespaces on a bridge (bench/netns.py), the
shared servers on its address (bench/cluster.py). Skipped where namespaces cannot be made."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from bench import netns
from bench.netns import HostNetwork


@pytest.fixture
def three_hosts() -> Iterator[HostNetwork]:
    reason = netns.unavailable()
    if reason is not None:
        pytest.skip(reason)
    with netns.host_network(3) as network:
        yield network
