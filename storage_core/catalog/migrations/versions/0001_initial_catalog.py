"""initial catalog

Revision ID: 0001
Revises: (none)
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0001'
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('devices',
    sa.Column('id', sa.String(length=128), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id')
    )
    op.create_table('transactions',
    sa.Column('id', sa.String(length=32), nullable=False),
    sa.Column('device_id', sa.String(length=128), nullable=True),
    sa.Column('origination', sa.String(length=256), nullable=False),
    sa.Column('destination', sa.String(length=1024), nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('error', sa.Text(), nullable=True),
    sa.Column('flow_run_id', sa.String(length=64), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('finished_at', sa.DateTime(timezone=True), nullable=True),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('transactions', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_transactions_device_id'), ['device_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_transactions_status'), ['status'], unique=False)

    op.create_table('recordings',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('device_id', sa.String(length=128), nullable=False),
    sa.Column('name', sa.String(length=512), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('started_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('ended_at', sa.DateTime(timezone=True), nullable=True),
    sa.ForeignKeyConstraint(['device_id'], ['devices.id'], ),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('device_id', 'name', name='uq_recording_device_name')
    )
    with op.batch_alter_table('recordings', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_recordings_device_id'), ['device_id'], unique=False)

    op.create_table('transaction_items',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('transaction_id', sa.String(length=32), nullable=False),
    sa.Column('source_path', sa.String(length=4096), nullable=False),
    sa.Column('device_id', sa.String(length=128), nullable=False),
    sa.Column('recording', sa.String(length=512), nullable=False),
    sa.Column('relative_path', sa.String(length=1024), nullable=False),
    sa.Column('modality', sa.String(length=64), nullable=False),
    sa.Column('store_uri', sa.String(length=1024), nullable=False),
    sa.Column('key', sa.String(length=1024), nullable=False),
    sa.Column('size', sa.BigInteger(), nullable=False),
    sa.Column('mtime_ns', sa.BigInteger(), nullable=True),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('upload_id', sa.String(length=1024), nullable=True),
    sa.Column('part_size', sa.BigInteger(), nullable=True),
    sa.Column('crc32c', sa.BigInteger(), nullable=True),
    sa.Column('etag', sa.String(length=256), nullable=True),
    sa.Column('error', sa.Text(), nullable=True),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['transaction_id'], ['transactions.id'], ),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('transaction_items', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_transaction_items_transaction_id'), ['transaction_id'], unique=False)
        batch_op.create_index('uq_item_active_destination', ['store_uri', 'key'], unique=True, sqlite_where=sa.text("status IN ('pending', 'uploading')"), postgresql_where=sa.text("status IN ('pending', 'uploading')"))

    op.create_table('multipart_parts',
    sa.Column('item_id', sa.Integer(), nullable=False),
    sa.Column('part_number', sa.Integer(), nullable=False),
    sa.Column('size', sa.BigInteger(), nullable=False),
    sa.Column('crc32c', sa.BigInteger(), nullable=False),
    sa.Column('etag', sa.String(length=256), nullable=False),
    sa.Column('stored_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['item_id'], ['transaction_items.id'], ),
    sa.PrimaryKeyConstraint('item_id', 'part_number')
    )
    op.create_table('stored_objects',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('recording_id', sa.Integer(), nullable=True),
    sa.Column('store_uri', sa.String(length=1024), nullable=False),
    sa.Column('key', sa.String(length=1024), nullable=False),
    sa.Column('relative_path', sa.String(length=1024), nullable=False),
    sa.Column('modality', sa.String(length=64), nullable=False),
    sa.Column('size', sa.BigInteger(), nullable=False),
    sa.Column('crc32c', sa.BigInteger(), nullable=False),
    sa.Column('etag', sa.String(length=256), nullable=False),
    sa.Column('transaction_id', sa.String(length=32), nullable=True),
    sa.Column('flow_run_id', sa.String(length=64), nullable=True),
    sa.Column('stored_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('summary', sa.Text(), nullable=True),
    sa.ForeignKeyConstraint(['recording_id'], ['recordings.id'], ),
    sa.ForeignKeyConstraint(['transaction_id'], ['transactions.id'], ),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('store_uri', 'key', name='uq_object_location')
    )
    with op.batch_alter_table('stored_objects', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_stored_objects_modality'), ['modality'], unique=False)
        batch_op.create_index(batch_op.f('ix_stored_objects_recording_id'), ['recording_id'], unique=False)



def downgrade() -> None:
    with op.batch_alter_table('stored_objects', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_stored_objects_recording_id'))
        batch_op.drop_index(batch_op.f('ix_stored_objects_modality'))

    op.drop_table('stored_objects')
    op.drop_table('multipart_parts')
    with op.batch_alter_table('transaction_items', schema=None) as batch_op:
        batch_op.drop_index('uq_item_active_destination', sqlite_where=sa.text("status IN ('pending', 'uploading')"), postgresql_where=sa.text("status IN ('pending', 'uploading')"))
        batch_op.drop_index(batch_op.f('ix_transaction_items_transaction_id'))

    op.drop_table('transaction_items')
    with op.batch_alter_table('recordings', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_recordings_device_id'))

    op.drop_table('recordings')
    with op.batch_alter_table('transactions', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_transactions_status'))
        batch_op.drop_index(batch_op.f('ix_transactions_device_id'))

    op.drop_table('transactions')
    op.drop_table('devices')
