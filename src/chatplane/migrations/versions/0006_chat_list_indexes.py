"""chat list indexes that answer the time range themselves; ongoing chats indexed

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-23 23:10:00.000000

The list indexes of ``chats`` get ``started_at`` after the id (the agent index
also ``status`` and ``agent_version``), so a /v3/list-chats count over a time
range is an index-only scan instead of a read of every matching row. The
idle-chat monitor gets a partial index of the ongoing chats. Rebuilding the
three indexes locks writes to ``chats`` while it runs (~15 s per million
chats on a 2-core VM).
"""
from alembic import op
import sqlalchemy as sa

revision = '0006'
down_revision = '0005'
branch_labels = None
depends_on = None

ONGOING = "status = 'ongoing'"


def upgrade() -> None:
    with op.batch_alter_table('chats', schema=None) as batch_op:
        batch_op.drop_index('ix_chats_workspace_id')
        batch_op.drop_index('ix_chats_workspace_agent_id')
        batch_op.drop_index('ix_chats_workspace_status_id')
        batch_op.create_index('ix_chats_workspace_id', ['workspace_id', 'id', 'started_at'], unique=False)
        batch_op.create_index('ix_chats_workspace_agent_id', ['workspace_id', 'agent_id', 'id', 'status', 'started_at', 'agent_version'], unique=False)
        batch_op.create_index('ix_chats_workspace_status_id', ['workspace_id', 'status', 'id', 'started_at'], unique=False)
        batch_op.create_index('ix_chats_ongoing', ['id'], unique=False, postgresql_where=sa.text(ONGOING), sqlite_where=sa.text(ONGOING))


def downgrade() -> None:
    with op.batch_alter_table('chats', schema=None) as batch_op:
        batch_op.drop_index('ix_chats_ongoing', postgresql_where=sa.text(ONGOING), sqlite_where=sa.text(ONGOING))
        batch_op.drop_index('ix_chats_workspace_status_id')
        batch_op.drop_index('ix_chats_workspace_agent_id')
        batch_op.drop_index('ix_chats_workspace_id')
        batch_op.create_index('ix_chats_workspace_status_id', ['workspace_id', 'status', 'id'], unique=False)
        batch_op.create_index('ix_chats_workspace_agent_id', ['workspace_id', 'agent_id', 'id'], unique=False)
        batch_op.create_index('ix_chats_workspace_id', ['workspace_id', 'id'], unique=False)
