"""initial schema

Revision ID: 0001
Revises:
Create Date: 2026-11-23 19:54:16.100222
"""
from alembic import op
import sqlalchemy as sa
import chatplane.db
from sqlalchemy.dialects import postgresql

revision = '0001'
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:

    op.create_table('api_keys',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('key_hash', sa.String(length=64), nullable=False),
    sa.Column('prefix', sa.String(length=16), nullable=False),
    sa.Column('name', sa.String(length=200), nullable=False),
    sa.Column('created_at', chatplane.db.UTCDateTime(timezone=True), nullable=False),
    sa.Column('revoked_at', chatplane.db.UTCDateTime(timezone=True), nullable=True),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_api_keys')),
    sa.UniqueConstraint('key_hash', name=op.f('uq_api_keys_key_hash'))
    )
    op.create_table('workspaces',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('name', sa.String(length=200), nullable=False),
    sa.Column('created_at', chatplane.db.UTCDateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_workspaces'))
    )
    op.create_table('api_key_workspaces',
    sa.Column('api_key_id', sa.Integer(), nullable=False),
    sa.Column('workspace_id', sa.Integer(), nullable=False),
    sa.ForeignKeyConstraint(['api_key_id'], ['api_keys.id'], name=op.f('fk_api_key_workspaces_api_key_id_api_keys'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['workspace_id'], ['workspaces.id'], name=op.f('fk_api_key_workspaces_workspace_id_workspaces'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('api_key_id', 'workspace_id', name=op.f('pk_api_key_workspaces'))
    )
    op.create_table('chat_agents',
    sa.Column('llm_id', sa.String(length=64), nullable=True),
    sa.Column('id', sa.String(length=64), nullable=False),
    sa.Column('version', sa.Integer(), nullable=False),
    sa.Column('workspace_id', sa.Integer(), nullable=False),
    sa.Column('is_published', sa.Boolean(), nullable=False),
    sa.Column('is_latest', sa.Boolean(), nullable=False),
    sa.Column('config', sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql'), nullable=False),
    sa.Column('created_at', chatplane.db.UTCDateTime(timezone=True), nullable=False),
    sa.Column('updated_at', chatplane.db.UTCDateTime(timezone=True), nullable=False),
    sa.Column('deleted_at', chatplane.db.UTCDateTime(timezone=True), nullable=True),
    sa.ForeignKeyConstraint(['workspace_id'], ['workspaces.id'], name=op.f('fk_chat_agents_workspace_id_workspaces')),
    sa.PrimaryKeyConstraint('id', 'version', name=op.f('pk_chat_agents'))
    )
    with op.batch_alter_table('chat_agents', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_chat_agents_llm_id'), ['llm_id'], unique=False)
        batch_op.create_index('ix_chat_agents_workspace_latest', ['workspace_id', 'id'], unique=False, postgresql_where=sa.text('is_latest AND deleted_at IS NULL'), sqlite_where=sa.text('is_latest AND deleted_at IS NULL'))

    op.create_table('llms',
    sa.Column('id', sa.String(length=64), nullable=False),
    sa.Column('version', sa.Integer(), nullable=False),
    sa.Column('workspace_id', sa.Integer(), nullable=False),
    sa.Column('is_published', sa.Boolean(), nullable=False),
    sa.Column('is_latest', sa.Boolean(), nullable=False),
    sa.Column('config', sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql'), nullable=False),
    sa.Column('created_at', chatplane.db.UTCDateTime(timezone=True), nullable=False),
    sa.Column('updated_at', chatplane.db.UTCDateTime(timezone=True), nullable=False),
    sa.Column('deleted_at', chatplane.db.UTCDateTime(timezone=True), nullable=True),
    sa.ForeignKeyConstraint(['workspace_id'], ['workspaces.id'], name=op.f('fk_llms_workspace_id_workspaces')),
    sa.PrimaryKeyConstraint('id', 'version', name=op.f('pk_llms'))
    )
    with op.batch_alter_table('llms', schema=None) as batch_op:
        batch_op.create_index('ix_llms_workspace_latest', ['workspace_id', 'id'], unique=False, postgresql_where=sa.text('is_latest AND deleted_at IS NULL'), sqlite_where=sa.text('is_latest AND deleted_at IS NULL'))




def downgrade() -> None:

    with op.batch_alter_table('llms', schema=None) as batch_op:
        batch_op.drop_index('ix_llms_workspace_latest', postgresql_where=sa.text('is_latest AND deleted_at IS NULL'), sqlite_where=sa.text('is_latest AND deleted_at IS NULL'))

    op.drop_table('llms')
    with op.batch_alter_table('chat_agents', schema=None) as batch_op:
        batch_op.drop_index('ix_chat_agents_workspace_latest', postgresql_where=sa.text('is_latest AND deleted_at IS NULL'), sqlite_where=sa.text('is_latest AND deleted_at IS NULL'))
        batch_op.drop_index(batch_op.f('ix_chat_agents_llm_id'))

    op.drop_table('chat_agents')
    op.drop_table('api_key_workspaces')
    op.drop_table('workspaces')
    op.drop_table('api_keys')

