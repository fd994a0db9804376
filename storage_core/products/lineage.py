"""A product's lineage and its key.

The key is the sha256 (hex, stored whole, shown as a 12-digit prefix) of the canonical JSON
of everything that shapes the data: the product's name, its code version, a fingerprint of
its code (so an edit without a version bump still changes the key), its tracked options,
and its inputs (each stored object's URI, size and CRC32C, or an input product's key).

Options are declared per product: *tracked* ones change the data and are in the key;
*untracked* ones (compression, chunk size) change only how it is stored. There are no
per-recording defaults: every value that shapes the data is resolved here, from the
declaration and what the caller set, identically for every recording.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from storage_core.errors import ConfigError

SHORT_KEY = 12


@dataclass(frozen=True)
class OptionSpec:
    name: str
    default: Any
    tracked: bool  # changes the data: part of the key
    choices: tuple[Any, ...] | None = None
    description: str = ""

    def parse(self, value: Any) -> Any:
        """`value` (a CLI string or a typed value) as this option's type, or ConfigError."""
        kind = type(self.default)
        try:
            if kind is bool and isinstance(value, str):
                lowered = value.strip().lower()
                if lowered not in ("true", "false", "1", "0", "yes", "no"):
                    raise ValueError(value)
                parsed: Any = lowered in ("true", "1", "yes")
            elif kind is int and not isinstance(value, bool):
                parsed = int(value)
                if parsed < 1:
                    raise ValueError(value)
            else:
                parsed = kind(value)
        except (TypeError, ValueError):
            raise ConfigError(f"option {self.name}: {value!r} is not a valid {kind.__name__}") from None
        if self.choices is not None and parsed not in self.choices:
            raise ConfigError(f"option {self.name}: {parsed!r} is not one of {', '.join(map(str, self.choices))}")
        return parsed


@dataclass(frozen=True)
class ProductDefinition:
    """What a product is, for keying: its name, code version, the source files whose bytes
    fingerprint its code, and its options."""

    name: str
    code_version: str
    code_files: tuple[Path, ...]
    options: tuple[OptionSpec, ...]
    input_modality: str  # the stored objects of a recording it reads

    @property
    def fingerprint(self) -> str:
        digest = hashlib.sha256()
        for path in self.code_files:
            digest.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
        return digest.hexdigest()

    def resolve(self, given: Mapping[str, Any] | None = None) -> ResolvedOptions:
        """Every option's value: the declared default unless `given` sets it. An unknown
        name is a ConfigError (a typo must not silently produce the default's data)."""
        given = dict(given or {})
        known = {o.name: o for o in self.options}
        unknown = sorted(set(given) - set(known))
        if unknown:
            raise ConfigError(f"product {self.name} has no option {', '.join(unknown)} (it has {', '.join(sorted(known))})")
        values = {name: (spec.parse(given[name]) if name in given else spec.default) for name, spec in known.items()}
        return ResolvedOptions(
            tracked={n: v for n, v in sorted(values.items()) if known[n].tracked},
            untracked={n: v for n, v in sorted(values.items()) if not known[n].tracked},
        )


@dataclass(frozen=True)
class ResolvedOptions:
    tracked: dict[str, Any]
    untracked: dict[str, Any]


def canonical_json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def lineage(
    definition: ProductDefinition, tracked: Mapping[str, Any], inputs: Sequence[Mapping[str, Any]],
) -> dict[str, Any]:
    """The lineage document: inputs are `{"uri", "size", "crc32c"}` or `{"product_key"}`,
    kept in the order given (the order the product reads them in)."""
    return {
        "product": definition.name,
        "code_version": definition.code_version,
        "code_fingerprint": definition.fingerprint,
        "options": dict(sorted(tracked.items())),
        "inputs": [dict(sorted(i.items())) for i in inputs],
    }


def lineage_key(document: Mapping[str, Any]) -> str:
    return hashlib.sha256(canonical_json(document).encode("utf-8")).hexdigest()


def short_key(key: str) -> str:
    return key[:SHORT_KEY]


def change_reason(previous: Mapping[str, Any] | None, current: Mapping[str, Any]) -> str:
    """Why `current` differs from the last product of the same kind and recording: `new`
    (there was none), `code`, `option` or `input` (the first that differs, in that order)."""
    if previous is None:
        return "new"
    if (previous.get("code_version"), previous.get("code_fingerprint")) != (
        current.get("code_version"), current.get("code_fingerprint")
    ):
        return "code"
    if previous.get("options") != current.get("options"):
        return "option"
    if previous.get("inputs") != current.get("inputs"):
        return "input"
    return "new"


__all__ = [
    "OptionSpec",
    "ProductDefinition",
    "ResolvedOptions",
    "canonical_json",
    "change_reason",
    "lineage",
    "lineage_key",
    "short_key",
]
