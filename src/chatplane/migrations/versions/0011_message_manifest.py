"""the context manifest of each agent message (chats.turn.manifest)

Revision ID: 0011
Revises: 0010

Nullable and without a default: adding it rewrites no row on either
database (user messages, and agent messages written before it, have none).
"""
import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("chat_messages", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("manifest", sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
                      nullable=True)
        )


def downgrade() -> None:
    with op.batch_alter_table("chat_messages", schema=None) as batch_op:
        batch_op.drop_column("manifest")
