"""A turn: the user's message in, the agent's reply out, history kept.

The contract when several messages hit one chat: turns run one at a time, in
arrival order (``TurnLocks``), and a turn is written whole or not at all:
the user's message and the agent's reply go into the database in one
transaction after the model has answered. A turn whose model call fails
leaves the chat exactly as it was, so the client can simply send again.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from sqlalchemy import bindparam, insert, select, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from chatplane.chats.locks import TurnLocks
from chatplane.chats.prompt import render
from chatplane.chats.service import (
    Versions,
    chat_ended,
    chat_not_found,
    chat_variables,
)
from chatplane.db import utcnow
from chatplane.errors import Conflict
from chatplane.ids import new_id
from chatplane.models import Chat, ChatAgent, ChatMessage, IdempotencyKey, Llm
from chatplane.providers import ModelRequest, OnDelta, Registry

HISTORY_CACHE_CHATS = 2048


@dataclass(frozen=True, slots=True)
class TurnAnswer:
    """What the completion route answers: the agent's new messages."""

    body: dict[str, Any]
    replayed: bool = False


def _message_json(row: dict[str, Any]) -> dict[str, Any]:
    """``message_out`` of a message row not yet read back, as JSON-ready data."""
    return {
        "role": row["role"],
        "content": row["content"],
        "name": row["name"],
        "tool_calls": row["tool_calls"] or [],
        "messageId": row["id"],
        # The same form the response models give every other datetime.
        "createdAt": row["created_at"].isoformat().replace("+00:00", "Z"),
    }


CHATS = Chat.__table__
MESSAGES = ChatMessage.__table__
IDEMPOTENCY = IdempotencyKey.__table__

# The hot path's statements, built once: SQLAlchemy caches the compiled SQL,
# but building the expression tree is itself ~1 ms a turn.
READ_CHAT = (
    select(CHATS, ChatAgent.config.label("agent_config"), Llm.config.label("llm_config"))
    .join(ChatAgent, (ChatAgent.id == CHATS.c.agent_id) & (ChatAgent.version == CHATS.c.agent_version))
    .join(Llm, (Llm.id == CHATS.c.llm_id) & (Llm.version == CHATS.c.llm_version))
    .where(CHATS.c.id == bindparam("chat_id"), CHATS.c.workspace_id == bindparam("workspace_id"))
)
READ_HISTORY = (
    select(MESSAGES.c.role, MESSAGES.c.content)
    .where(MESSAGES.c.chat_id == bindparam("chat_id"), MESSAGES.c.seq >= bindparam("from_seq"))
    .order_by(MESSAGES.c.seq)
)
READ_IDEMPOTENT = select(IDEMPOTENCY.c.request_hash, IDEMPOTENCY.c.response).where(
    IDEMPOTENCY.c.chat_id == bindparam("chat_id"), IDEMPOTENCY.c.key == bindparam("key")
)
INSERT_MESSAGES = insert(MESSAGES)
INSERT_IDEMPOTENT = insert(IDEMPOTENCY)
UPDATE_AFTER_TURN = (
    update(CHATS)
    .where(CHATS.c.id == bindparam("b_chat_id"))
    .values(
        message_count=bindparam("b_count"),
        last_user_message_at=bindparam("b_user_at", type_=CHATS.c.last_user_message_at.type),
        last_agent_message_at=bindparam("b_agent_at", type_=CHATS.c.last_agent_message_at.type),
    )
)


