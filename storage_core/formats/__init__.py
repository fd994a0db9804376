"""File formats read through byte ranges: MCAP summaries (with a fallback scan), Parquet footers."""

from storage_core.errors import FormatError, NotMcapFile, NotParquetFile
from storage_core.formats.mcap_model import (
    AttachmentInfo,
    ChannelInfo,
    ChunkInfo,
    McapSummary,
    MetadataInfo,
    SchemaInfo,
    TopicSummary,
)
from storage_core.formats.mcap_scan import scan_mcap
from storage_core.formats.mcap_summary import read_mcap_summary
from storage_core.formats.parquet import ParquetColumn, ParquetSummary, read_parquet_summary

__all__ = [
    "AttachmentInfo",
    "ChannelInfo",
    "ChunkInfo",
    "FormatError",
    "McapSummary",
    "MetadataInfo",
    "NotMcapFile",
    "NotParquetFile",
    "ParquetColumn",
    "ParquetSummary",
    "SchemaInfo",
    "TopicSummary",
    "read_mcap_summary",
    "read_parquet_summary",
    "scan_mcap",
]
