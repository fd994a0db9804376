"""The one modality table: what the scan records and what `ferry summarize` reads."""

from __future__ import annotations

import pytest

from storage_core import manifest
from storage_core.errors import ConfigError
from storage_core.formats.summarize import summarize_uri
from storage_core.modalities import MODALITIES, OTHER, SUMMARIZABLE, modality_of


@pytest.mark.parametrize(("name", "modality"), [
    ("log.mcap", "mcap"),
    ("run/telemetry.PARQUET", "parquet"),
    ("video/front/0001.h264", "video"),
    ("audio/0000.wav", "audio"),
    ("notes.txt", OTHER),
    ("no_suffix", OTHER),
    ("archive.mcap.zst", OTHER),  # the last suffix decides: a compressed MCAP is not readable as one
])
def test_modality_of_a_name(name: str, modality: str) -> None:
    assert modality_of(name) == modality


def test_the_scan_and_the_summarizer_share_the_table() -> None:
    assert manifest.modality_of is modality_of and manifest.MODALITIES is MODALITIES
    assert set(SUMMARIZABLE) <= set(MODALITIES.values())


def test_summarize_refuses_a_modality_it_cannot_read(tmp_path) -> None:
    (tmp_path / "clip.mp4").write_bytes(b"\0" * 16)
    with pytest.raises(ConfigError, match="only .mcap and .parquet"):
        summarize_uri((tmp_path / "clip.mp4").as_uri())
