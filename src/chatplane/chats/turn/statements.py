"""The statements of a turn's read, built once, and the one definition of the
chat row a turn reads (``READ_CHAT``).

PostgreSQL reads that row in the round trip that takes the chat's turn lock
(``locks.ChatRead``): the lock's connection prepares these same statements
(``lock_reads``) and ``chatplane_turn_locks`` (migration 0009) executes them,
so a column added here is read there too.
"""

from __future__ import annotations

from sqlalchemy import Select, bindparam, select
from sqlalchemy.dialects import postgresql

from chatplane.models import Chat, ChatAgent, ChatMessage, IdempotencyKey, Llm, Workspace

CHATS = Chat.__table__
AGENTS = ChatAgent.__table__
LLMS = Llm.__table__
MESSAGES = ChatMessage.__table__
IDEMPOTENCY = IdempotencyKey.__table__

# The hot path's statements, built once: SQLAlchemy caches the compiled SQL,
# but building the expression tree is itself ~1 ms a turn.
READ_CHAT = (
    select(
        CHATS, ChatAgent.config.label("agent_config"), Llm.config.label("llm_config"),
        # Signs custom-tool calls; a primary-key join, so no second query.
        Workspace.webhook_key.label("webhook_key"),
        # A draft configuration changes in place: what a turn that read
        # nothing checks when it writes (see HeldOver in Turns.run).
        ChatAgent.updated_at.label("agent_updated_at"), Llm.updated_at.label("llm_updated_at"),
    )
    .join(ChatAgent, (ChatAgent.id == CHATS.c.agent_id) & (ChatAgent.version == CHATS.c.agent_version))
    .join(Llm, (Llm.id == CHATS.c.llm_id) & (Llm.version == CHATS.c.llm_version))
    .join(Workspace, Workspace.id == CHATS.c.workspace_id)
    .where(CHATS.c.id == bindparam("chat_id"), CHATS.c.workspace_id == bindparam("workspace_id"))
)
READ_HISTORY = (
    select(MESSAGES.c.role, MESSAGES.c.content, MESSAGES.c.tool_calls)
    .where(MESSAGES.c.chat_id == bindparam("chat_id"), MESSAGES.c.seq >= bindparam("from_seq"))
    .order_by(MESSAGES.c.seq)
)
READ_IDEMPOTENT = select(IDEMPOTENCY.c.request_hash, IDEMPOTENCY.c.response).where(
    IDEMPOTENCY.c.chat_id == bindparam("chat_id"), IDEMPOTENCY.c.key == bindparam("key")
)

def _prepare(name: str, statement: Select, types: dict[str, str]) -> str:
    """``PREPARE name(...) AS`` ``statement``'s row as JSON, its parameters in the
    order PostgreSQL numbers them."""
    compiled = statement.compile(dialect=postgresql.asyncpg.dialect())
    order = compiled.positiontup or ()
    assert set(order) == set(types), (order, types)
    return f"PREPARE {name}({', '.join(types[p] for p in order)}) AS SELECT row_to_json(r) FROM ({compiled.string}) r"


def lock_reads() -> str:
    """What the lock's connection prepares for ``chatplane_turn_locks``: the chat
    (``chatplane_read_chat(chat_id, workspace_id)``) and the answer stored under
    an Idempotency-Key (``chatplane_read_earlier(chat_id, key)``), as JSON."""
    chat = _prepare("chatplane_read_chat", READ_CHAT, {"chat_id": "text", "workspace_id": "integer"})
    earlier = _prepare("chatplane_read_earlier", READ_IDEMPOTENT, {"chat_id": "text", "key": "text"})
    return f"{chat}; {earlier}"
