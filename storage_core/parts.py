"""Part math for multipart uploads, in one place: the uploader, the gateway and the device
client all cut a file with `split_parts` (pure; importing this module loads only the error tree, so a
device can use it).

    choose_part_size(size, part_size=…)   the part size to use: S3's bounds, ≤ 10,000 parts
    split_parts(size, part_size)          [0, size) cut into parts of exactly that size
    plan_parts(size, part_size=…)         both: what the uploader runs

Parts count from 1, as S3 does; `start` is inclusive, `end` exclusive.
"""

from __future__ import annotations

from dataclasses import dataclass

from storage_core.errors import ConfigError

MiB = 1024 * 1024
DEFAULT_PART_SIZE = 16 * MiB
MIN_PART_SIZE = 5 * MiB  # S3's floor for every part but the last
MAX_PART_SIZE = 5 * 1024 * MiB
MAX_PARTS = 10_000
MAX_OBJECT_SIZE = 5 * 1024 * 1024 * MiB  # 5 TiB


@dataclass(frozen=True)
class Part:
    number: int  # 1-based, as S3 counts
    start: int  # inclusive
    end: int  # exclusive

    @property
    def size(self) -> int:
        return self.end - self.start


def choose_part_size(size: int, *, part_size: int = DEFAULT_PART_SIZE, max_parts: int = MAX_PARTS) -> int:
    """`part_size` raised to the 5 MiB floor, and scaled up (in whole MiB) so `size` fits in `max_parts`."""
    if size > MAX_OBJECT_SIZE:
        raise ConfigError(f"{size} bytes exceeds the 5 TiB object limit")
    chosen = max(part_size, MIN_PART_SIZE)
    if -(-size // chosen) > max_parts:
        needed = -(-size // max_parts)
        chosen = -(-needed // MiB) * MiB
    if chosen > MAX_PART_SIZE:
        raise ConfigError(f"{size} bytes needs parts larger than 5 GiB")
    return chosen


def split_parts(size: int, part_size: int) -> list[Part]:
    """[0, size) as consecutive parts of `part_size` bytes, the last one shorter when `size`
    is not a multiple; no part for 0 bytes. No bounds are applied: the gateway checks a
    device's declared `part_size` against them, the uploader chooses one within them."""
    if size < 0 or part_size <= 0:
        raise ValueError(f"cannot cut {size} bytes into parts of {part_size}")
    return [Part(n + 1, start, min(start + part_size, size)) for n, start in enumerate(range(0, size, part_size))]


def plan_parts(size: int, *, part_size: int = DEFAULT_PART_SIZE, max_parts: int = MAX_PARTS) -> list[Part]:
    """Cover [0, size) with consecutive parts of `choose_part_size` bytes (the last may be shorter).
    An empty object is one empty part (a multipart upload needs at least one)."""
    if size < 0:
        raise ValueError("size must not be negative")
    return split_parts(size, choose_part_size(size, part_size=part_size, max_parts=max_parts)) or [Part(1, 0, 0)]


__all__ = [
    "DEFAULT_PART_SIZE",
    "MAX_OBJECT_SIZE",
    "MAX_PARTS",
    "MAX_PART_SIZE",
    "MIN_PART_SIZE",
    "Part",
    "choose_part_size",
    "plan_parts",
    "split_parts",
]
