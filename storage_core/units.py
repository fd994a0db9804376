"""Sizes and durations as people type them (pure: no I/O, nothing else of Ferry imported)."""

from __future__ import annotations

import re

_SIZE = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(i?)(b?)\s*", re.IGNORECASE)
_DURATION = re.compile(r"\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*", re.IGNORECASE)
_SECONDS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_size(text: str) -> int:
    """`1GiB`, `256MiB`, `64M` (binary), `1GB` (decimal), `1000000` -> bytes; ValueError otherwise."""
    match = _SIZE.fullmatch(text)
    if not match or (match.group(3) and not match.group(2)):
        raise ValueError(f"not a size: {text!r} (try 1GiB, 256MiB or a number of bytes)")
    number, unit, binary, suffix_b = match.groups()
    power = "kmgt".find(unit.lower()) + 1 if unit else 0
    # a bare unit letter (64M) means binary, as in dd and most CLIs; "MB" is decimal
    base = 1000 if (suffix_b and not binary) else 1024
    return int(float(number) * base**power)


def parse_duration(text: str) -> float:
    """`90`, `90s`, `10m`, `1h`, `500ms` -> seconds; ValueError otherwise."""
    match = _DURATION.fullmatch(text)
    if not match:
        raise ValueError(f"not a duration: {text!r} (try 30s, 10m, 1h)")
    return float(match.group(1)) * _SECONDS[(match.group(2) or "s").lower()]


__all__ = ["parse_duration", "parse_size"]
