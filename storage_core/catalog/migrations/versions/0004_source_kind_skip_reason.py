"""transaction items say where their bytes come from (source_kind) and why one was skipped
(skip_reason), as columns instead of text: a device's items were told apart by the
`device:` prefix of source_path, a busy destination by the words of the error message

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

DEVICE_PREFIX = "device:"  # how revisions up to 0003 marked a device's items (source_path prefix)


def upgrade() -> None:
    # plain ADD/DROP COLUMN (SQLite >= 3.35 has both): a batch table copy could lose the
    # partial unique index on the active destinations
    op.add_column(
        "transaction_items", sa.Column("source_kind", sa.String(length=16), nullable=False, server_default="file")
    )
    op.add_column("transaction_items", sa.Column("skip_reason", sa.String(length=16), nullable=True))
    op.execute(
        sa.text(
            "UPDATE transaction_items SET source_kind = 'device', source_path = substr(source_path, :start) "
            "WHERE source_path LIKE :prefix"
        ).bindparams(start=len(DEVICE_PREFIX) + 1, prefix=f"{DEVICE_PREFIX}%")
    )
    op.execute("UPDATE transaction_items SET source_kind = 'object' WHERE source_kind = 'file' AND source_etag IS NOT NULL")
    # the last time the reason is read from the message: 0003's begin wrote exactly these words
    op.execute(
        "UPDATE transaction_items SET skip_reason = CASE WHEN error LIKE 'being uploaded by transaction %' "
        "THEN 'busy' ELSE 'identical' END WHERE status = 'skipped'"
    )


def downgrade() -> None:
    op.execute(
        sa.text(
            "UPDATE transaction_items SET source_path = :prefix || source_path WHERE source_kind = 'device'"
        ).bindparams(prefix=DEVICE_PREFIX)
    )
    op.drop_column("transaction_items", "skip_reason")
    op.drop_column("transaction_items", "source_kind")
