"""Telemetry streams on the server side: the append rules (commit), the committed Delta
table (table) and reading it back (read). The device's half is storage_core.device.stream."""

from storage_core.streams.commit import AppendHeader, AppendResult, append_frame
from storage_core.streams.table import DeltaStreamTable, StreamTables, TableLocation, location_of, table_location

__all__ = [
    "AppendHeader",
    "AppendResult",
    "DeltaStreamTable",
    "StreamTables",
    "TableLocation",
    "append_frame",
    "location_of",
    "table_location",
]
