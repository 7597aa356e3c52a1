"""phone numbers, the SMS log, SMS numbers on chats, attachments on messages

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-23 21:10:58.703385
"""
from alembic import op
import sqlalchemy as sa
import chatplane.db
from sqlalchemy.dialects import postgresql

revision = '0005'
down_revision = '0004'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('phone_numbers',
    sa.Column('phone_number', sa.String(length=16), nullable=False),
    sa.Column('workspace_id', sa.Integer(), nullable=False),
    sa.Column('twilio_account_sid', sa.String(length=64), nullable=False),
    sa.Column('twilio_auth_token', sa.Text(), nullable=False),
    sa.Column('config', sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql'), nullable=False),
    sa.Column('created_at', chatplane.db.UTCDateTime(timezone=True), nullable=False),
    sa.Column('updated_at', chatplane.db.UTCDateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['workspace_id'], ['workspaces.id'], name=op.f('fk_phone_numbers_workspace_id_workspaces')),
    sa.PrimaryKeyConstraint('phone_number', name=op.f('pk_phone_numbers'))
    )
    with op.batch_alter_table('phone_numbers', schema=None) as batch_op:
        batch_op.create_index('ix_phone_numbers_workspace_id', ['workspace_id', 'phone_number'], unique=False)

    op.create_table('sms_messages',
    sa.Column('id', sa.String(length=64), nullable=False),
    sa.Column('workspace_id', sa.Integer(), nullable=False),
    sa.Column('direction', sa.String(length=8), nullable=False),
    sa.Column('twilio_sid', sa.String(length=64), nullable=True),
    sa.Column('agent_number', sa.String(length=16), nullable=False),
    sa.Column('user_number', sa.String(length=64), nullable=False),
    sa.Column('body', sa.Text(), nullable=False),
    sa.Column('media', sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql'), nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('batch', sa.String(length=64), nullable=True),
    sa.Column('chat_id', sa.String(length=64), nullable=True),
    sa.Column('chat_message_id', sa.String(length=64), nullable=True),
    sa.Column('error', sa.Text(), nullable=True),
    sa.Column('created_at', chatplane.db.UTCDateTime(timezone=True), nullable=False),
    sa.Column('sent_at', chatplane.db.UTCDateTime(timezone=True), nullable=True),
    sa.ForeignKeyConstraint(['workspace_id'], ['workspaces.id'], name=op.f('fk_sms_messages_workspace_id_workspaces')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_sms_messages')),
    sa.UniqueConstraint('twilio_sid', name=op.f('uq_sms_messages_twilio_sid'))
    )
    with op.batch_alter_table('sms_messages', schema=None) as batch_op:
        batch_op.create_index('ix_sms_messages_chat_id', ['chat_id'], unique=False)
        batch_op.create_index('ix_sms_messages_conversation', ['agent_number', 'user_number', 'status'], unique=False)

    with op.batch_alter_table('chat_messages', schema=None) as batch_op:
        batch_op.add_column(sa.Column('multimedia', sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql'), nullable=True))

    with op.batch_alter_table('chats', schema=None) as batch_op:
        batch_op.add_column(sa.Column('user_number', sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column('agent_number', sa.String(length=16), nullable=True))
        batch_op.create_index('ix_chats_sms_pair', ['agent_number', 'user_number'], unique=False)



def downgrade() -> None:
    with op.batch_alter_table('chats', schema=None) as batch_op:
        batch_op.drop_index('ix_chats_sms_pair')
        batch_op.drop_column('agent_number')
        batch_op.drop_column('user_number')

    with op.batch_alter_table('chat_messages', schema=None) as batch_op:
        batch_op.drop_column('multimedia')

    with op.batch_alter_table('sms_messages', schema=None) as batch_op:
        batch_op.drop_index('ix_sms_messages_conversation')
        batch_op.drop_index('ix_sms_messages_chat_id')

    op.drop_table('sms_messages')
    with op.batch_alter_table('phone_numbers', schema=None) as batch_op:
        batch_op.drop_index('ix_phone_numbers_workspace_id')

    op.drop_table('phone_numbers')
