from __future__ import annotations

import os
import random

import pytest

from storage_core.checksums import combine_parts, crc32c, crc32c_combine
from storage_core.errors import ConfigError
from storage_core.retry import backoff_delays, call_with_retries
from storage_core.parts import MAX_PARTS, MIN_PART_SIZE, Part, choose_part_size, plan_parts, split_parts

MiB = 1024 * 1024
GiB = 1024 * MiB


@pytest.mark.parametrize("size", [0, 1, MIN_PART_SIZE - 1, MIN_PART_SIZE, 16 * MiB + 1, 20 * GiB, 5 * 1024 * GiB])
def test_parts_cover_the_file_exactly(size):
    parts = plan_parts(size, part_size=16 * MiB)
    assert parts[0].start == 0 and parts[-1].end == size
    assert all(a.end == b.start for a, b in zip(parts, parts[1:]))
    assert [p.number for p in parts] == list(range(1, len(parts) + 1))
    assert len(parts) <= MAX_PARTS
    assert all(p.size >= MIN_PART_SIZE for p in parts[:-1])


def test_part_size_floor_and_scaling():
    assert choose_part_size(100 * MiB, part_size=1 * MiB) == MIN_PART_SIZE
    huge = 1024 * GiB  # 1 TiB at 16 MiB would be 65,536 parts
    chosen = choose_part_size(huge, part_size=16 * MiB)
    assert chosen % MiB == 0 and -(-huge // chosen) <= MAX_PARTS
    with pytest.raises(ConfigError, match="5 TiB"):  # a file a user may well have: not a ValueError
        choose_part_size(6 * 1024 * GiB)


def test_crc32c_combine_matches_one_pass():
    rng = random.Random(7)
    pieces = [os.urandom(rng.randrange(0, 100_000)) for _ in range(20)]
    assert combine_parts([(crc32c(p), len(p)) for p in pieces]) == crc32c(b"".join(pieces))
    assert crc32c_combine(crc32c(b"abc"), crc32c(b""), 0) == crc32c(b"abc")


def test_retries_only_retryable_errors():
    class Flaky(Exception):
        retryable = True

    calls = []

    def fn():
        calls.append(1)
        if len(calls) < 3:
            raise Flaky("try again")
        return "ok"

    assert call_with_retries(fn, attempts=5, sleep=lambda s: None) == "ok" and len(calls) == 3
    with pytest.raises(ValueError):
        call_with_retries(lambda: (_ for _ in ()).throw(ValueError("no")), sleep=lambda s: None)
    delays = backoff_delays(6, base=0.5, cap=8.0, rng=random.Random(1))
    assert len(delays) == 5 and all(0 < d <= 8.25 for d in delays)


@pytest.mark.parametrize(("size", "part_size", "sizes"), [
    (0, 5, []),
    (1, 5, [1]),
    (5, 5, [5]),
    (12, 5, [5, 5, 2]),
])
def test_split_parts_cuts_exactly_at_the_part_size(size, part_size, sizes):
    parts = split_parts(size, part_size)
    assert [p.size for p in parts] == sizes
    assert [p.number for p in parts] == list(range(1, len(sizes) + 1))
    assert [p.start for p in parts] == [i * part_size for i in range(len(sizes))]
    with pytest.raises(ValueError):
        split_parts(size, 0)


def test_plan_parts_is_split_parts_at_the_chosen_size():
    size = 100 * MiB + 3
    assert plan_parts(size, part_size=1 * MiB) == split_parts(size, MIN_PART_SIZE)
    assert plan_parts(0) == [Part(1, 0, 0)]  # a multipart upload needs one part, even empty


def test_the_device_client_cuts_parts_as_the_gateway_checks_them(tmp_path):
    from storage_core.device.client import build_manifest
    from storage_core.upload.device import check_part_checksums, part_sizes

    data = os.urandom(12 * MiB + 5)
    (tmp_path / "rec").mkdir()
    (tmp_path / "rec" / "big.bin").write_bytes(data)
    (tmp_path / "rec" / "small.bin").write_bytes(data[: 4 * MiB])
    files = {f["path"]: f for f in build_manifest(tmp_path, "cam-1", part_size=1 * MiB, previous=None)}
    big, small = files["cam-1/rec/big.bin"], files["cam-1/rec/small.bin"]
    assert big["part_size"] == MIN_PART_SIZE  # 1 MiB raised to S3's floor, as the uploader does
    assert part_sizes(big["size"], big["part_size"]) == [p.size for p in plan_parts(len(data), part_size=1 * MiB)]
    assert big["part_crc32c"] == [crc32c(data[p.start:p.end]) for p in split_parts(len(data), MIN_PART_SIZE)]
    check_part_checksums(big["path"], big["size"], big["crc32c"], big["part_size"], big["part_crc32c"])
    assert "part_size" not in small  # within one (chosen) part: a single PUT
