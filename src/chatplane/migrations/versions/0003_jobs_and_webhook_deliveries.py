"""jobs and webhook deliveries

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-23 20:32:03.751177
"""
import secrets

from alembic import op
import sqlalchemy as sa
import chatplane.db
from sqlalchemy.dialects import postgresql

revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None


def upgrade() -> None:

    op.create_table('jobs',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('kind', sa.String(length=64), nullable=False),
    sa.Column('payload', sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql'), nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('attempts', sa.Integer(), nullable=False),
    sa.Column('max_attempts', sa.Integer(), nullable=False),
    sa.Column('run_at', chatplane.db.UTCDateTime(timezone=True), nullable=False),
    sa.Column('lease_until', chatplane.db.UTCDateTime(timezone=True), nullable=True),
    sa.Column('locked_by', sa.String(length=64), nullable=True),
    sa.Column('ordering_key', sa.String(length=128), nullable=True),
    sa.Column('dedupe_key', sa.String(length=255), nullable=True),
    sa.Column('last_error', sa.Text(), nullable=True),
    sa.Column('created_at', chatplane.db.UTCDateTime(timezone=True), nullable=False),
    sa.Column('finished_at', chatplane.db.UTCDateTime(timezone=True), nullable=True),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_jobs'))
    )
    with op.batch_alter_table('jobs', schema=None) as batch_op:
        batch_op.create_index('ix_jobs_claim', ['status', 'run_at'], unique=False)
        batch_op.create_index('ix_jobs_dedupe', ['kind', 'dedupe_key'], unique=True)
        batch_op.create_index('ix_jobs_ordering', ['ordering_key', 'id'], unique=False)

    op.create_table('webhook_deliveries',
    sa.Column('id', sa.String(length=64), nullable=False),
    sa.Column('workspace_id', sa.Integer(), nullable=False),
    sa.Column('chat_id', sa.String(length=64), nullable=True),
    sa.Column('event', sa.String(length=32), nullable=False),
    sa.Column('url', sa.String(length=2048), nullable=False),
    sa.Column('payload', sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql'), nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('attempts', sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql'), nullable=False),
    sa.Column('created_at', chatplane.db.UTCDateTime(timezone=True), nullable=False),
    sa.Column('delivered_at', chatplane.db.UTCDateTime(timezone=True), nullable=True),
    sa.ForeignKeyConstraint(['workspace_id'], ['workspaces.id'], name=op.f('fk_webhook_deliveries_workspace_id_workspaces')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_webhook_deliveries'))
    )
    with op.batch_alter_table('webhook_deliveries', schema=None) as batch_op:
        batch_op.create_index('ix_webhook_deliveries_workspace_id', ['workspace_id', 'id'], unique=False)

    with op.batch_alter_table('workspaces', schema=None) as batch_op:
        batch_op.add_column(sa.Column('webhook_key', sa.String(length=128), nullable=True))

    # Every workspace that already exists gets its own signing key.
    conn = op.get_bind()
    for (workspace_id,) in conn.execute(sa.text("SELECT id FROM workspaces")).all():
        conn.execute(
            sa.text("UPDATE workspaces SET webhook_key = :key WHERE id = :id"),
            {"key": secrets.token_hex(32), "id": workspace_id},
        )




def downgrade() -> None:

    with op.batch_alter_table('workspaces', schema=None) as batch_op:
        batch_op.drop_column('webhook_key')

    with op.batch_alter_table('webhook_deliveries', schema=None) as batch_op:
        batch_op.drop_index('ix_webhook_deliveries_workspace_id')

    op.drop_table('webhook_deliveries')
    with op.batch_alter_table('jobs', schema=None) as batch_op:
        batch_op.drop_index('ix_jobs_ordering')
        batch_op.drop_index('ix_jobs_dedupe')
        batch_op.drop_index('ix_jobs_claim')

    op.drop_table('jobs')

