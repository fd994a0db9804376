"""What an Arrow IPC stream declares it decodes to, read before anything is decompressed."""

from __future__ import annotations

import random

import pyarrow as pa
import pytest

from storage_core.formats.arrow_ipc import decoded_bytes


def ipc(table: pa.Table, compression: str | None, *, chunk: int = 3_000) -> bytes:
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema, options=pa.ipc.IpcWriteOptions(compression=compression)) as writer:
        for batch in table.to_batches(max_chunksize=chunk):
            writer.write_batch(batch)
    return sink.getvalue().to_pybytes()


def buffers(table: pa.Table) -> int:
    """Bytes of every buffer of the table as Arrow decodes it (dictionaries included)."""
    return sum(b.size for column in table.columns for chunk in column.chunks for b in chunk.buffers() if b is not None)


def telemetry(rows: int) -> pa.Table:
    return pa.table({
        "seq": pa.array(range(rows), pa.int64()),
        "state": pa.array([f"state-{i % 7}" for i in range(rows)]),
        "pose": pa.array([[float(i), i + 0.5] for i in range(rows)]),
        "mode": pa.array([f"m{i % 3}" for i in range(rows)]).dictionary_encode(),
        "speed": pa.array([None if i % 5 else 1.5 for i in range(rows)]),
    })


@pytest.mark.parametrize("compression", [None, "zstd", "lz4"])
def test_the_declared_size_is_what_arrow_decodes(compression: str | None) -> None:
    table = telemetry(10_000)
    body = ipc(table, compression)
    assert decoded_bytes(body) == buffers(pa.ipc.open_stream(body).read_all())


def test_a_few_kilobytes_of_zstd_declare_the_megabytes_they_decode_to() -> None:
    body = ipc(pa.table({"zeros": pa.array([0] * 1_000_000, pa.int64())}), "zstd", chunk=1_000_000)
    assert len(body) < 100_000
    assert decoded_bytes(body) == 8_000_000


def test_an_empty_stream_declares_nothing_and_other_bytes_are_refused() -> None:
    assert decoded_bytes(ipc(pa.table({"a": pa.array([], pa.int64())}), "zstd")) == 0
    with pytest.raises(ValueError, match="not an Arrow IPC stream"):
        decoded_bytes(b"not arrow at all, not even close")


def test_damaged_streams_give_a_size_or_a_value_error_never_anything_else() -> None:
    body = ipc(telemetry(2_000), "zstd")
    rng = random.Random(16)
    for _ in range(400):
        damaged = bytearray(body)
        for _ in range(rng.randint(1, 3)):
            damaged[rng.randrange(len(damaged))] ^= 1 << rng.randrange(8)
        try:
            assert decoded_bytes(bytes(damaged)) >= 0
        except ValueError:
            pass
