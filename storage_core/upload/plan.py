"""Pure part planning for multipart uploads (decide first, act second)."""

from __future__ import annotations

from dataclasses import dataclass

from storage_core.errors import ConfigError

MiB = 1024 * 1024
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


def choose_part_size(size: int, *, part_size: int = 16 * MiB, max_parts: int = MAX_PARTS) -> int:
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


def plan_parts(size: int, *, part_size: int = 16 * MiB, max_parts: int = MAX_PARTS) -> list[Part]:
    """Cover [0, size) with consecutive parts of `choose_part_size` bytes (the last may be shorter).
    An empty object is one empty part."""
    if size < 0:
        raise ValueError("size must not be negative")
    chosen = choose_part_size(size, part_size=part_size, max_parts=max_parts)
    if size == 0:
        return [Part(1, 0, 0)]
    return [Part(n + 1, start, min(start + chosen, size)) for n, start in enumerate(range(0, size, chosen))]




def batch_items(
    items: list[tuple[int, int]], *, large: int = 64 * MiB, batch_bytes: int = 256 * MiB, batch_files: int = 200
) -> list[list[int]]:
    """Group (item id, size) into coarse work units: each large file alone, small files in
    batches of at most `batch_bytes` and `batch_files`, in the order given (pure)."""
    batches: list[list[int]] = []
    current: list[int] = []
    current_bytes = 0
    for item_id, size in items:
        if size >= large:
            batches.append([item_id])
            continue
        if current and (current_bytes + size > batch_bytes or len(current) >= batch_files):
            batches.append(current)
            current, current_bytes = [], 0
        current.append(item_id)
        current_bytes += size
    if current:
        batches.append(current)
    return batches

__all__ = ["MAX_PARTS", "MIN_PART_SIZE", "Part", "batch_items", "choose_part_size", "plan_parts"]
