"""The SMS jobs: answer a conversation's texts as one turn; send one text.

``sms.answer`` (one per inbound text, all of a conversation in order):

1. Wait out the burst: while the newest pending text is younger than
   ``burst_window_s`` (and the oldest younger than ``burst_max_wait_s``),
   try again later. Then mark every pending text of the conversation as one
   batch, whose id is the turn's idempotency key.
2. Find the conversation's ongoing SMS chat, or start one (asking the
   number's ``inbound_sms_webhook_url`` first, if it has one).
3. Run the turn with the batch's texts as one user message. A job run again
   after a crash replays the stored turn (same key) instead of running a
   second one.
4. Mark the batch answered and queue the agent's messages as texts, in one
   transaction.

A model failure leaves the chat as it was (a turn is stored whole or not
at all); the batch is marked failed and the user is texted an apology.

``sms.send``: one queued text to Twilio, at most once (marked ``sending``
before the call; a run that finds it ``sending`` fails it rather than risk
a second copy). Twilio refusing it (a 4xx) fails it for good, and so does no
answer after the request went out (a read timeout: it may have been sent);
Twilio unreachable (no connection made) or answering 5xx/429 is retried with
backoff. Twilio's answer is written
on its own: a write that fails becomes an ``sms.record`` job, retried
without sending again.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession

from chatplane import jobs
from chatplane.chats.lifecycle import create_chat
from chatplane.db import transaction, utcnow
from chatplane.errors import AppError
from chatplane.ids import new_id
from chatplane.models import Chat, ChatMessage, PhoneNumber, SmsMessage
from chatplane.sms import credentials, service
from chatplane.sms.inbound import ANSWER_JOB, InboundDecision, ask_inbound_webhook
from chatplane.sms.twilio import TwilioMaybeSent, TwilioRefused, TwilioUnavailable, send_sms
from chatplane.webhooks.deliver import ensure_webhook_key

log = logging.getLogger(__name__)

# The chat went away between taking the texts and running the turn: start another.
_CHAT_GONE = frozenset({"chat_ended", "chat_not_found"})


def turn_content(texts: list[SmsMessage]) -> str:
    """The texts of a batch as one user message; attachments described, since
    the agent cannot open them."""
    lines = [t.body.strip() for t in texts if t.body.strip()]
    media = [m for t in texts for m in t.media or []]
    if media:
        kinds = ", ".join(sorted({m.get("content_type") or "unknown type" for m in media}))
        count = f"{len(media)} attachment" + ("s" if len(media) > 1 else "")
        lines.append(
            f"[The user sent {count} by MMS ({kinds}). You cannot see or open attachments: "
            "if it matters, say so and ask them to describe it in words.]"
        )
    return "\n".join(lines)


@jobs.handler(ANSWER_JOB)
async def answer(context: jobs.JobContext, payload: dict[str, Any]) -> None:
    services = context.services
    workspace_id, agent_number, user_number = payload["workspace_id"], payload["agent_number"], payload["user_number"]
    texts = await _take_batch(context.sessions, services.settings.sms, workspace_id, agent_number, user_number)
    if not texts:
        return
    batch = texts[0].batch
    assert batch is not None
    chat_id = texts[0].chat_id or await _chat_for(context, texts)
    if chat_id is None:
        return  # rejected, or no agent to start a chat with (recorded on the texts)
    try:
        answer = await services.turns.run(
            workspace_id=workspace_id, chat_id=chat_id, content=turn_content(texts), idempotency_key=batch
        )
    except AppError as exc:
        if exc.code in _CHAT_GONE:
            await _set_batch(context.sessions, batch, chat_id=None)
            raise jobs.RetryLater(f"chat {chat_id}: {exc.code}; the texts go to a new chat", after_s=0) from None
        # The model failed (or the chat cannot run): nothing of the turn was stored.
        await _apologise(context, texts, chat_id=chat_id, error=f"{exc.code}: {exc.message}")
        return
    except Exception as exc:
        if context.last_attempt:
            await _apologise(context, texts, chat_id=chat_id, error=f"{type(exc).__name__}: {exc}")
        raise
    await _answered(context.sessions, batch, chat_id=chat_id, messages=answer.body["messages"])


async def _take_batch(
    sessions: Any, settings: Any, workspace_id: int, agent_number: str, user_number: str
) -> list[SmsMessage]:
    """The conversation's texts for the next turn: an unfinished batch (a run
    that crashed), else every pending text once the burst is over."""
    async with transaction(sessions) as session:
        rows = list(
            (
                await session.scalars(
                    select(SmsMessage)
                    .where(
                        SmsMessage.agent_number == agent_number,
                        SmsMessage.user_number == user_number,
                        SmsMessage.workspace_id == workspace_id,
                        SmsMessage.direction == "inbound",
                        SmsMessage.status.in_(("pending", "batched")),
                    )
                    .order_by(SmsMessage.created_at, SmsMessage.id)
                )
            ).all()
        )
        unfinished = [r for r in rows if r.status == "batched"]
        if unfinished:
            return [r for r in unfinished if r.batch == unfinished[0].batch]
        if not rows:
            return []  # answered with an earlier text of the same burst
        now = utcnow()
        until = min(
            rows[-1].created_at + timedelta(seconds=settings.burst_window_s),
            rows[0].created_at + timedelta(seconds=settings.burst_max_wait_s),
        )
        if until > now:
            # More texts may be coming. The later texts' jobs wait behind this
            # one (same ordering key), so this one answers the whole burst.
            raise jobs.RetryLater("waiting for the end of a burst of texts", after_s=(until - now).total_seconds())
        batch = new_id("smsb")
        for row in rows:
            row.status, row.batch = "batched", batch
        return rows


async def _set_batch(sessions: Any, batch: str, **values: Any) -> None:
    async with transaction(sessions) as session:
        await session.execute(update(SmsMessage).where(SmsMessage.batch == batch).values(**values))


async def _chat_for(context: jobs.JobContext, texts: list[SmsMessage]) -> str | None:
    """The chat these texts continue or start; recorded on them. None when no chat may start."""
    first = texts[0]
    batch = first.batch
    workspace_id, agent_number, user_number = first.workspace_id, first.agent_number, first.user_number
    async with transaction(context.sessions) as session:
        chat = await service.ongoing_chat(
            session, workspace_id=workspace_id, agent_number=agent_number, user_number=user_number
        )
        if chat is not None:
            await _record_chat(session, batch, chat.id)
            return chat.id
        number = await session.get(PhoneNumber, agent_number)
        if number is None or number.workspace_id != workspace_id:
            await _record_end(session, batch, "failed", f"phone number {agent_number} is no longer configured")
            return None
        config = dict(number.config)
        key = await ensure_webhook_key(session, workspace_id=workspace_id) if config.get("inbound_sms_webhook_url") else ""

    default = service.pick_agent(config.get("inbound_sms_agents") or [])
    decision = InboundDecision()
    if config.get("inbound_sms_webhook_url"):
        decision = await ask_inbound_webhook(
            context.services.http, url=config["inbound_sms_webhook_url"], key=key, default_agent=default,
            agent_number=agent_number, user_number=user_number,
            timeout_s=context.services.settings.sms.inbound_webhook_timeout_s,
            allow_private=context.services.settings.allow_private_networks,
        ) or InboundDecision()  # no usable answer: as Retell, fall back to the number's agents
    if decision.override_agent_id:
        agent_id, version = decision.override_agent_id, decision.override_agent_version
    elif default is not None:
        agent_id, version = default["agent_id"], default.get("agent_version")
    else:
        async with transaction(context.sessions) as session:
            await _record_end(session, batch, "rejected", "no agent accepted the text")
        return None

    async with transaction(context.sessions) as session:
        # An outbound chat may have started meanwhile: continue it.
        chat = await service.ongoing_chat(
            session, workspace_id=workspace_id, agent_number=agent_number, user_number=user_number
        )
        if chat is None:
            try:
                chat, messages = await create_chat(
                    session, workspace_id=workspace_id, agent_id=agent_id, agent_version=version,
                    metadata=decision.metadata, dynamic_variables=decision.dynamic_variables,
                    chat_type="sms_chat", user_number=user_number, agent_number=agent_number,
                )
            except AppError as exc:  # the agent (or its LLM) is gone: nobody to answer
                await _record_end(session, batch, "failed", f"{exc.code}: {exc.message}")
                return None
            await service.queue_agent_messages(session, chat=chat, messages=messages)
        await _record_chat(session, batch, chat.id)
        return chat.id


async def _record_chat(session: AsyncSession, batch: str | None, chat_id: str) -> None:
    await session.execute(update(SmsMessage).where(SmsMessage.batch == batch).values(chat_id=chat_id))


async def _record_end(session: AsyncSession, batch: str | None, status: str, error: str) -> None:
    log.info("SMS batch %s %s: %s", batch, status, error)
    await session.execute(update(SmsMessage).where(SmsMessage.batch == batch).values(status=status, error=error))


async def _answered(sessions: Any, batch: str, *, chat_id: str, messages: list[dict[str, Any]]) -> None:
    """Mark the batch answered, keep its attachments on the user's message and
    queue the agent's messages as texts: one transaction, safe to repeat."""
    async with transaction(sessions) as session:
        chat = await session.get(Chat, chat_id)
        texts = list((await session.scalars(select(SmsMessage).where(SmsMessage.batch == batch))).all())
        ids = [m["messageId"] for m in messages]
        replies = list(
            (await session.scalars(select(ChatMessage).where(ChatMessage.id.in_(ids)).order_by(ChatMessage.seq))).all()
        )
        media = [m for t in texts for m in t.media or []]
        if media and replies:
            user = await session.scalar(
                select(ChatMessage).where(ChatMessage.chat_id == chat_id, ChatMessage.seq == replies[0].seq - 1)
            )
            if user is not None and user.role == "user":
                user.multimedia = media
        if chat is not None:
            await service.queue_agent_messages(session, chat=chat, messages=replies)
        for text in texts:
            text.status, text.chat_id = "answered", chat_id


