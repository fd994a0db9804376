"""plan_writes, layouts and range planning: pure, exhaustive, no server."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from storage_core.download import (
    LAYOUTS,
    DownloadSource,
    PlannedWrite,
    RetryPolicy,
    WritePlanError,
    plan_ranges,
    plan_writes,
)
from storage_core.errors import ConfigError

STORE = object()  # planning never touches the store


def seg(rel: str, *, device="dev1", recording="rec1", modality="video", key: str | None = None) -> DownloadSource:
    return DownloadSource(
        store=STORE, key=f"{device}/{recording}/{modality}/{rel}" if key is None else key, size=1, device_id=device,
        recording=recording, modality=modality, segmented=True, relative_path=rel,
    )


def art(modality: str, ext: str, *, device="dev1", recording="rec1", key: str | None = None) -> DownloadSource:
    return DownloadSource(
        store=STORE, key=key or f"{device}/{recording}/processed/{modality}.{ext}", size=1, device_id=device,
        recording=recording, modality=modality, segmented=False, ext=ext,
    )


def rel(plan: list[PlannedWrite], root: Path) -> list[str]:
    return [w.dest.relative_to(root).as_posix() for w in plan]


def kinds(exc: WritePlanError) -> list[str]:
    return sorted(p.kind for p in exc.problems)


# --- layouts --------------------------------------------------------------------------------

EXPECTED = {
    "by_recording": ["dev1/rec1/video/a/0001.mp4", "dev1/rec1/imu.parquet"],
    "by_modality": ["video/dev1/rec1/a/0001.mp4", "imu/dev1/rec1/imu.parquet"],
    "flat": ["dev1__rec1__video/a/0001.mp4", "dev1__rec1__imu.parquet"],
}


@pytest.mark.parametrize("layout", LAYOUTS)
def test_layout_paths_for_segments_and_processed_artifacts(tmp_path, layout):
    plan = plan_writes([seg("a/0001.mp4"), art("imu", "parquet")], tmp_path, layout=layout)
    assert rel(plan, tmp_path) == EXPECTED[layout]
    assert [w.part.name for w in plan] == [Path(p).name + ".part" for p in EXPECTED[layout]]


def test_default_layout_is_by_recording(tmp_path):
    assert rel(plan_writes([seg("x")], tmp_path), tmp_path) == ["dev1/rec1/video/x"]


def test_leading_dot_of_ext_is_ignored(tmp_path):
    assert rel(plan_writes([art("log", ".mcap")], tmp_path), tmp_path) == ["dev1/rec1/log.mcap"]


def test_unknown_layout_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="unknown download layout"):
        plan_writes([seg("x")], tmp_path, layout="by_day")  # type: ignore[arg-type]


def test_empty_input_plans_nothing(tmp_path):
    assert plan_writes([], tmp_path) == []


# --- order ----------------------------------------------------------------------------------


def test_order_is_recording_then_modality_first_seen_then_segment_path(tmp_path):
    sources = [
        seg("b", recording="r2"), seg("c", recording="r1", modality="audio"), seg("b", recording="r1"),
        seg("a", recording="r2"), art("imu", "parquet", recording="r1"), seg("a", recording="r1", modality="audio"),
    ]
    plan = plan_writes(sources, tmp_path)
    assert rel(plan, tmp_path) == [
        "dev1/r2/video/a", "dev1/r2/video/b",
        "dev1/r1/audio/a", "dev1/r1/audio/c",
        "dev1/r1/video/b",
        "dev1/r1/imu.parquet",
    ]
    # deterministic whatever order the segments of one modality arrive in
    assert plan_writes(list(reversed(sources[:1] + sources[3:4])), tmp_path)[0].dest.name == "a"


def test_a_generator_is_accepted(tmp_path):
    assert len(plan_writes((seg(str(i)) for i in range(3)), tmp_path)) == 3


# --- unsafe names ---------------------------------------------------------------------------


@pytest.mark.parametrize("bad_rel", ["../escape", "a/../../b", "/abs/path", "a//b", "", "a/./b", "back\\slash", "nul\x00"])
def test_unsafe_relative_paths_are_refused(tmp_path, bad_rel):
    with pytest.raises(WritePlanError) as info:
        plan_writes([seg(bad_rel, key="ok/key")], tmp_path)
    assert kinds(info.value) == ["unsafe"]


@pytest.mark.parametrize("bad_key", ["/etc/passwd", "a/../b", "a//b", ""])
def test_unsafe_source_keys_are_refused(tmp_path, bad_key):
    with pytest.raises(WritePlanError) as info:
        plan_writes([seg("x", key=bad_key)], tmp_path)
    assert "unsafe source key" in str(info.value)


@pytest.mark.parametrize("field", ["device", "recording", "modality"])
@pytest.mark.parametrize("value", ["..", ".", "", "a/b", "a\\b"])
def test_unsafe_name_components_are_refused(tmp_path, field, value):
    with pytest.raises(WritePlanError) as info:
        plan_writes([seg("x", key="k", **{field: value})], tmp_path)
    assert kinds(info.value) == ["unsafe"]


@pytest.mark.parametrize("ext", ["", "a/b", "/"])
def test_processed_artifact_needs_a_safe_extension(tmp_path, ext):
    with pytest.raises(WritePlanError):
        plan_writes([art("imu", ext, key="k")], tmp_path)


def test_over_long_names_are_refused_with_room_for_the_part_suffix(tmp_path):
    fits = "x" * (255 - len(".part"))
    [write] = plan_writes([seg(fits)], tmp_path)
    assert write.dest.name == fits and len(write.part.name.encode()) <= 255
    with pytest.raises(WritePlanError, match="longer than"):
        plan_writes([seg(fits + "y")], tmp_path)
    with pytest.raises(WritePlanError, match="longer than"):
        plan_writes([seg("x", device="d" * 120, recording="r" * 120, modality="m" * 20)], tmp_path, layout="flat")


@pytest.mark.parametrize(("layout", "path"), [("by_recording", "a__b/_r_/m_/x"), ("by_modality", "m_/a__b/_r_/x")])
def test_underscores_are_fine_outside_flat(tmp_path, layout, path):
    plan = plan_writes([seg("x", device="a__b", recording="_r_", modality="m_")], tmp_path, layout=layout)
    assert rel(plan, tmp_path) == [path]
    assert [w.present for w in plan] == [False]


@pytest.mark.parametrize(("device", "recording"), [("a__b", "c"), ("a_", "b"), ("a", "_b"), ("_a", "b")])
def test_flat_refuses_names_that_would_be_ambiguous(tmp_path, device, recording):
    with pytest.raises(WritePlanError) as info:
        plan_writes([seg("x", device=device, recording=recording)], tmp_path, layout="flat")
    assert kinds(info.value) == ["ambiguous"]


def test_flat_ambiguity_example_that_motivates_the_rule(tmp_path):
    # without the rule, both would land in dev1___rec1__video/
    with pytest.raises(WritePlanError) as info:
        plan_writes([seg("x", device="dev1_", recording="rec1"), seg("x", device="dev1", recording="_rec1")],
                    tmp_path, layout="flat")
    assert kinds(info.value) == ["ambiguous", "ambiguous"]


# --- collisions -----------------------------------------------------------------------------


def test_two_sources_for_one_destination_are_reported(tmp_path):
    with pytest.raises(WritePlanError) as info:
        plan_writes([seg("x", key="k1"), seg("x", key="k2")], tmp_path)
    (problem,) = info.value.problems
    assert problem.kind == "duplicate" and "k1" in problem.message and "k2" in problem.message


def test_same_source_twice_is_a_duplicate(tmp_path):
    with pytest.raises(WritePlanError, match="both be written"):
        plan_writes([seg("x"), seg("x")], tmp_path)


def test_duplicates_only_in_one_layout(tmp_path):
    # by_modality puts a processed artifact among its own modality's segments
    sources = [seg("imu.parquet", modality="imu"), art("imu", "parquet")]
    plan = plan_writes(sources, tmp_path, layout="by_recording")
    assert rel(plan, tmp_path) == ["dev1/rec1/imu.parquet", "dev1/rec1/imu/imu.parquet"]  # the artifact, then its folder
    with pytest.raises(WritePlanError) as info:
        plan_writes(sources, tmp_path, layout="by_modality")
    assert kinds(info.value) == ["duplicate"]


def test_a_path_that_is_both_file_and_folder_is_a_conflict(tmp_path):
    with pytest.raises(WritePlanError) as info:
        plan_writes([seg("a"), seg("a/b")], tmp_path)
    assert kinds(info.value) == ["conflict"]
    # a processed artifact named like another modality's folder
    with pytest.raises(WritePlanError) as info:
        plan_writes([seg("x", modality="imu.parquet"), art("imu", "parquet")], tmp_path)
    assert kinds(info.value) == ["duplicate"] or kinds(info.value) == ["conflict"]


def test_a_destination_that_is_another_ones_part_file_is_a_conflict(tmp_path):
    with pytest.raises(WritePlanError) as info:
        plan_writes([seg("a.mp4"), seg("a.mp4.part")], tmp_path)
    assert kinds(info.value) == ["conflict"]


# --- what the disk already holds ------------------------------------------------------------


def test_existing_files_are_all_reported_together_unless_overwrite(tmp_path):
    sources = [seg("a"), seg("b"), seg("c")]
    folder = tmp_path / "dev1/rec1/video"
    folder.mkdir(parents=True)
    (folder / "a").write_bytes(b"old")
    (folder / "c").write_bytes(b"old")
    with pytest.raises(WritePlanError) as info:
        plan_writes(sources, tmp_path)
    assert [(p.kind, p.path.name) for p in info.value.problems] == [("exists", "a"), ("exists", "c")]
    assert "overwrite=True" in str(info.value)
    assert len(plan_writes(sources, tmp_path, overwrite=True)) == 3
    assert (folder / "a").read_bytes() == b"old"  # planning never writes


def test_a_stray_part_file_is_not_a_problem(tmp_path):
    folder = tmp_path / "dev1/rec1/video"
    folder.mkdir(parents=True)
    (folder / "a.part").write_bytes(b"left by a killed run")
    [write] = plan_writes([seg("a")], tmp_path)
    assert write.dest == folder / "a" and not write.present
    # the download writes its own `.part` beside the destination, never the stray one
    assert write.part.parent == folder and write.part.name.startswith("a") and write.part.name.endswith(".part")


def test_an_existing_folder_at_a_file_path_is_refused_even_with_overwrite(tmp_path):
    (tmp_path / "dev1/rec1/video/a").mkdir(parents=True)
    with pytest.raises(WritePlanError, match="existing folder"):
        plan_writes([seg("a")], tmp_path, overwrite=True)


def test_a_file_where_a_folder_is_needed_is_refused_once(tmp_path):
    (tmp_path / "dev1").write_bytes(b"not a folder")
    with pytest.raises(WritePlanError) as info:
        plan_writes([seg("a"), seg("b"), art("imu", "parquet")], tmp_path)
    assert [p.message for p in info.value.problems] == [f"{tmp_path / 'dev1'} exists and is not a folder"]


def test_dest_itself_may_not_exist_yet(tmp_path):
    plan = plan_writes([seg("a")], tmp_path / "new" / "deeper")
    assert plan[0].dest == tmp_path / "new/deeper/dev1/rec1/video/a"
    assert not (tmp_path / "new").exists()


def test_unwritable_destination_is_reported(tmp_path, monkeypatch):
    monkeypatch.setattr(os, "access", lambda path, mode: Path(path) != tmp_path)
    with pytest.raises(WritePlanError) as info:
        plan_writes([seg("a"), seg("b")], tmp_path)
    assert [(p.kind, p.path) for p in info.value.problems] == [("not_writable", tmp_path / "dev1/rec1/video")]
    assert f"{tmp_path} is not writable" in str(info.value)


def test_every_kind_of_problem_in_one_error(tmp_path):
    (tmp_path / "dev1/rec1/video").mkdir(parents=True)
    (tmp_path / "dev1/rec1/video/exists").write_bytes(b"")
    sources = [seg("../up", key="k0"), seg("dup", key="k1"), seg("dup", key="k2"), seg("exists"),
               seg("x", device="..", key="k3")]
    with pytest.raises(WritePlanError) as info:
        plan_writes(sources, tmp_path)
    assert kinds(info.value) == ["duplicate", "exists", "unsafe", "unsafe"]
    first_line = str(info.value).splitlines()[0]
    assert first_line.startswith("download refused, nothing written:") and "(and 3 more)" in first_line


def test_long_problem_lists_are_truncated_in_the_message_but_kept_whole(tmp_path):
    with pytest.raises(WritePlanError) as info:
        plan_writes([seg(f"../{i}", key=f"k{i}") for i in range(80)], tmp_path)
    assert len(info.value.problems) == 80
    assert "... 30 more" in str(info.value)


# --- ranges and retry policy ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("size", "chunk", "expected"),
    [
        (0, 4, []),
        (1, 4, [(0, 1)]),
        (4, 4, [(0, 4)]),
        (5, 4, [(0, 4), (4, 5)]),
        (12, 4, [(0, 4), (4, 8), (8, 12)]),
    ],
)
def test_plan_ranges(size, chunk, expected):
    assert plan_ranges(size, chunk) == expected


def test_plan_ranges_cover_without_gaps():
    for size in (1, 7, 1000, 8 * 1024 * 1024 + 3):
        spans = plan_ranges(size, 4096)
        assert spans[0][0] == 0 and spans[-1][1] == size
        assert all(a[1] == b[0] for a, b in zip(spans, spans[1:]))


def test_plan_ranges_refuses_a_silly_chunk():
    with pytest.raises(ValueError):
        plan_ranges(10, 0)


def test_retry_delays_grow_with_jitter_and_are_capped():
    import random

    policy = RetryPolicy(attempts=6, base=0.25, cap=2.0)
    rng = random.Random(7)
    for attempt in range(8):
        ceiling = min(2.0, 0.25 * 2**attempt)
        delays = {policy.delay(attempt, rng) for _ in range(20)}
        assert all(ceiling / 2 <= d <= ceiling for d in delays)
        assert len(delays) > 1  # jittered
