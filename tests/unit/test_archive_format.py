"""Record framing and archive names of storage_core.device.archive (pure functions)."""

from __future__ import annotations

from datetime import datetime, timezone

import pytest

from storage_core.device.archive.format import (
    archive_name,
    check_template,
    decode_record,
    encode_record,
    full_sequence,
)
from storage_core.errors import ConfigError

WHEN = datetime(2026, 12, 1, 8, 30, 5, tzinfo=timezone.utc)


@pytest.mark.parametrize(
    "metadata, payload",
    [({}, b""), ({}, b"\x00\xff" * 10), ({"k": "v", "ünï": "çødé", "": ""}, b'{"json": 1}'), ({"a" * 300: "b" * 70000}, b"x")],
)
def test_a_record_reads_back_exactly(metadata: dict[str, str], payload: bytes) -> None:
    assert decode_record(encode_record(metadata, payload)) == (metadata, payload)


def test_empty_metadata_costs_four_bytes() -> None:
    assert encode_record(None, b"abc") == b"\0\0\0\0abc"


@pytest.mark.parametrize("data", [b"", b"\x01\x00", b"\xff\x00\x00\x00abc", b"\x08\x00\x00\x00\x09\x00\x00\x00abcd"])
def test_broken_framing_is_refused(data: bytes) -> None:
    with pytest.raises(ValueError):
        decode_record(data)


def test_metadata_must_be_strings() -> None:
    with pytest.raises(ConfigError):
        encode_record({"k": 1}, b"")  # type: ignore[dict-item]


def test_the_u64_sequence_is_rebuilt_across_the_u32_wrap() -> None:
    first = 2**32 - 2
    assert [full_sequence(first, (first + i) % 2**32) for i in range(5)] == [first + i for i in range(5)]
    assert full_sequence(7, 7) == 7


def test_names_take_strftime_fields_and_the_sequence() -> None:
    assert archive_name("robot-%Y%m%d-%H%M%S-{seq:04d}", 12, WHEN) == "robot-20261201-083005-0012.mcap"
    assert archive_name(check_template("cam-%H%M"), 3, WHEN) == "cam-0830-000003.mcap"  # {seq} added
    assert archive_name(check_template("{seq}"), 3, WHEN) == "3.mcap"


def test_two_sequences_in_one_second_never_share_a_name() -> None:
    template = check_template("%Y%m%dT%H%M%S")
    assert len({archive_name(template, seq, WHEN) for seq in range(100)}) == 100


@pytest.mark.parametrize("template", ["a/b-{seq}", "", "{seq:q}"])
def test_bad_templates_are_refused(template: str) -> None:
    with pytest.raises(ConfigError):
        check_template(template)
