"""Webhook events: recorded with the change that causes them, delivered by jobs."""

from __future__ import annotations

from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from chatplane import jobs
from chatplane.db import utcnow
from chatplane.text import iso
from chatplane.ids import new_id
from chatplane.models import Chat, WebhookDelivery
from chatplane.retell.shapes import shape_chat

DELIVER_JOB = "webhook.deliver"
# Retried with backoff for hours: 2 s doubling to a 30-minute cap, 15 tries
# (about 5 hours), then parked as failed and visible in the delivery log.
MAX_ATTEMPTS = 15


def wants(agent_config: dict[str, Any], event: str) -> bool:
    return bool(agent_config.get("webhook_url")) and event in (agent_config.get("webhook_events") or [])


async def enqueue_event(
    session: AsyncSession, *, chat: Chat, event: str, agent_config: dict[str, Any], snapshot: dict[str, Any]
) -> WebhookDelivery | None:
    """Record ``event`` for the chat's agent webhook (if it wants it) and queue
    its delivery, in the caller's transaction. ``snapshot`` is the Chat object
    as the event saw it (``chats.service.chat_out`` with messages)."""
    if not wants(agent_config, event):
        return None
    delivery = WebhookDelivery(
        id=new_id("whd"),
        workspace_id=chat.workspace_id,
        chat_id=chat.id,
        event=event,
        url=agent_config["webhook_url"],
        payload={"event": event, "chat": _jsonable(_shaped(snapshot, agent_config))},
        status="pending",
        attempts=[],
        created_at=utcnow(),
    )
    session.add(delivery)
    await session.flush()
    await jobs.enqueue(
        session,
        DELIVER_JOB,
        {"delivery_id": delivery.id, "timeout_ms": agent_config.get("webhook_timeout_ms", 10_000)},
        ordering_key=f"chat:{chat.id}",  # one chat's events arrive in order
        max_attempts=MAX_ATTEMPTS,
    )
    return delivery


def _shaped(snapshot: dict[str, Any], agent_config: dict[str, Any]) -> dict[str, Any]:
    """The chat as the agent's ``webhook_format`` asks: chatplane's, or Retell's ``ChatResponse``."""
    return shape_chat(snapshot) if agent_config.get("webhook_format") == "retell" else snapshot


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_jsonable(v) for v in value]
    if hasattr(value, "isoformat"):
        return iso(value)
    return value
