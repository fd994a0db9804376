"""Pure range planning: missing gaps, read-ahead, coalescing, splitting."""

from __future__ import annotations

import itertools

import pytest

from storage_core.ranges import coalesce, missing, normalize, plan_read, split


def covered(ranges) -> set[int]:
    return {i for s, e in ranges for i in range(s, e)}


def test_normalize_sorts_merges_touching_and_drops_empty() -> None:
    assert normalize([(5, 7), (0, 2), (2, 3), (4, 4), (6, 9)]) == [(0, 3), (5, 9)]


@pytest.mark.parametrize("cached", [[], [(0, 3)], [(2, 4), (6, 8)], [(1, 2), (3, 5), (9, 10)], [(0, 10)]])
def test_missing_is_exactly_the_uncached_bytes(cached) -> None:
    for start, end in itertools.combinations(range(11), 2):
        gaps = missing(cached, start, end)
        assert covered(gaps) == set(range(start, end)) - covered(cached)
        assert gaps == normalize(gaps)  # sorted, disjoint, not touching


def test_plan_read_never_fetches_cached_bytes_and_reads_ahead() -> None:
    size = 40
    for cached in ([], [(10, 12)], [(0, 5), (20, 25)], [(30, 40)]):
        for start, end in itertools.combinations(range(size + 1), 2):
            plan = plan_read(cached, start, end, size=size, read_ahead=8)
            fetched = covered(plan)
            assert not fetched & covered(cached)
            assert covered(cached) | fetched >= set(range(start, end))
            assert all(e <= size for _, e in plan)
            if plan and end < size and (end - 1) not in covered(cached):
                # read-ahead: fetch up to start + 8 unless a cached byte comes first
                last_end = plan[-1][1]
                assert last_end == max(end, min(start + 8, size, *(s for s, _ in cached if s >= end), size))


def test_plan_read_of_cached_bytes_is_empty() -> None:
    assert plan_read([(0, 100)], 10, 20, size=100, read_ahead=50) == []
    assert plan_read([], 5, 5, size=100, read_ahead=50) == []
    assert plan_read([], 95, 200, size=100, read_ahead=50) == [(95, 100)]


def test_coalesce_bridges_small_uncached_gaps_only() -> None:
    assert coalesce([(0, 10), (15, 20)], max_gap=5) == [(0, 20)]
    assert coalesce([(0, 10), (16, 20)], max_gap=5) == [(0, 10), (16, 20)]
    # a gap holding a cached byte is never bridged
    assert coalesce([(0, 10), (15, 20)], max_gap=5, cached=[(12, 13)]) == [(0, 10), (15, 20)]
    assert coalesce([(15, 20), (0, 10), (8, 12)], max_gap=0) == [(0, 12), (15, 20)]


def test_split_cuts_into_bounded_pieces() -> None:
    assert split([(0, 10), (20, 23)], max_size=4) == [(0, 4), (4, 8), (8, 10), (20, 23)]
    with pytest.raises(ValueError):
        split([(0, 1)], max_size=0)
