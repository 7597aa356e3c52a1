"""Closing idle chats: a monitor in each process queues one idempotent
``chat.auto_close`` job per idle chat (deduplicated), so several workers
never close a chat twice; the job says the agent's auto-close message (by
text, for an SMS chat) and ends the chat (``lifecycle.finish_chat``).
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import and_, func, or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from chatplane import jobs
from chatplane.chats.lifecycle import agent_config_of, finish_chat
from chatplane.chats.messages import NewMessage, append
from chatplane.db import transaction, utcnow
from chatplane.models import Chat, ChatAgent
from chatplane.sms.service import queue_agent_messages

log = logging.getLogger(__name__)

AUTO_CLOSE_JOB = "chat.auto_close"
MIN_SILENCE_MS = 120_000  # the smallest end_chat_after_silence_ms an agent may have


async def find_idle_chats(
    session: AsyncSession, *, now: datetime, limit: int = 500, page: int = 500
) -> list[str]:
    """Up to ``limit`` ongoing chats whose user has been silent at least the
    agent's ``end_chat_after_silence_ms`` since the agent last spoke (or since
    the chat started, if the agent has not).

    The SQL filter knows only the smallest silence any agent may have; each
    agent's own is checked here. So the candidates are read page by page
    until enough are idle: a first page full of patient agents' chats must
    not hide a quick agent's idle chat behind it.
    """
    last_agent = func.coalesce(Chat.last_agent_message_at, Chat.started_at)
    candidates = (
        select(Chat.id, last_agent, ChatAgent.config)
        .join(ChatAgent, and_(ChatAgent.id == Chat.agent_id, ChatAgent.version == Chat.agent_version))
        .where(
            Chat.status == "ongoing",
            last_agent <= now - timedelta(milliseconds=MIN_SILENCE_MS),
            or_(Chat.last_user_message_at.is_(None), Chat.last_user_message_at <= last_agent),
        )
        .order_by(Chat.id)
        .limit(page)
    )
    idle: list[str] = []
    after = ""  # chat ids are ULIDs, all greater than ""
    while len(idle) < limit:
        rows = (await session.execute(candidates.where(Chat.id > after))).all()
        for chat_id, since, config in rows:
            since = since if since.tzinfo else since.replace(tzinfo=now.tzinfo)
            if since + timedelta(milliseconds=config.get("end_chat_after_silence_ms", 3_600_000)) <= now:
                idle.append(chat_id)
        if len(rows) < page:
            break
        after = rows[-1][0]
    return idle[:limit]


async def queue_idle_chats(services: Any, *, now: datetime | None = None) -> int:
    """One monitor pass: an auto-close job per idle chat (deduplicated per chat)."""
    now = now or utcnow()
    async with transaction(services.sessions) as session:
        idle = await find_idle_chats(session, now=now)
        for chat_id in idle:
            await jobs.enqueue(
                session, AUTO_CLOSE_JOB, {"chat_id": chat_id, "now": now.isoformat()},
                dedupe_key=f"auto_close:{chat_id}",
            )
    return len(idle)


async def run_monitor(services: Any) -> None:
    await jobs.monitor(services, queue_idle_chats, "idle-chat")


@jobs.handler(AUTO_CLOSE_JOB)
async def auto_close(context: jobs.JobContext, payload: dict[str, Any]) -> None:
    """Close one chat if it is still idle: its auto-close message, then the end."""
    services = context.services
    chat_id = payload["chat_id"]
    now = datetime.fromisoformat(payload["now"]) if payload.get("now") else utcnow()
    async with services.locks.hold(chat_id):
        async with transaction(context.sessions) as session:
            chat = await session.get(Chat, chat_id, with_for_update=True)
            if chat is None or chat.status != "ongoing":
                return  # ended meanwhile, or deleted: nothing to do
            if chat.id not in await find_idle_chats(session, now=now):
                return  # the user spoke meanwhile
            config = await agent_config_of(session, chat)
            message = (config.get("auto_close_message") or "").strip()
            if message:
                closing = await append(session, chat, [NewMessage("assistant", message, utcnow())])
                if chat.type == "sms_chat":  # the user of an SMS chat reads it as a text
                    await queue_agent_messages(session, chat=chat, messages=closing)
            await finish_chat(session, chat=chat, reason="inactivity", registry=services.registry)
        services.turns.forget(chat_id)