async def _apologise(context: jobs.JobContext, texts: list[SmsMessage], *, chat_id: str, error: str) -> None:
    """The turn could not be run: mark its texts failed and text the user an apology (once)."""
    log.warning("SMS turn on chat %s failed: %s", chat_id, error)
    first = texts[0]
    async with transaction(context.sessions) as session:
        current = list((await session.scalars(select(SmsMessage).where(SmsMessage.batch == first.batch))).all())
        if all(t.status == "failed" for t in current):
            return
        for text in current:
            text.status, text.error = "failed", error[:2000]
        await service.queue_text(
            session, workspace_id=first.workspace_id, agent_number=first.agent_number,
            user_number=first.user_number, body=context.services.settings.sms.apology, chat_id=chat_id,
        )


# --- sending ----------------------------------------------------------------------
#
# At most once: a person must never get the same text twice, and Twilio takes no
# idempotency key. So the text is marked `sending` (committed) before Twilio is
# called, and a run that finds it `sending` does not call Twilio again: an
# earlier run died (or lost its lease) between the call and the write, and the
# text may have gone out. What Twilio answered is then written in a transaction
# of its own; when that write fails, the answer is queued as an `sms.record` job,
# retried without anything being sent.

RECORD_JOB = "sms.record"
RECORD_ATTEMPTS = 12  # with the worker's backoff, about half an hour to an hour of retries
MAYBE_SENT = (
    "interrupted after it was handed to Twilio and before Twilio's answer was recorded: "
    "it may have gone out, so it is not sent again"
)


