"""Delivering webhook events, and the delivery log behind /api/webhook-deliveries.

A delivery (``events.enqueue_event``) is sent by one ``webhook.deliver`` job:

- The stored payload is serialised once, compactly and with UTF-8 kept as is
  (``json.dumps(payload, separators=(",", ":"), ensure_ascii=False)``), and
  exactly those bytes are signed and sent. That is also what Retell's own
  receiver example re-serialises before ``Retell.verify``, so a receiver
  following either the raw-body or the Retell way verifies it.
- Each attempt is signed anew (``X-Retell-Signature`` carries the time of
  signing, which receivers check within five minutes), and carries the same
  ``X-Webhook-Event-Id`` (the delivery id) so receivers can drop repeats:
  delivery is at least once.
- A 2xx answer delivers. Anything else (another status, a timeout, a
  connection error; redirects are not followed) is written to the delivery's
  ``attempts`` in its own transaction and then raised, so the job is retried
  with backoff and, after its last attempt, the delivery is ``failed``.
- 410 Gone is taken as the receiver saying "stop": the delivery is ``failed``
  at once, without retries, and the chat's next events go ahead. It can still
  be sent again with ``redeliver``.
- A URL that may not be called (malformed, or not a public address:
  ``chatplane.outbound``) is not called: the attempt is logged as refused,
  the delivery is ``failed`` and the job too (``jobs.Permanent``), at once.
- No database connection is held while the receiver answers: read, send,
  record are three separate steps (on SQLite a transaction holds the only
  write lock).

The job's ordering key (one per chat) keeps a chat's events in order: a
later event waits while an earlier one is still being retried.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import time
from typing import Any

import httpx
from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession

from chatplane import jobs, outbound
from chatplane.db import get_scoped, transaction, utcnow
from chatplane.text import iso
from chatplane.errors import NotFound, shown
from chatplane.models import Chat, ChatAgent, WebhookDelivery, Workspace
from chatplane.pagination import PageRequest, fetch_page
from chatplane.signing import HEADER as SIGNATURE_HEADER
from chatplane.signing import sign
from chatplane.webhooks.events import DELIVER_JOB, MAX_ATTEMPTS

USER_AGENT = "chatplane-webhooks"
DEFAULT_TIMEOUT_MS = 10_000
# A delivery redelivered many times keeps only its latest attempts; their
# ``attempt`` numbers keep counting, so a gap shows that some were dropped.
KEPT_ATTEMPTS = 100


class DeliveryFailed(Exception):
    """One attempt did not deliver; the job is retried (its message is the job's last_error)."""


def serialize(payload: dict[str, Any]) -> str:
    """The exact text that is signed and sent."""
    return json.dumps(payload, separators=(",", ":"), ensure_ascii=False)


async def ensure_webhook_key(session: AsyncSession, *, workspace_id: int) -> str:
    """The workspace's webhook signing key, made on first use if it has none.

    Race-safe: of two first uses at once, the first write wins and both
    return the key that was stored.
    """
    key = await session.scalar(select(Workspace.webhook_key).where(Workspace.id == workspace_id))
    if key:
        return key
    await session.execute(
        update(Workspace)
        .where(Workspace.id == workspace_id, Workspace.webhook_key.is_(None))
        .values(webhook_key=secrets.token_hex(32))
        .execution_options(synchronize_session=False)
    )
    key = await session.scalar(select(Workspace.webhook_key).where(Workspace.id == workspace_id))
    if not key:
        raise NotFound(f"workspace {workspace_id} not found", code="workspace_not_found")
    return key


# --- the job ------------------------------------------------------------------


@jobs.handler(DELIVER_JOB)
async def deliver(context: jobs.JobContext, payload: dict[str, Any]) -> None:
    """Send one delivery once; record how it went; raise to be retried."""
    delivery_id = payload["delivery_id"]
    async with transaction(context.sessions) as session:
        delivery = await session.get(WebhookDelivery, delivery_id)
        if delivery is None or delivery.status == "delivered":
            return  # deleted, or a repeat run of a job that already delivered
        key = await ensure_webhook_key(session, workspace_id=delivery.workspace_id)
        url, event, body = delivery.url, delivery.event, serialize(delivery.payload)

    timeout_ms = int(payload.get("timeout_ms") or DEFAULT_TIMEOUT_MS)
    at = utcnow()
    started = time.monotonic()
    refused = await _refused(url, allow_private=context.services.settings.allow_private_networks)
    if refused:
        status_code, error = None, refused
    else:
        status_code, error = await _post(
            context.services.http, url, body=body, key=key, event=event, event_id=delivery_id,
            timeout_ms=timeout_ms,
        )
    duration_ms = round((time.monotonic() - started) * 1000)

    delivered = status_code is not None and 200 <= status_code < 300
    # 410 Gone, or an address we may not call: retrying cannot help.
    gone = status_code == 410 or refused is not None
    final = delivered or gone or context.last_attempt
    async with transaction(context.sessions) as session:
        delivery = await session.get(WebhookDelivery, delivery_id, with_for_update=True)
        if delivery is None:
            return
        earlier = list(delivery.attempts or [])
        number = (earlier[-1].get("attempt", len(earlier)) if earlier else 0) + 1
        record = {
            "at": iso(at),
            "attempt": number,
            "status_code": status_code,
            "error": error,
            "duration_ms": duration_ms,
        }
        # A new list, not an in-place append: the JSON column notices reassignment only.
        delivery.attempts = [*earlier, record][-KEPT_ATTEMPTS:]
        if delivered:
            delivery.status, delivery.delivered_at = "delivered", utcnow()
        elif delivery.status != "delivered":  # another run may have delivered meanwhile
            delivery.status = "failed" if final else "pending"
    if refused is not None:
        # Retrying would only be refused again, for hours: the job is parked
        # now, and redeliver can send it once the URL or the setting changes.
        raise jobs.Permanent(f"webhook {delivery_id} attempt {number}: {refused}")
    if not delivered and not gone:
        # Retried with backoff; after the job's last attempt the job is parked
        # as failed with this error, beside the delivery marked failed above.
        raise DeliveryFailed(f"webhook {delivery_id} attempt {number}: {error or f'HTTP {status_code}'}")


async def _refused(url: str, *, allow_private: bool) -> str | None:
    """Why this URL may not be called (malformed, or not a public address), or None.

    Checked before each attempt; the connection itself is then made by name,
    so a host that re-resolves between the check and the call (DNS
    rebinding) is not caught here: custom tools pin the address, webhooks do
    not yet.
    """
    try:
        # parse_url again: URLs saved before they were checked on save.
        await outbound.resolve_url(outbound.parse_url(url), allow_private=allow_private)
    except outbound.BadURL as exc:
        return f"refused: {exc}"
    except outbound.PrivateAddress as exc:
        return str(exc)
    except httpx.HTTPError:
        return None  # unresolvable, perhaps for now: the attempt itself reports it
    return None


async def _post(
    http: httpx.AsyncClient, url: str, *, body: str, key: str, event: str, event_id: str, timeout_ms: int
) -> tuple[int | None, str | None]:
    """POST once; returns (status code, None) or (None, what went wrong)."""
    headers = {
        "Content-Type": "application/json",
        SIGNATURE_HEADER: sign(body, key),
        "X-Webhook-Event-Id": event_id,
        "X-Webhook-Event": event,
        "User-Agent": USER_AGENT,
    }
    timeout_s = timeout_ms / 1000
    try:
        # httpx's timeout bounds each phase (connect, each read); the outer one
        # bounds the whole exchange, so a receiver that trickles cannot stretch it.
        async with asyncio.timeout(timeout_s):
            request = http.build_request("POST", url, content=body.encode(), headers=headers, timeout=timeout_s)
            # Streamed and closed unread: only the status matters, and a huge
            # answer must not be buffered.
            response = await http.send(request, stream=True, follow_redirects=False)
            await response.aclose()
        return response.status_code, None
    except (TimeoutError, httpx.TimeoutException):
        return None, f"timed out after {timeout_ms} ms"
    except (httpx.HTTPError, httpx.InvalidURL, OSError) as exc:
        detail = str(exc)
        return None, (f"{type(exc).__name__}: {detail}" if detail else type(exc).__name__)[:500]


# --- the delivery log ---------------------------------------------------------


def delivery_not_found(delivery_id: str) -> NotFound:
    return NotFound(f"webhook delivery {shown(delivery_id)} not found", code="webhook_delivery_not_found")


async def list_deliveries(
    session: AsyncSession,
    *,
    workspace_id: int,
    page: PageRequest,
    chat_id: str | None = None,
    status: str | None = None,
    event: str | None = None,
) -> tuple[list[WebhookDelivery], str | None]:
    """A page of the workspace's deliveries; ids are ULIDs, so id order is creation order."""
    query = select(WebhookDelivery).where(WebhookDelivery.workspace_id == workspace_id)
    if chat_id:
        query = query.where(WebhookDelivery.chat_id == chat_id)
    if status:
        query = query.where(WebhookDelivery.status == status)
    if event:
        query = query.where(WebhookDelivery.event == event)
    return await fetch_page(session, query, WebhookDelivery.id, page)


async def get_delivery(
    session: AsyncSession, *, workspace_id: int, delivery_id: str, for_update: bool = False
) -> WebhookDelivery:
    return await get_scoped(
        session, WebhookDelivery.id, delivery_id, workspace_id=workspace_id,
        missing=lambda: delivery_not_found(delivery_id), for_update=for_update,
    )


async def redeliver(session: AsyncSession, *, workspace_id: int, delivery_id: str) -> WebhookDelivery:
    """Send a delivery again, whatever its state: same event id, same payload,
    same URL; a fresh set of attempts. It queues behind the chat's other
    events still on their way, like any event of that chat.

    Asking twice before it is sent sends it once: a job that finds its
    delivery already delivered does nothing.
    """
    delivery = await get_delivery(session, workspace_id=workspace_id, delivery_id=delivery_id, for_update=True)
    delivery.status = "pending"
    delivery.delivered_at = None
    timeout_ms = DEFAULT_TIMEOUT_MS
    if delivery.chat_id:
        # The timeout of the agent version the chat ran on (it is not stored
        # with the delivery); the default if the chat is gone.
        config = await session.scalar(
            select(ChatAgent.config)
            .join(Chat, (Chat.agent_id == ChatAgent.id) & (Chat.agent_version == ChatAgent.version))
            .where(Chat.id == delivery.chat_id)
        )
        timeout_ms = (config or {}).get("webhook_timeout_ms", DEFAULT_TIMEOUT_MS)
    await session.flush()
    await jobs.enqueue(
        session,
        DELIVER_JOB,
        {"delivery_id": delivery.id, "timeout_ms": timeout_ms},
        ordering_key=f"chat:{delivery.chat_id}" if delivery.chat_id else f"webhook:{delivery.id}",
        max_attempts=MAX_ATTEMPTS,
    )
    return delivery
