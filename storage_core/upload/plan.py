"""Pure planning of upload work: which items go together in one task (decide first, act second).

How a file is cut into parts is storage_core.parts (shared with the gateway and the device client).
"""

from __future__ import annotations

MiB = 1024 * 1024


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


__all__ = ["batch_items"]
