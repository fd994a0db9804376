"""a device's single-PUT item records that a URL was handed out for it (url_issued): the
gateway hands out URLs a window at a time, and an abort fences only the staging keys of
the items a URL exists for

Revision ID: 0008
Revises: 0007
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # plain ADD COLUMN, as 0004 and 0005: a batch table copy could lose the partial unique index
    op.add_column("transaction_items", sa.Column("url_issued", sa.Boolean(), nullable=False, server_default=sa.false()))
    # an upload open now was begun when every single file got its URL at begin
    op.execute("UPDATE transaction_items SET url_issued = true WHERE status = 'uploading'")


def downgrade() -> None:
    op.drop_column("transaction_items", "url_issued")