@dataclass(frozen=True)
class _Outgoing:
    account_sid: str
    auth_token: str
    to: str
    from_: str
    body: str


@jobs.handler(service.SEND_JOB)
async def send(context: jobs.JobContext, payload: dict[str, Any]) -> None:
    """Hand one queued text to Twilio, at most once. No connection is held while Twilio answers."""
    sms_id = payload["sms_id"]
    outgoing = await _start_sending(context, sms_id)
    if outgoing is None:
        return
    try:
        sid = await send_sms(
            context.services.settings.sms, account_sid=outgoing.account_sid, auth_token=outgoing.auth_token,
            to=outgoing.to, from_=outgoing.from_, body=outgoing.body,
        )
    except (TwilioRefused, TwilioMaybeSent) as exc:  # never sent again
        await _record_answer(context, sms_id, status="failed", error=str(exc))
        return
    except TwilioUnavailable as exc:
        # Not taken: queued again for the next attempt (the last one gives up). Should
        # this write fail, the next attempt finds it `sending` and does not send it.
        await _record(context.sessions, sms_id, status="failed" if context.last_attempt else "queued",
                      error=str(exc))
        raise
    await _record_answer(context, sms_id, status="sent", sid=sid, sent_at=utcnow().isoformat())


async def _start_sending(context: jobs.JobContext, sms_id: str) -> _Outgoing | None:
    """Mark the text `sending` and return what to send; None when it is not to be sent."""
    async with transaction(context.sessions) as session:
        text = await session.get(SmsMessage, sms_id, with_for_update=True)
        if text is None or text.status not in ("queued", "sending"):
            return None  # sent by an earlier run, or given up
        if text.status == "sending":
            log.warning("SMS %s was found sending: not sent again", sms_id)
            text.status, text.error = "failed", MAYBE_SENT
            return None
        number = await session.get(PhoneNumber, text.agent_number)
        if number is None or number.workspace_id != text.workspace_id:
            text.status, text.error = "failed", f"phone number {text.agent_number} is no longer configured"
            return None
        try:
            token = credentials.unseal(context.services.settings, number.twilio_auth_token)
        except credentials.CredentialsUnreadable as exc:
            text.status, text.error = "failed", str(exc)
            return None
        text.status = "sending"
        return _Outgoing(number.twilio_account_sid, token, text.user_number, text.agent_number, text.body)


