"""`ferry summarize`: MCAP and Parquet summaries read through ranges."""

from __future__ import annotations
