"""transaction items remember the ETag of a source object (bucket-prefix landing sources)

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("transaction_items", schema=None) as batch_op:
        batch_op.add_column(sa.Column("source_etag", sa.String(length=256), nullable=True))
    op.create_index("ix_transaction_items_source_path", "transaction_items", ["source_path"], unique=False)


def downgrade() -> None:
    op.drop_index("ix_transaction_items_source_path", table_name="transaction_items")
    with op.batch_alter_table("transaction_items", schema=None) as batch_op:
        batch_op.drop_column("source_etag")
