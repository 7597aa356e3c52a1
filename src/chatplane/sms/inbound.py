"""Texts coming in: Twilio's webhook (verify, record, queue) and the number's
own ``inbound_sms_webhook_url``, asked before a text starts a chat.

The webhook request only verifies and records: the text is stored and an
``sms.answer`` job queued in one transaction, and Twilio gets its 200 at
once. The model is never waited for inside Twilio's request, so a slow
model cannot make Twilio time out and send the text again.
"""

from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import httpx
from sqlalchemy.ext.asyncio import AsyncSession

from chatplane import jobs, outbound, text
from chatplane.db import insert_of, utcnow
from chatplane.errors import AppError, InvalidInput
from chatplane.ids import new_id
from chatplane.models import PhoneNumber, SmsMessage
from chatplane.settings import Settings
from chatplane.signing import HEADER as RETELL_SIGNATURE_HEADER
from chatplane.signing import sign
from chatplane.sms import credentials
from chatplane.sms.service import conversation_key
from chatplane.sms.twilio import signature_valid

log = logging.getLogger(__name__)

ANSWER_JOB = "sms.answer"
WEBHOOK_TRIES = 3
MAX_MEDIA = 10  # Twilio sends at most 10 attachments with one message


class SignatureInvalid(AppError):
    status = 403
    code = "invalid_signature"


def _clean(value: str) -> str:
    # A person's text cannot be refused: a NUL (PostgreSQL cannot store it)
    # or a lone surrogate in it is kept as U+FFFD (chatplane.text).
    return text.clean(value)


async def receive_text(
    session: AsyncSession, *, settings: Settings, url: str, params: dict[str, str], signature: str | None
) -> bool:
    """Verify and record one of Twilio's message webhooks; queue its answer.

    ``url`` is the URL Twilio signed (the configured public URL and the path).
    Returns False for a MessageSid already recorded (Twilio retrying): nothing
    more is stored or queued. Raises ``SignatureInvalid`` (403) when the
    signature does not verify against the auth token of the number texted,
    and for a number not configured here, with the same message.
    """
    number = await session.get(PhoneNumber, params.get("To", "")) if params.get("To") else None
    token = None
    if number is not None:
        try:
            token = credentials.unseal(settings, number.twilio_auth_token)
        except credentials.CredentialsUnreadable:
            log.error("auth token of %s does not decrypt: was encryption_key changed?", number.phone_number)
    if (
        number is None
        or token is None
        or not signature_valid(token, url, params, signature)
        or params.get("AccountSid", number.twilio_account_sid) != number.twilio_account_sid
    ):
        raise SignatureInvalid(
            "X-Twilio-Signature does not verify for this request (checked against the auth token of "
            "the number texted and the server's public URL)"
        )
    sid = params.get("MessageSid") or params.get("SmsSid")
    if not sid:
        raise InvalidInput("is required", field="MessageSid")
    user_number = _clean(params.get("From", ""))
    if not user_number:
        raise InvalidInput("is required", field="From")
    media = []
    count = int(n) if (n := params.get("NumMedia", "")).isascii() and n.isdigit() else 0
    for index in range(min(count, MAX_MEDIA)):
        if media_url := params.get(f"MediaUrl{index}"):
            media.append({"url": _clean(media_url), "content_type": _clean(params.get(f"MediaContentType{index}", ""))})

    now = utcnow()
    insert = insert_of(session)
    inserted = await session.scalar(
        insert(SmsMessage)
        .values(
            id=new_id("sms"), workspace_id=number.workspace_id, direction="inbound", twilio_sid=_clean(sid)[:64],
            agent_number=number.phone_number, user_number=user_number[:64], body=_clean(params.get("Body", "")),
            media=media, status="pending", created_at=now,
        )
        .on_conflict_do_nothing(index_elements=["twilio_sid"])
        .returning(SmsMessage.id)
    )
    if inserted is None:
        return False
    await jobs.enqueue(
        session,
        ANSWER_JOB,
        {"workspace_id": number.workspace_id, "agent_number": number.phone_number, "user_number": user_number},
        # First look once the burst window has passed: a burst is answered once.
        run_at=now + timedelta(seconds=settings.sms.burst_window_s),
        ordering_key=f"sms-answer:{conversation_key(number.phone_number, user_number)}",
    )
    return True


