"""What kind of data a file holds, told by its suffix: the one modality table of the project.

The landing scan records each file's modality from it, `ferry summarize URI` picks its
reader from it, and the catalog summarizes the modalities in SUMMARIZABLE.
"""

from __future__ import annotations

from pathlib import PurePosixPath

MODALITIES = {
    ".mcap": "mcap",
    ".parquet": "parquet",
    ".mp4": "video",
    ".mkv": "video",
    ".mov": "video",
    ".avi": "video",
    ".h264": "video",
    ".h265": "video",
    ".ts": "video",
    ".wav": "audio",
    ".flac": "audio",
    ".opus": "audio",
    ".ogg": "audio",
    ".mp3": "audio",
    ".aac": "audio",
}
OTHER = "other"  # any suffix not in MODALITIES
SUMMARIZABLE = ("mcap", "parquet")  # the modalities storage_core.formats can summarize


def modality_of(name: str) -> str:
    """The modality of a file or key `name` by its suffix (any case); OTHER when unknown."""
    return MODALITIES.get(PurePosixPath(name).suffix.lower(), OTHER)


__all__ = ["MODALITIES", "OTHER", "SUMMARIZABLE", "modality_of"]