async def _record_answer(context: jobs.JobContext, sms_id: str, **answer: Any) -> None:
    """Record what Twilio answered, now or by an ``sms.record`` job of its own."""
    try:
        await _record(context.sessions, sms_id, **answer)
    except Exception as exc:  # noqa: BLE001 - kept, not hidden: the job retries the write and shows its error
        log.warning("SMS %s: recording Twilio's answer %s failed, queued to retry: %s", sms_id, answer, exc)
        async with transaction(context.sessions) as session:
            await jobs.enqueue(
                session, RECORD_JOB, {"sms_id": sms_id, **answer}, dedupe_key=sms_id, max_attempts=RECORD_ATTEMPTS
            )


@jobs.handler(RECORD_JOB)
async def record(context: jobs.JobContext, payload: dict[str, Any]) -> None:
    """Write what Twilio answered for a text whose first write failed; Twilio is not called."""
    await _record(context.sessions, **payload)


async def _record(
    sessions: Any, sms_id: str, *, status: str, sid: str | None = None, error: str | None = None,
    sent_at: str | None = None,
) -> None:
    """The text's outcome. A message SID already stored on another text (the unique
    twilio_sid) is kept in ``error`` instead: the text did go out, and says so."""
    async with transaction(sessions) as session:
        text = await session.get(SmsMessage, sms_id, with_for_update=True)
        if text is None:
            return  # deleted with its chat meanwhile
        text.status, text.error = status, error
        if sent_at is not None:
            text.sent_at = datetime.fromisoformat(sent_at)
        if sid is None:
            return
        holder = await session.scalar(
            select(SmsMessage.id).where(SmsMessage.twilio_sid == sid, SmsMessage.id != sms_id)
        )
        if holder is None:
            text.twilio_sid = sid
        else:
            log.warning("SMS %s: Twilio's message SID %s is already recorded on %s", sms_id, sid, holder)
            text.error = f"Twilio accepted it as message {sid}, a SID already recorded on {holder}: kept here only"