# --- the number's inbound webhook -------------------------------------------------


@dataclass
class InboundDecision:
    """What a number's ``inbound_sms_webhook_url`` answered (Retell's ``chat_inbound``)."""

    override_agent_id: str | None = None
    override_agent_version: int | None = None
    dynamic_variables: dict[str, str] = field(default_factory=dict)
    metadata: dict[str, str] = field(default_factory=dict)


def _strings(value: Any) -> dict[str, str]:
    if not isinstance(value, dict):
        return {}
    return {str(k): v if isinstance(v, str) else json.dumps(v) for k, v in value.items()}


def parse_decision(data: Any) -> InboundDecision:
    """``{"chat_inbound": {override_agent_id?, override_agent_version?, dynamic_variables?, metadata?}}``;
    an empty answer changes nothing."""
    if data is None or data == "":
        return InboundDecision()
    if not isinstance(data, dict):
        raise ValueError("the answer is not a JSON object")
    inner = data.get("chat_inbound") or {}
    if not isinstance(inner, dict):
        raise ValueError("chat_inbound is not an object")
    agent_id = inner.get("override_agent_id")
    version = inner.get("override_agent_version")
    if agent_id is not None and not isinstance(agent_id, str):
        raise ValueError("override_agent_id is not a string")
    if version is not None and (not isinstance(version, int) or isinstance(version, bool) or version < 1):
        raise ValueError("override_agent_version is not a positive integer")
    return InboundDecision(
        override_agent_id=agent_id or None,
        override_agent_version=version,
        dynamic_variables=_strings(inner.get("dynamic_variables")),
        metadata=_strings(inner.get("metadata")),
    )


async def ask_inbound_webhook(
    http: httpx.AsyncClient,
    *,
    url: str,
    key: str,
    default_agent: dict[str, Any] | None,
    agent_number: str,
    user_number: str,
    timeout_s: float,
    allow_private: bool,
) -> InboundDecision | None:
    """POST Retell's ``chat_inbound`` event, signed like every webhook; None if it
    never answered usably (tried ``WEBHOOK_TRIES`` times) or may not be called.

    Its answer ends up in the chat (metadata, variables), so like webhooks and
    custom tools it may not reach private addresses unless allowed.
    """
    try:
        # parse_url again: URLs saved before they were checked on save.
        await outbound.resolve_url(outbound.parse_url(url), allow_private=allow_private)
    except outbound.BadURL as exc:
        log.warning("inbound SMS webhook %s refused: %s", url, exc)
        return None
    except outbound.PrivateAddress as exc:
        log.warning("inbound SMS webhook %s: %s", url, exc)  # says outbound.REFUSED, not the address
        return None
    except httpx.HTTPError:
        pass  # unresolvable, perhaps for now: the tries below report it
    payload = {
        "event": "chat_inbound",
        "chat_inbound": {
            "agent_id": default_agent["agent_id"] if default_agent else None,
            "agent_version": default_agent.get("agent_version") if default_agent else None,
            "from_number": user_number,
            "to_number": agent_number,
        },
    }
    body = json.dumps(payload, separators=(",", ":"), ensure_ascii=False)
    for attempt in range(1, WEBHOOK_TRIES + 1):
        headers = {"Content-Type": "application/json", RETELL_SIGNATURE_HEADER: sign(body, key)}
        try:
            async with asyncio.timeout(timeout_s):
                response = await http.post(url, content=body.encode(), headers=headers, timeout=timeout_s)
            if 200 <= response.status_code < 300:
                return parse_decision(response.json() if response.content.strip() else None)
            problem = f"HTTP {response.status_code}"
        except (TimeoutError, httpx.HTTPError, httpx.InvalidURL, OSError, ValueError) as exc:
            problem = f"{type(exc).__name__}: {exc}"
        log.warning("inbound SMS webhook %s, try %s: %s", url, attempt, problem)
        if attempt < WEBHOOK_TRIES:
            await asyncio.sleep(0.5 * 2 ** (attempt - 1))
    return None
