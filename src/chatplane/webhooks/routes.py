"""/api/webhook-deliveries (the delivery log, redelivery) and a workspace's webhook key."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Path, Query
from pydantic import BaseModel, Field

from chatplane.agents.schemas import WebhookEvent
from chatplane.auth import CurrentPrincipal, QueryWorkspace, Session
from chatplane.errors import NotFound, error_responses
from chatplane.models import WebhookDelivery
from chatplane.pagination import Page, PageQuery
from chatplane.schemas import WorkspaceBody
from chatplane.webhooks import deliver as service

router = APIRouter(prefix="/api/webhook-deliveries", tags=["Webhooks"], responses=error_responses(401, 404, 422))
key_router = APIRouter(prefix="/api/workspaces", tags=["Account"], responses=error_responses(401, 404, 422))

DeliveryStatus = Literal["pending", "delivered", "failed"]


class Attempt(BaseModel):
    at: datetime = Field(description="When the attempt started.")
    attempt: int = Field(description="1 for the first attempt of this delivery, counting across redeliveries.")
    status_code: int | None = Field(description="The receiver's HTTP status; null if none came back.")
    error: str | None = Field(description="Why no status came back (timeout, connection error).")
    duration_ms: int


class WebhookDeliveryOut(BaseModel):
    id: str = Field(description="Also the event id, sent as `X-Webhook-Event-Id` on every attempt.")
    chatId: str | None
    event: WebhookEvent
    url: str
    status: DeliveryStatus = Field(
        description="`pending` (queued or being retried), `delivered` (a 2xx came back) or "
        "`failed` (retries exhausted, or the receiver answered 410 Gone)."
    )
    attempts: list[Attempt]
    createdAt: datetime
    deliveredAt: datetime | None
    payload: dict[str, Any] = Field(description='The body sent: `{"event", "chat"}`.')


class WebhookKeyOut(BaseModel):
    workspaceId: int
    webhook_key: str = Field(
        description="Signs `X-Retell-Signature` on webhooks: `Retell.verify(raw_body, webhook_key, signature)`."
    )


def delivery_out(row: WebhookDelivery) -> dict[str, Any]:
    return {
        "id": row.id,
        "chatId": row.chat_id,
        "event": row.event,
        "url": row.url,
        "status": row.status,
        "attempts": row.attempts or [],
        "createdAt": row.created_at,
        "deliveredAt": row.delivered_at,
        "payload": row.payload,
    }


DELIVERY_DESCRIPTION = """\
Newest first unless `sortOrder=ascending`; each with its payload and attempts.

How events are delivered: a `POST` of `{"event", "chat"}` (compact JSON, UTF-8)
to the agent's `webhook_url`, with `Content-Type: application/json`,
`X-Retell-Signature: v=<unix ms>,d=<hex HMAC-SHA256(body + ms)>` keyed by the
workspace's webhook key (`GET /api/workspaces/{id}/webhook-key`; retell-sdk's
`Retell.verify(body, key, signature)` accepts it), `X-Webhook-Event: <event>`
and `X-Webhook-Event-Id: <delivery id>`, the same on every attempt, for
de-duplication: delivery is at least once. Any 2xx delivers. Anything else,
a timeout (`webhook_timeout_ms`) or a connection error is retried with
exponential backoff (by default 2 s doubling to 30 min; 15 attempts, about 5 hours),
then the delivery is `failed`. Redirects are not followed. 410 Gone fails the
delivery at once, without retries. One chat's events are delivered in order:
a later event waits while an earlier one is being retried.
"""


@router.get("", response_model=Page[WebhookDeliveryOut], summary="List webhook deliveries",
            description=DELIVERY_DESCRIPTION)
async def list_deliveries(
    session: Session,
    workspace_id: QueryWorkspace,
    page: PageQuery,
    chat_id: Annotated[str | None, Query(alias="chatId", max_length=64)] = None,
    status: DeliveryStatus | None = None,
    event: WebhookEvent | None = None,
) -> dict:
    rows, key = await service.list_deliveries(
        session, workspace_id=workspace_id, page=page, chat_id=chat_id, status=status, event=event
    )
    return {"data": [delivery_out(r) for r in rows], "pagination_key": key}


@router.get("/{delivery_id}", response_model=WebhookDeliveryOut, summary="Get webhook delivery")
async def get_delivery(delivery_id: str, session: Session, workspace_id: QueryWorkspace) -> dict:
    return delivery_out(await service.get_delivery(session, workspace_id=workspace_id, delivery_id=delivery_id))


@router.post("/{delivery_id}/redeliver", status_code=202, response_model=WebhookDeliveryOut,
             summary="Send a webhook delivery again",
             description="Queues the same event (same id, payload and URL) for a new round of attempts, "
             "whatever its status; it is `pending` until sent.",
             responses=error_responses(413))
async def redeliver(delivery_id: str, body: WorkspaceBody, session: Session, principal: CurrentPrincipal) -> dict:
    workspace_id = principal.require(body.workspace_id)
    return delivery_out(await service.redeliver(session, workspace_id=workspace_id, delivery_id=delivery_id))


@key_router.get("/{workspace_id}/webhook-key", response_model=WebhookKeyOut, summary="Get the webhook signing key",
                description="The key that signs this workspace's webhooks (made on first read if it has none).")
async def get_webhook_key(
    workspace_id: Annotated[str, Path(description="The workspace id (an integer).")],
    session: Session,
    principal: CurrentPrincipal,
) -> dict:
    # Taken as text so that an id that is not a number answers 404, like any
    # other workspace this key cannot see, rather than 422.
    if not (workspace_id.isascii() and workspace_id.isdigit()) or len(workspace_id) > 18:
        raise NotFound(f"workspace {workspace_id} not found", code="workspace_not_found")
    workspace = principal.require(int(workspace_id))
    return {"workspaceId": workspace, "webhook_key": await service.ensure_webhook_key(session, workspace_id=workspace)}
