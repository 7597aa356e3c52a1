"""Chats: start, read, list, edit, end, delete. (Turns are in ``chats/turn/``.)"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from itertools import starmap
from typing import Any, NamedTuple

from pydantic import TypeAdapter
from sqlalchemy import bindparam, delete, select
from sqlalchemy.ext.asyncio import AsyncSession

from chatplane import configs
from chatplane.chats.prompt import merge_variables, transcript
from chatplane.db import get_scoped, utcnow
from chatplane.errors import Conflict, NotFound, shown
from chatplane.models import Chat, ChatAgent, ChatMessage, Llm, SmsMessage
from chatplane.pagination import PageRequest, fetch_page

_JSON = TypeAdapter(dict[str, Any])


def chat_not_found(chat_id: str) -> NotFound:
    return NotFound(f"chat {shown(chat_id)} not found", code="chat_not_found")


def chat_ended(chat: Any) -> Conflict:
    return Conflict(f"chat {chat.id} has ended", code="chat_ended")


@dataclass(frozen=True, slots=True)
class Versions:
    """The agent and LLM configurations a chat runs on."""

    agent: dict[str, Any]
    llm: dict[str, Any]


def system_variables(chat: Any) -> dict[str, str]:
    variables = {"chat_id": chat.id}
    # SMS chats: the user's number and ours (a chat of another type has none,
    # and {{user_number}} stays as written there).
    for name in ("user_number", "agent_number"):
        if value := getattr(chat, name, None):
            variables[name] = value
    return variables


def chat_variables(chat: Any, versions: Versions) -> dict[str, str]:
    """Every ``{{variable}}`` of the chat (a Chat, or a row of its columns),
    by the documented precedence."""
    return merge_variables(
        versions.llm.get("default_dynamic_variables"),
        versions.agent.get("uponai_dynamic_variables"),
        chat.dynamic_variables,
        chat.override_dynamic_variables,
        chat.collected_dynamic_variables,
        system_variables(chat),
    )


async def resolve_versions(
    session: AsyncSession, *, workspace_id: int, agent_id: str, agent_version: int | None
) -> tuple[ChatAgent, Llm]:
    agent = await configs.get(session, ChatAgent, workspace_id=workspace_id, id=agent_id, version=agent_version)
    engine = agent.config["response_engine"]
    try:
        llm = await configs.get(
            session, Llm, workspace_id=workspace_id, id=engine["llm_id"], version=engine.get("version")
        )
    except NotFound:
        raise Conflict(
            f"chat agent {agent_id} uses LLM {engine['llm_id']}, which no longer exists",
            code="llm_missing",
        ) from None
    return agent, llm


async def get_chat(session: AsyncSession, *, workspace_id: int, chat_id: str, for_update: bool = False) -> Chat:
    return await get_scoped(
        session, Chat.id, chat_id, workspace_id=workspace_id, missing=lambda: chat_not_found(chat_id),
        for_update=for_update,
    )


class StoredMessage(NamedTuple):
    """A message as a chat shows it (``message_out``, ``transcript``), read without the ORM.

    A long chat has a thousand messages: as mapped objects, building them and
    reading their attributes was most of the time of a get (~15 ms of ~24 at
    1,000 messages); a named tuple's fields read at C speed.
    """

    role: str
    content: str
    name: str | None
    tool_calls: list[dict[str, Any]] | None
    id: str
    created_at: datetime
    multimedia: list[dict[str, Any]] | None
    manifest: dict[str, Any] | None = None  # read only to be shown (get_messages(manifests=True))


MESSAGES = ChatMessage.__table__


def _read_messages(fields: tuple[str, ...]) -> Any:
    return (
        select(*(MESSAGES.c[field] for field in fields))
        .where(MESSAGES.c.chat_id == bindparam("chat_id"), MESSAGES.c.seq > bindparam("after_seq"))
        .order_by(MESSAGES.c.seq)
    )


READ_MESSAGES = _read_messages(StoredMessage._fields[:-1])
READ_SHOWN_MESSAGES = _read_messages(StoredMessage._fields)


async def get_messages(
    session: AsyncSession, *, chat_id: str, after_seq: int = -1, manifests: bool = False
) -> list[StoredMessage]:
    """The chat's messages after ``after_seq``, in order; with their context
    manifests only if ``manifests`` (up to tens of kB a message: only a chat
    shown whole needs them)."""
    params = {"chat_id": chat_id, "after_seq": after_seq}
    if manifests:
        return list(map(StoredMessage._make, await session.execute(READ_SHOWN_MESSAGES, params)))
    return list(starmap(StoredMessage, await session.execute(READ_MESSAGES, params)))


async def list_chats(
    session: AsyncSession,
    *,
    workspace_id: int,
    page: PageRequest,
    agent_id: str | None = None,
    status: str | None = None,
    chat_type: str | None = None,
    id_after: str | None = None,
    id_before: str | None = None,
) -> tuple[list[Chat], str | None]:
    query = select(Chat).where(Chat.workspace_id == workspace_id)
    if agent_id:
        query = query.where(Chat.agent_id == agent_id)
    if status:
        query = query.where(Chat.status == status)
    if chat_type:
        query = query.where(Chat.type == chat_type)
    if id_after:
        query = query.where(Chat.id >= id_after)
    if id_before:
        query = query.where(Chat.id < id_before)
    return await fetch_page(session, query, Chat.id, page)


async def update_chat(
    session: AsyncSession, *, workspace_id: int, chat_id: str, changes: dict[str, Any]
) -> Chat:
    chat = await get_chat(session, workspace_id=workspace_id, chat_id=chat_id, for_update=True)
    if "metadata" in changes and changes["metadata"] is not None:
        chat.metadata_ = changes["metadata"]
    if "custom_attributes" in changes and changes["custom_attributes"] is not None:
        chat.custom_attributes = changes["custom_attributes"]
    if "override_dynamic_variables" in changes and changes["override_dynamic_variables"] is not None:
        chat.override_dynamic_variables = changes["override_dynamic_variables"]
    await session.flush()
    return chat


async def end_chat(session: AsyncSession, *, chat: Chat, reason: str, now: datetime | None = None) -> Chat:
    """Mark an ongoing chat ended. The caller holds the chat's turn lock."""
    if chat.status != "ongoing":
        raise chat_ended(chat)
    chat.status = "ended"
    chat.ended_at = now or utcnow()
    chat.end_reason = reason
    await session.flush()
    return chat


