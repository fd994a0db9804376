"""`ferry query` and `ferry download`: what the catalog holds, and restoring it to disk."""

from __future__ import annotations
