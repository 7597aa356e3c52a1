"""PostgreSQL: the function that takes turn locks and reads the chat under them

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-24 05:40:00.000000

``chatplane_turn_locks`` lets go of some turn locks (session-level advisory
locks), tries to take others and, for each lock it got, reads the chat the
turn needs, all in one round trip (``chats/locks.py``). It is a function for
one reason: a VOLATILE PL/pgSQL function takes a fresh snapshot for each
statement it runs, so each chat is read *after* its lock was taken, and the
previous holder's last write is always seen. A plain statement would read
with a snapshot taken before the lock.

The chat is read as ``row_to_json`` of the chat row and its agent's and
LLM's configurations, so a column added to ``chats`` later is read without
changing this function; a renamed or dropped column that it names (the
joins, ``idempotency_keys``) needs a new version of it. SQLite: nothing
(turns there lock a file and read separately).
"""
from alembic import op

revision = '0007'
down_revision = '0006'
branch_labels = None
depends_on = None

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
                SELECT c.*, a.config AS agent_config, l.config AS llm_config, w.webhook_key
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


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute(FUNCTION)


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP FUNCTION IF EXISTS chatplane_turn_locks(bigint[], bigint[], text[], integer[], text[])")
