"""The one way a message is added to a chat.

A chat's messages are numbered without gaps (``seq`` from 0, unique per
chat), and the chat row counts them (``message_count``, the next ``seq``) and
keeps when the user and the agent last spoke. ``message_rows`` makes the rows
of new messages and the chat's counters after them; the turn writes them in
its own statements (``chats.turn.write``), and ``append`` adds them through
the ORM (a chat's begin message, the auto-close message).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from chatplane.ids import new_id
from chatplane.models import Chat, ChatMessage


@dataclass(frozen=True, slots=True)
class NewMessage:
    role: str  # "user" | "assistant"
    content: str
    at: datetime
    tool_calls: list[dict[str, Any]] | None = None
    model: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    manifest: dict[str, Any] | None = None  # chats.turn.manifest


@dataclass(frozen=True, slots=True)
class Counters:
    """The chat's counters after new messages (None: that side did not speak)."""

    message_count: int
    last_user_message_at: datetime | None
    last_agent_message_at: datetime | None


def message_rows(chat_id: str, message_count: int, messages: list[NewMessage]) -> tuple[list[dict[str, Any]], Counters]:
    """The rows of ``messages`` appended to a chat of ``message_count``
    messages, and its counters after them."""
    rows = [
        {
            "id": new_id("msg"), "chat_id": chat_id, "seq": message_count + i, "role": m.role, "content": m.content,
            "name": None, "tool_calls": m.tool_calls, "model": m.model, "prompt_tokens": m.prompt_tokens,
            "completion_tokens": m.completion_tokens, "created_at": m.at, "manifest": m.manifest,
        }
        for i, m in enumerate(messages)
    ]
    users = [m.at for m in messages if m.role == "user"]
    agents = [m.at for m in messages if m.role == "assistant"]
    counters = Counters(message_count + len(messages), users[-1] if users else None, agents[-1] if agents else None)
    return rows, counters


async def append(session: AsyncSession, chat: Chat, messages: list[NewMessage]) -> list[ChatMessage]:
    """Add ``messages`` to ``chat`` in the session's transaction (the caller
    holds the chat's turn lock, or the chat is new); flushed."""
    rows, counters = message_rows(chat.id, chat.message_count, messages)
    added = [ChatMessage(**row) for row in rows]
    session.add_all(added)
    chat.message_count = counters.message_count
    if counters.last_user_message_at is not None:
        chat.last_user_message_at = counters.last_user_message_at
    if counters.last_agent_message_at is not None:
        chat.last_agent_message_at = counters.last_agent_message_at
    await session.flush()
    return added
