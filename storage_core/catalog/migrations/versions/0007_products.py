"""derived products keyed by lineage: products (one row per lineage key, the committed
attempt it points at) and product_attempts (each try at writing one, with its lease; at most
one running per key)

Revision ID: 0007
Revises: 0006
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "products",
        sa.Column("key", sa.String(length=64), primary_key=True),
        sa.Column("product", sa.String(length=64), nullable=False),
        sa.Column("recording_id", sa.Integer(), sa.ForeignKey("recordings.id"), nullable=True),
        sa.Column("lineage", sa.Text(), nullable=False),
        sa.Column("committed_attempt_id", sa.String(length=32), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("committed_at", sa.DateTime(timezone=True), nullable=True),
    )
    op.create_index("ix_products_product", "products", ["product"])
    op.create_index("ix_products_recording_id", "products", ["recording_id"])
    op.create_table(
        "product_attempts",
        sa.Column("id", sa.String(length=32), primary_key=True),
        sa.Column("product_key", sa.String(length=64), sa.ForeignKey("products.key", ondelete="CASCADE"), nullable=False),
        sa.Column("store_uri", sa.String(length=1024), nullable=False),
        sa.Column("prefix", sa.String(length=1024), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("owner", sa.String(length=256), nullable=True),
        sa.Column("settings", sa.Text(), nullable=True),
        sa.Column("lease_expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("ended_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("files", sa.Integer(), nullable=True),
        sa.Column("rows", sa.BigInteger(), nullable=True),
        sa.Column("bytes", sa.BigInteger(), nullable=True),
    )
    op.create_index("ix_product_attempts_product_key", "product_attempts", ["product_key"])
    op.create_index(
        "uq_attempt_running_key",
        "product_attempts",
        ["product_key"],
        unique=True,
        sqlite_where=sa.text("state = 'running'"),
        postgresql_where=sa.text("state = 'running'"),
    )


def downgrade() -> None:
    op.drop_table("product_attempts")
    op.drop_table("products")
