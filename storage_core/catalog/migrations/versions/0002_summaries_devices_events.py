"""summaries (topics), device tokens, upload events

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("stored_objects", schema=None) as batch_op:
        batch_op.add_column(sa.Column("summarized_at", sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column("summary_error", sa.Text(), nullable=True))
    op.create_table(
        "object_topics",
        sa.Column("object_id", sa.Integer(), nullable=False),
        sa.Column("topic", sa.String(length=1024), nullable=False),
        sa.Column("message_count", sa.BigInteger(), nullable=False),
        sa.Column("schema_name", sa.String(length=1024), nullable=True),
        sa.Column("message_encoding", sa.String(length=128), nullable=True),
        sa.ForeignKeyConstraint(["object_id"], ["stored_objects.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("object_id", "topic"),
    )
    op.create_index("ix_object_topics_topic", "object_topics", ["topic"], unique=False)
    op.create_table(
        "device_tokens",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("device_id", sa.String(length=128), nullable=False),
        sa.Column("token_hash", sa.String(length=128), nullable=False),
        sa.Column("label", sa.String(length=256), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_used_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(["device_id"], ["devices.id"]),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("token_hash"),
    )
    op.create_index("ix_device_tokens_device_id", "device_tokens", ["device_id"], unique=False)
    op.create_table(
        "upload_events",
        sa.Column("transaction_id", sa.String(length=32), nullable=False),
        sa.Column("event_id", sa.String(length=64), nullable=False),
        sa.Column("name", sa.String(length=256), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("emitted_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(["transaction_id"], ["transactions.id"]),
        sa.PrimaryKeyConstraint("transaction_id"),
        sa.UniqueConstraint("event_id"),
    )


def downgrade() -> None:
    op.drop_table("upload_events")
    op.drop_index("ix_device_tokens_device_id", table_name="device_tokens")
    op.drop_table("device_tokens")
    op.drop_index("ix_object_topics_topic", table_name="object_topics")
    op.drop_table("object_topics")
    with op.batch_alter_table("stored_objects", schema=None) as batch_op:
        batch_op.drop_column("summary_error")
        batch_op.drop_column("summarized_at")
