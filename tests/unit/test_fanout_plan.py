"""Planning a fan-out (pure): recording groups of whole recordings, their JSON round trip,
and which deployment the children run as."""

from __future__ import annotations

from pathlib import Path

import pytest

from storage_core.errors import ConfigError
from storage_core.manifest import ManifestEntry
from storage_core.upload.groups import RecordingGroup, plan_groups


def _entry(device: str, recording: str, name: str, *, etag: str | None = None) -> ManifestEntry:
    path = f"s3://landing/{device}/{recording}/{name}" if etag else Path(f"/in/{device}/{recording}/{name}")
    return ManifestEntry(path=path, device_id=device, recording=recording, relative_path=name, size=len(name),
                         mtime_ns=None if etag else 123, modality="other", crc32c=7 if etag else None, source_etag=etag)


ENTRIES = [_entry(d, r, f) for d in ("b", "a") for r in ("r2", "r1") for f in ("y.bin", "x.bin")]


def test_groups_hold_whole_recordings_in_order():
    groups = plan_groups(ENTRIES)
    assert [g.recordings for g in groups] == [("a/r1",), ("a/r2",), ("b/r1",), ("b/r2",)]
    assert [e.relative_path for e in groups[0].entries] == ["x.bin", "y.bin"]
    assert len({g.transaction_id for g in groups}) == 4  # one transaction each


def test_group_size_packs_recordings_and_never_splits_one():
    groups = plan_groups(ENTRIES, group_size=3)
    assert [g.recordings for g in groups] == [("a/r1", "a/r2", "b/r1"), ("b/r2",)]
    assert [len(g.entries) for g in groups] == [6, 2]
    with pytest.raises(ConfigError, match="at least 1 recording"):
        plan_groups(ENTRIES, group_size=0)


def test_a_group_survives_its_json_round_trip():
    entries = [_entry("a", "r1", "x.bin"), _entry("a", "r1", "o.bin", etag='"e1"')]
    [group] = plan_groups(entries)
    again = RecordingGroup.from_json(group.to_json())
    assert again == group
    assert isinstance(again.entries[1].path, Path) and isinstance(again.entries[0].path, str)  # file vs object URI


def test_children_run_in_process_unless_a_deployment_is_named_or_the_parent_is_deployed():
    from flows.fanout import FanOut, child_deployment

    assert child_deployment(FanOut(), "ingest-items/ingest-items") is None  # not in a deployment's run
    assert child_deployment(FanOut(deployment=""), "ingest-items/ingest-items") is None
    assert child_deployment(FanOut(deployment="x/y"), "ingest-items/ingest-items") == "x/y"
