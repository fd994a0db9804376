"""telemetry streams: a stream per device and name (epoch, committed end, its table's
location, format and Arrow schema) and its committed appends (first offset, rows, digest)

Revision ID: 0006
Revises: 0005
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "streams",
        sa.Column("id", sa.String(length=300), nullable=False),
        sa.Column("device_id", sa.String(length=128), nullable=False),
        sa.Column("name", sa.String(length=128), nullable=False),
        sa.Column("epoch", sa.BigInteger(), nullable=False),
        sa.Column("committed_end", sa.BigInteger(), nullable=False),
        sa.Column("table_uri", sa.String(length=1024), nullable=False),
        sa.Column("table_format", sa.String(length=16), nullable=False),
        sa.Column("table_version", sa.BigInteger(), nullable=True),
        sa.Column("arrow_schema", sa.Text(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["device_id"], ["devices.id"]),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("device_id", "name", name="uq_stream_device_name"),
    )
    op.create_index("ix_streams_device_id", "streams", ["device_id"], unique=False)
    op.create_table(
        "stream_appends",
        sa.Column("stream_id", sa.String(length=300), nullable=False),
        sa.Column("first_offset", sa.BigInteger(), nullable=False),
        sa.Column("rows", sa.BigInteger(), nullable=False),
        sa.Column("digest", sa.String(length=64), nullable=False),
        sa.Column("epoch", sa.BigInteger(), nullable=False),
        sa.Column("table_version", sa.BigInteger(), nullable=False),
        sa.Column("committed_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["stream_id"], ["streams.id"]),
        sa.PrimaryKeyConstraint("stream_id", "first_offset"),
    )


def downgrade() -> None:
    op.drop_table("stream_appends")
    op.drop_index("ix_streams_device_id", table_name="streams")
    op.drop_table("streams")