async def delete_chat(session: AsyncSession, *, workspace_id: int, chat_id: str) -> None:
    chat = await get_chat(session, workspace_id=workspace_id, chat_id=chat_id, for_update=True)
    # Children first: SQLite only cascades with foreign_keys=ON, and that is
    # a per-connection setting a hand-made connection may lack.
    await session.execute(delete(ChatMessage).where(ChatMessage.chat_id == chat.id))
    # An SMS chat's texts go with it (and texts still queued for it are not sent).
    await session.execute(delete(SmsMessage).where(SmsMessage.chat_id == chat.id))
    await session.delete(chat)
    await session.flush()


def message_out(message: ChatMessage | StoredMessage) -> dict[str, Any]:
    out: dict[str, Any] = {
        "role": message.role,
        "content": message.content,
        "name": message.name,
        "tool_calls": message.tool_calls or [],
        "messageId": message.id,
        "createdAt": message.created_at,
    }
    if message.multimedia:
        out["multimedia"] = message.multimedia
    if message.manifest:
        out["manifest"] = message.manifest
    return out


def chat_out(chat: Chat, messages: Sequence[ChatMessage | StoredMessage] | None) -> dict[str, Any]:
    """The seeds' Chat object; ``messages=None`` leaves messages and transcript out (lists)."""
    out = {
        "chatId": chat.id,
        "agentId": chat.agent_id,
        "version": chat.agent_version,
        "status": chat.status,
        "type": chat.type,
        "metadata": chat.metadata_,
        "customAttributes": chat.custom_attributes,
        "startedAt": chat.started_at,
        "endedAt": chat.ended_at,
        "chatCost": chat.chat_cost,
        "chatAnalysis": chat.chat_analysis,
        "collectedDynamicVariables": chat.collected_dynamic_variables,
        "uponai_dynamic_variables": chat.dynamic_variables,
        "overrideDynamicVariables": chat.override_dynamic_variables,
    }
    if messages is not None:
        out["transcript"] = transcript(messages)
        out["messages"] = [message_out(m) for m in messages]
    return out


def chat_json(chat: Chat, messages: Sequence[ChatMessage | StoredMessage]) -> bytes:
    """``chat_out`` as JSON: the same document the ``Chat`` response model makes of it.

    Serialized without validating our own output again: for a chat of 1,000
    messages that second pass (mostly ``Message``'s serializer, run in Python
    once per message) was a third of the time of a get.
    """
    return _JSON.dump_json(chat_out(chat, messages))
