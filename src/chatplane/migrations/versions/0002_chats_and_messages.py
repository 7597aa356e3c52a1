"""chats and messages

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-23 20:01:59.469610
"""
from alembic import op
import sqlalchemy as sa
import chatplane.db
from sqlalchemy.dialects import postgresql

revision = '0002'
down_revision = '0001'
branch_labels = None
depends_on = None


def upgrade() -> None:

    op.create_table('chats',
    sa.Column('id', sa.String(length=64), nullable=False),
    sa.Column('workspace_id', sa.Integer(), nullable=False),
    sa.Column('agent_id', sa.String(length=64), nullable=False),
    sa.Column('agent_version', sa.Integer(), nullable=False),
    sa.Column('llm_id', sa.String(length=64), nullable=False),
    sa.Column('llm_version', sa.Integer(), nullable=False),
    sa.Column('type', sa.String(length=16), nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('metadata', sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql'), nullable=False),
    sa.Column('custom_attributes', sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql'), nullable=False),
    sa.Column('dynamic_variables', sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql'), nullable=False),
    sa.Column('override_dynamic_variables', sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql'), nullable=False),
    sa.Column('collected_dynamic_variables', sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql'), nullable=False),
    sa.Column('current_state', sa.String(length=64), nullable=True),
    sa.Column('message_count', sa.Integer(), nullable=False),
    sa.Column('started_at', chatplane.db.UTCDateTime(timezone=True), nullable=False),
    sa.Column('ended_at', chatplane.db.UTCDateTime(timezone=True), nullable=True),
    sa.Column('end_reason', sa.String(length=32), nullable=True),
    sa.Column('last_user_message_at', chatplane.db.UTCDateTime(timezone=True), nullable=True),
    sa.Column('last_agent_message_at', chatplane.db.UTCDateTime(timezone=True), nullable=True),
    sa.Column('chat_cost', sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql'), nullable=True),
    sa.Column('chat_analysis', sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql'), nullable=True),
    sa.Column('combined_cost', sa.Float(), nullable=True),
    sa.Column('user_sentiment', sa.String(length=16), nullable=True),
    sa.Column('chat_successful', sa.Boolean(), nullable=True),
    sa.ForeignKeyConstraint(['workspace_id'], ['workspaces.id'], name=op.f('fk_chats_workspace_id_workspaces')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_chats'))
    )
    with op.batch_alter_table('chats', schema=None) as batch_op:
        batch_op.create_index('ix_chats_workspace_agent_id', ['workspace_id', 'agent_id', 'id'], unique=False)
        batch_op.create_index('ix_chats_workspace_id', ['workspace_id', 'id'], unique=False)
        batch_op.create_index('ix_chats_workspace_status_id', ['workspace_id', 'status', 'id'], unique=False)

    op.create_table('chat_messages',
    sa.Column('id', sa.String(length=64), nullable=False),
    sa.Column('chat_id', sa.String(length=64), nullable=False),
    sa.Column('seq', sa.Integer(), nullable=False),
    sa.Column('role', sa.String(length=16), nullable=False),
    sa.Column('content', sa.Text(), nullable=False),
    sa.Column('name', sa.String(length=64), nullable=True),
    sa.Column('tool_calls', sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql'), nullable=True),
    sa.Column('model', sa.String(length=128), nullable=True),
    sa.Column('prompt_tokens', sa.Integer(), nullable=False),
    sa.Column('completion_tokens', sa.Integer(), nullable=False),
    sa.Column('created_at', chatplane.db.UTCDateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['chat_id'], ['chats.id'], name=op.f('fk_chat_messages_chat_id_chats'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_chat_messages')),
    sa.UniqueConstraint('chat_id', 'seq', name=op.f('uq_chat_messages_chat_id'))
    )
    op.create_table('idempotency_keys',
    sa.Column('chat_id', sa.String(length=64), nullable=False),
    sa.Column('key', sa.String(length=255), nullable=False),
    sa.Column('request_hash', sa.String(length=64), nullable=False),
    sa.Column('response', sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql'), nullable=False),
    sa.Column('created_at', chatplane.db.UTCDateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['chat_id'], ['chats.id'], name=op.f('fk_idempotency_keys_chat_id_chats'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('chat_id', 'key', name=op.f('pk_idempotency_keys'))
    )



def downgrade() -> None:

    op.drop_table('idempotency_keys')
    op.drop_table('chat_messages')
    with op.batch_alter_table('chats', schema=None) as batch_op:
        batch_op.drop_index('ix_chats_workspace_status_id')
        batch_op.drop_index('ix_chats_workspace_id')
        batch_op.drop_index('ix_chats_workspace_agent_id')

    op.drop_table('chats')