class Turns:
    """Runs turns for one process: its database, models, locks and history cache.

    The hot path speaks SQLAlchemy Core on a plain connection (no ORM unit of
    work): a turn is one read and one write transaction around the model call.
    """

    def __init__(self, engine: AsyncEngine, registry: Registry, locks: TurnLocks) -> None:
        self.engine = engine
        self.registry = registry
        self.locks = locks
        # chat id -> the model-facing messages of its history. Checked against
        # the chat's message_count on every turn and topped up from the
        # database, so another process's writes are never missed, and a long
        # chat costs one small query per turn instead of a re-read.
        self._history: OrderedDict[str, list[dict[str, Any]]] = OrderedDict()

    async def _history_for(self, conn: AsyncConnection, chat: Any) -> list[dict[str, Any]]:
        cached = self._history.pop(chat.id, None)
        if cached is None or len(cached) > chat.message_count:
            cached = []
        if len(cached) < chat.message_count:
            rows = await conn.execute(READ_HISTORY, {"chat_id": chat.id, "from_seq": len(cached)})
            cached.extend({"role": role, "content": content} for role, content in rows)
        self._history[chat.id] = cached
        if len(self._history) > HISTORY_CACHE_CHATS:
            self._history.popitem(last=False)
        return cached

    def forget(self, chat_id: str) -> None:
        self._history.pop(chat_id, None)

    async def run(
        self,
        *,
        workspace_id: int,
        chat_id: str,
        content: str,
        idempotency_key: str | None = None,
        on_delta: OnDelta | None = None,
    ) -> TurnAnswer:
        request_hash = hashlib.sha256(content.encode()).hexdigest()
        async with self.locks.hold(chat_id):
            # Reads under the turn lock need no transaction: nothing else can
            # change this chat's history until we let go.
            async with self.engine.connect() as conn:
                await conn.execution_options(isolation_level="AUTOCOMMIT")
                row = (
                    await conn.execute(READ_CHAT, {"chat_id": chat_id, "workspace_id": workspace_id})
                ).one_or_none()
                if row is None:
                    raise chat_not_found(chat_id)
                if idempotency_key:
                    earlier = (
                        await conn.execute(READ_IDEMPOTENT, {"chat_id": chat_id, "key": idempotency_key})
                    ).one_or_none()
                    if earlier is not None:
                        if earlier.request_hash != request_hash:
                            raise Conflict(
                                "this Idempotency-Key was used for a different message on this chat",
                                code="idempotency_key_reused",
                            )
                        return TurnAnswer(body=earlier.response, replayed=True)
                if row.status != "ongoing":
                    raise chat_ended(row)
                history = await self._history_for(conn, row)
            started = utcnow()
            versions = Versions(agent=row.agent_config, llm=row.llm_config)
            system = _system_prompt(row, versions, now=started)
            llm_config = row.llm_config
            request = ModelRequest(
                messages=[
                    *([{"role": "system", "content": system}] if system else []),
                    *history,
                    {"role": "user", "content": content},
                ],
                temperature=llm_config.get("model_temperature", 0.0),
            )
            model = llm_config["model"]
            reply = await self.registry.complete(model, request, on_delta)

            now = utcnow()
            seq = row.message_count
            user = {
                "id": new_id("msg"), "chat_id": chat_id, "seq": seq, "role": "user", "content": content,
                "name": None, "tool_calls": None, "model": None, "prompt_tokens": 0,
                "completion_tokens": 0, "created_at": started,
            }
            agent = {
                "id": new_id("msg"), "chat_id": chat_id, "seq": seq + 1, "role": "assistant",
                "content": reply.content, "name": None, "tool_calls": None, "model": model,
                "prompt_tokens": reply.prompt_tokens, "completion_tokens": reply.completion_tokens,
                "created_at": now,
            }
            body = {"messages": [_message_json(agent)]}
            async with self.engine.begin() as conn:
                await conn.execute(INSERT_MESSAGES, [user, agent])
                await conn.execute(
                    UPDATE_AFTER_TURN,
                    {"b_chat_id": chat_id, "b_count": seq + 2, "b_user_at": started, "b_agent_at": now},
                )
                if idempotency_key:
                    await conn.execute(
                        INSERT_IDEMPOTENT,
                        {"chat_id": chat_id, "key": idempotency_key, "request_hash": request_hash,
                         "response": body, "created_at": now},
                    )
            history.append({"role": "user", "content": content})
            history.append({"role": "assistant", "content": reply.content})
            return TurnAnswer(body=body)


def _system_prompt(chat: Any, versions: Versions, *, now: Any) -> str:
    llm = versions.llm
    parts = [llm.get("general_prompt") or ""]
    if chat.current_state:
        for state in llm.get("states") or []:
            if state["name"] == chat.current_state and state.get("state_prompt"):
                parts.append(state["state_prompt"])
    template = "\n\n".join(p for p in parts if p)
    return render(template, chat_variables(chat, versions), now=now, timezone=versions.agent["timezone"])

