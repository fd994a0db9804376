"""The retention budget of an archive folder, as the writer and the hand-off both apply it.

Archives not yet uploaded are the closed NAME.mcap and open NAME.mcap.open files at the
folder's top level (uploaded ones are deleted or under uploaded/). The hand-off drops the
oldest uploaded archives to fit the budget and never one not yet uploaded; when those alone
do not fit, the folder is under back-pressure: the writer opens no new archive (it waits,
or refuses records, per its `when_full`) until the hand-off has uploaded enough.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from storage_core.device.archive.format import ARCHIVE_SUFFIX, OPEN_SUFFIX


@dataclass(frozen=True)
class Budget:
    """At most `bytes` bytes and `archives` archives in the folder (None: no limit)."""

    bytes: int | None = None
    archives: int | None = None

    @property
    def limited(self) -> bool:
        return self.bytes is not None or self.archives is not None

    def exceeded(self, paths: list[Path], *, adding: int = 0) -> bool:
        """Whether `paths` (plus `adding` more archives) take more than the budget."""
        if self.archives is not None and len(paths) + adding > self.archives:
            return True
        return self.bytes is not None and sum(map(_size, paths)) > self.bytes

    def text(self) -> str:
        parts = [f"{self.bytes:,} bytes" if self.bytes is not None else "", f"{self.archives} archive(s)" if self.archives is not None else ""]
        return " and ".join(p for p in parts if p)


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:  # uploaded and removed meanwhile
        return 0


def not_uploaded(folder: Path) -> list[Path]:
    """The archives of `folder` not yet uploaded (closed and open, top level), each once.

    A directory listing is no snapshot: one made while the closer renames `NAME.mcap.open`
    to `NAME.mcap` can show both names, or neither. Two listings, one after the other, are
    united: a rename happens at one instant, during at most one of them, so the other
    shows the archive (an archive uploaded in between may be counted: the budget errs on
    the full side, never the empty one)."""
    found: dict[str, Path] = {}
    for _ in range(2):
        for path in folder.iterdir():
            name = path.name
            if name.endswith(ARCHIVE_SUFFIX + OPEN_SUFFIX):
                found.setdefault(name[: -len(OPEN_SUFFIX)], path)
            elif name.endswith(ARCHIVE_SUFFIX) and path.is_file():
                found[name] = path
    return list(found.values())


__all__ = ["Budget", "not_uploaded"]
