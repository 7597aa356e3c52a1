"""The turn lock's read also gives the configurations' updated_at

Revision ID: 0008
Revises: 0007

``chatplane_turn_locks`` (0007) reads a chat under its turn lock; it now also
reads when its agent and LLM configurations were last changed, which a turn
that took its lock back without reading (``locks.HeldOver``) checks in the
statement that writes it (``chats/turn/postgres.py``). The same function otherwise.
"""
from alembic import op

revision = '0008'
down_revision = '0007'
branch_labels = None
depends_on = None

# The result type is the same (json): CREATE OR REPLACE changes the body.
FUNCTION = """
CREATE OR REPLACE FUNCTION chatplane_turn_locks(
    release_keys bigint[], lock_keys bigint[], chat_ids text[], workspace_ids integer[], idempotency_keys text[]
) RETURNS TABLE (got boolean, chat json, earlier json)
LANGUAGE plpgsql VOLATILE AS $$
BEGIN
    PERFORM pg_advisory_unlock(k) FROM unnest(release_keys) AS k;
    FOR i IN 1 .. coalesce(array_length(lock_keys, 1), 0) LOOP
        got := pg_try_advisory_lock(lock_keys[i]);
        chat := NULL;
        earlier := NULL;
        IF got AND chat_ids[i] IS NOT NULL THEN
            -- A statement of its own: its snapshot is taken now, under the lock.
            SELECT row_to_json(r) INTO chat FROM (
                SELECT c.*, a.config AS agent_config, l.config AS llm_config, w.webhook_key,
                       a.updated_at AS agent_updated_at, l.updated_at AS llm_updated_at
                FROM chats c
                JOIN chat_agents a ON a.id = c.agent_id AND a.version = c.agent_version
                JOIN llms l ON l.id = c.llm_id AND l.version = c.llm_version
                JOIN workspaces w ON w.id = c.workspace_id
                WHERE c.id = chat_ids[i] AND c.workspace_id = workspace_ids[i]
            ) r;
            IF chat IS NOT NULL AND idempotency_keys[i] IS NOT NULL THEN
                SELECT json_build_object('request_hash', k.request_hash, 'response', k.response) INTO earlier
                FROM idempotency_keys k WHERE k.chat_id = chat_ids[i] AND k.key = idempotency_keys[i];
            END IF;
        END IF;
        RETURN NEXT;
    END LOOP;
END
$$
"""

# 0007's function.
PREVIOUS = FUNCTION.replace(",\n                       a.updated_at AS agent_updated_at, l.updated_at AS llm_updated_at", "")


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute(FUNCTION)


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute(PREVIOUS)
