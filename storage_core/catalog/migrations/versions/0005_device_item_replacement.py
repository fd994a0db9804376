"""a device's item records the stored version it was begun to replace (replaces_etag: the
gateway copies over that version only) and the part checksums it declared (part_crc32c,
JSON: every part URL is signed with them, so the parts the store accepted combine to the
file's CRC32C)

Revision ID: 0005
Revises: 0004
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # plain ADD/DROP COLUMN, as 0004: a batch table copy could lose the partial unique index
    op.add_column("transaction_items", sa.Column("replaces_etag", sa.String(length=256), nullable=True))
    op.add_column("transaction_items", sa.Column("part_crc32c", sa.Text(), nullable=True))


def downgrade() -> None:
    op.drop_column("transaction_items", "part_crc32c")
    op.drop_column("transaction_items", "replaces_etag")
