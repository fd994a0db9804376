"""Telemetry streams: a real gateway over SeaweedFS and a real catalog (the gateway tests'
fixtures), and source rows to append."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("deltalake")

from tests.gateway.conftest import (  # noqa: E402,F401 - fixtures
    Gateway,
    RecordingEmitter,
    gateway,
    gateway_catalog_url,
    gateway_factory,
)


def telemetry(rows: int, *, start: int = 0):  # noqa: ANN201
    """Deterministic robot telemetry: time, device state, GPS, a diagnostic text."""
    import pyarrow as pa

    n = range(start, start + rows)
    return pa.table({
        "time": pa.array([i * 1_000_000 + 1_700_000_000_000_000 for i in n], pa.timestamp("us")),
        "seq": pa.array(list(n), pa.int64()),
        "battery": pa.array([100.0 - (i % 1000) / 10.0 for i in n]),
        "lat": pa.array([48.0 + (i % 997) * 1e-5 for i in n]),
        "lon": pa.array([11.0 + (i % 991) * 1e-5 for i in n]),
        "state": pa.array([f"state-{i % 7}" for i in n]),
    })


@pytest.fixture
def parquet_source(tmp_path: Path):  # noqa: ANN201
    def make(rows: int, name: str = "telemetry.parquet", start: int = 0) -> Path:
        import pyarrow.parquet as pq

        path = tmp_path / name
        pq.write_table(telemetry(rows, start=start), path, row_group_size=7_000)
        return path

    return make
