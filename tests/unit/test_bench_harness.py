"""The benchmark harness itself: table arithmetic, sizes, child processes. No timings asserted."""

from __future__ import annotations

import argparse
import os
import sys

import pytest

from bench.harness import (
    MiB,
    BenchmarkFailed,
    Result,
    add_size_argument,
    format_table,
    make_random_file,
    parse_size,
    ratio,
    run_command,
    run_python,
)


def _rows(table: str) -> dict[str, list[str]]:
    lines = [line for line in table.splitlines()[1:] if line and not line.startswith("-")]
    return {line.split()[0]: line.split()[1:] for line in lines[1:]}


def test_format_table_ratios_are_against_the_baseline_row() -> None:
    results = [
        Result("curl", seconds=2.0, nbytes=200_000_000, peak_rss_bytes=10 * MiB),  # 100 MB/s
        Result("ferry", seconds=1.0, nbytes=200_000_000, peak_rss_bytes=96 * MiB),  # 200 MB/s
        Result("boto3", seconds=4.0, nbytes=200_000_000, peak_rss_bytes=300 * MiB),  # 50 MB/s
    ]
    table = format_table("upload", results, baseline="curl")
    assert table.splitlines()[0] == "upload"
    rows = _rows(table)
    assert rows["curl"] == ["100.0", "1.00", "2.00", "10"]
    assert rows["ferry"] == ["200.0", "2.00", "1.00", "96"]
    assert rows["boto3"] == ["50.0", "0.50", "4.00", "300"]
    assert ratio(results, "ferry", "boto3") == pytest.approx(4.0)


def test_format_table_rejects_an_unknown_baseline() -> None:
    with pytest.raises(ValueError, match="baseline"):
        format_table("t", [Result("a", 1.0, 1, 0)], baseline="b")


def test_mb_per_s_is_decimal_megabytes() -> None:
    assert Result("a", 0.5, 1_000_000, 0).mb_per_s == pytest.approx(2.0)


@pytest.mark.parametrize("size", [0, 1, 8 * MiB - 1, 8 * MiB, 2 * 8 * MiB + 3])
def test_make_random_file_has_the_exact_size(tmp_path, size: int) -> None:
    path = make_random_file(tmp_path / "f", size, chunk_size=8 * MiB)
    assert os.path.getsize(path) == size


def test_make_random_file_is_not_constant(tmp_path) -> None:
    data = make_random_file(tmp_path / "f", 64 * 1024).read_bytes()
    assert len(set(data)) > 200  # incompressible bytes, not zeros


@pytest.mark.parametrize(
    ("text", "expected"),
    [("1GiB", 1 << 30), ("256MiB", 256 << 20), ("64M", 64 << 20), ("1GB", 10**9), ("4096", 4096), ("1.5KiB", 1536)],
)
def test_parse_size(text: str, expected: int) -> None:
    assert parse_size(text) == expected


@pytest.mark.parametrize("text", ["", "GiB", "1iB", "-3", "one"])
def test_parse_size_rejects_garbage(text: str) -> None:
    with pytest.raises(ValueError):
        parse_size(text)


def test_size_argument() -> None:
    parser = argparse.ArgumentParser()
    add_size_argument(parser, default="256MiB")
    assert parser.parse_args([]).size == 256 << 20
    assert parser.parse_args(["--size", "1GiB"]).size == 1 << 30


def test_run_python_returns_the_childs_dict_and_its_peak_rss() -> None:
    result = run_python("sizes", parse_size_as_dict, "3MiB", nbytes=1)
    assert result.extra["bytes"] == 3 * MiB
    assert result.extra["cpu_seconds"] >= 0
    assert result.peak_rss_bytes > 1 * MiB  # an interpreter, at least
    assert result.seconds >= 0


def test_run_python_surfaces_the_childs_exception() -> None:
    with pytest.raises(BenchmarkFailed, match="not a size"):
        run_python("bad", parse_size_as_dict, "lots", nbytes=1)


def test_run_command_reports_failure_and_success() -> None:
    ok = run_command("true", [sys.executable, "-c", "pass"], nbytes=1)
    assert ok.peak_rss_bytes > 0
    with pytest.raises(BenchmarkFailed, match="exited with 3"):
        run_command("false", [sys.executable, "-c", "raise SystemExit(3)"], nbytes=1)


def parse_size_as_dict(text: str) -> dict[str, int]:
    return {"bytes": parse_size(text)}


def test_peak_rss_is_the_sides_own_not_the_parents() -> None:
    # Linux carries a parent's peak RSS into an exec'd child's ru_maxrss; the harness must not
    ballast = bytearray(300 * MiB)
    ballast[:: 4096] = b"x" * len(ballast[:: 4096])  # touch every page so it is resident
    command = run_command("sleep", [sys.executable, "-c", "pass"], nbytes=1)
    python = run_python("sizes", parse_size_as_dict, "1MiB", nbytes=1)
    assert command.peak_rss_bytes < 200 * MiB
    assert python.peak_rss_bytes < 200 * MiB
    del ballast


def test_format_table_extra_columns() -> None:
    results = [Result("a", 1.0, 10**6, 0, {"cpu_seconds": 1.25}), Result("b", 1.0, 10**6, 0)]
    table = format_table("t", results, baseline="a", extra_columns=("cpu_seconds",))
    assert "cpu_seconds" in table.splitlines()[2]
    assert _rows(table)["a"][-1] == "1.2"
    assert _rows(table)["b"] == ["1.0", "1.00", "1.00", "0"]  # blank cell for a missing value


def test_run_command_whole_env_and_kept_stdout(monkeypatch) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "from-the-caller")
    code = "import os, sys; sys.stdout.write(repr(sorted(k for k in os.environ if k.startswith(('AWS', 'ONLY')))))"
    whole = run_command("env", [sys.executable, "-c", code], nbytes=1, env={"ONLY": "1"}, whole_env=True, keep_stdout=True)
    assert whole.extra["stdout"] == "['ONLY']"  # nothing of the caller's environment
    merged = run_command("env", [sys.executable, "-c", code], nbytes=1, env={"ONLY": "1"}, keep_stdout=True)
    assert "'AWS_ACCESS_KEY_ID'" in merged.extra["stdout"] and "'ONLY'" in merged.extra["stdout"]
    assert "stdout" not in run_command("env", [sys.executable, "-c", code], nbytes=1).extra
