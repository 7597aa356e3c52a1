"""A chat's start (``create_chat``) and end (``finish_chat``).

Every way a chat ends (``POST …/end``, the ``end_chat`` tool, inactivity:
``chats.idle``) goes through ``finish_chat``, which in the same transaction
queues what an ending causes: the ``chat_ended`` webhook and the post-chat
analysis (which then queues ``chat_analyzed``).
"""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from chatplane import jobs
from chatplane.chats import service
from chatplane.chats.cost import update_cost
from chatplane.chats.messages import NewMessage, append
from chatplane.chats.prompt import render
from chatplane.db import utcnow
from chatplane.ids import new_id
from chatplane.models import Chat, ChatAgent, ChatMessage
from chatplane.webhooks.events import enqueue_event, wants

log = logging.getLogger(__name__)

ANALYZE_JOB = "chat.analyze"


async def agent_config_of(session: AsyncSession, chat: Chat) -> dict[str, Any]:
    config = await session.scalar(
        select(ChatAgent.config).where(ChatAgent.id == chat.agent_id, ChatAgent.version == chat.agent_version)
    )
    return config or {}


async def emit(session: AsyncSession, chat: Chat, event: str, agent_config: dict[str, Any]) -> None:
    """Queue webhook ``event`` with a snapshot of the chat, if the agent wants it."""
    if wants(agent_config, event):
        messages = await service.get_messages(session, chat_id=chat.id)
        await enqueue_event(
            session, chat=chat, event=event, agent_config=agent_config,
            snapshot=service.chat_out(chat, messages),
        )


async def create_chat(
    session: AsyncSession,
    *,
    workspace_id: int,
    agent_id: str,
    agent_version: int | None = None,
    metadata: dict[str, str] | None = None,
    dynamic_variables: dict[str, str] | None = None,
    chat_type: str = "api_chat",
    user_number: str | None = None,
    agent_number: str | None = None,
) -> tuple[Chat, list[ChatMessage]]:
    """Start a chat on the agent's latest (or given) version; the begin message,
    if the LLM has one, becomes its first assistant message."""
    agent, llm = await service.resolve_versions(
        session, workspace_id=workspace_id, agent_id=agent_id, agent_version=agent_version
    )
    now = utcnow()
    chat = Chat(
        id=new_id("chat"),
        workspace_id=workspace_id,
        agent_id=agent.id,
        agent_version=agent.version,
        llm_id=llm.id,
        llm_version=llm.version,
        type=chat_type,
        status="ongoing",
        metadata_=metadata or {},
        custom_attributes={},
        dynamic_variables=dynamic_variables or {},
        override_dynamic_variables={},
        collected_dynamic_variables={},
        current_state=llm.config.get("starting_state"),
        message_count=0,
        started_at=now,
        user_number=user_number,
        agent_number=agent_number,
    )
    session.add(chat)
    await session.flush()
    versions = service.Versions(agent=agent.config, llm=llm.config)
    begin = render(
        llm.config.get("begin_message"),
        service.chat_variables(chat, versions),
        now=now,
        timezone=agent.config["timezone"],
    )
    messages = await append(session, chat, [NewMessage("assistant", begin, now)]) if begin.strip() else []
    await emit(session, chat, "chat_started", agent.config)
    return chat, messages


async def finish_chat(
    session: AsyncSession, *, chat: Chat, reason: str, now: datetime | None = None, registry: Any = None
) -> Chat:
    """End an ongoing chat and queue what follows. The caller holds the chat's turn lock.

    With the ``registry``, the chat's cost so far is computed at once, so the
    ``chat_ended`` event carries it (analysis adds its own tokens later).
    """
    await service.end_chat(session, chat=chat, reason=reason, now=now)
    if registry is not None:
        await update_cost(session, registry=registry, chat=chat)
        await session.flush()
    agent_config = await agent_config_of(session, chat)
    await emit(session, chat, "chat_ended", agent_config)
    await jobs.enqueue(session, ANALYZE_JOB, {"chat_id": chat.id}, dedupe_key=f"analyze:{chat.id}")
    return chat


# --- auto-close --------------------------------------------------------------
