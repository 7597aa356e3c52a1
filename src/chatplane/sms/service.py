"""Phone numbers, outbound SMS chats, and the outbox of texts to send.

A text to send is an outbound ``SmsMessage`` row plus a ``sms.send`` job,
written in the caller's transaction: the reply texts of a turn are kept or
dropped with what caused them, and a crash does not lose them.
"""

from __future__ import annotations

import random
from collections.abc import Iterable
from typing import Any

from sqlalchemy import delete, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from chatplane import configs, jobs
from chatplane.chats.lifecycle import create_chat
from chatplane.db import get_scoped, utcnow
from chatplane.errors import Conflict, InvalidInput, NotFound, shown
from chatplane.ids import new_id
from chatplane.models import Chat, ChatAgent, ChatMessage, PhoneNumber, SmsMessage
from chatplane.pagination import PageRequest, fetch_page
from chatplane.schemas import validate_merged
from chatplane.settings import Settings
from chatplane.sms import credentials
from chatplane.sms.schemas import CreateSmsChatRequest, PhoneNumberConfig, PhoneNumberCreate
from chatplane.sms.twilio import split_text

SEND_JOB = "sms.send"
SEND_ATTEMPTS = 6  # 2 s doubling: a text still unsent after ~1 minute of retries is given up
CREDENTIAL_FIELDS = ("twilio_account_sid", "twilio_auth_token")


def phone_number_not_found(number: str) -> NotFound:
    return NotFound(f"phone number {shown(number)} not found", code="phone_number_not_found")


def conversation_key(agent_number: str, user_number: str) -> str:
    return f"{agent_number}:{user_number}"


# --- phone numbers --------------------------------------------------------------


async def _check_agents(session: AsyncSession, *, workspace_id: int, config: dict[str, Any]) -> None:
    for field in ("inbound_sms_agents", "outbound_sms_agents"):
        for index, agent in enumerate(config[field]):
            try:
                await configs.get(
                    session, ChatAgent, workspace_id=workspace_id, id=agent["agent_id"],
                    version=agent.get("agent_version"),
                )
            except NotFound as exc:
                raise InvalidInput(exc.message, field=f"{field}[{index}].agent_id") from None


def _config_of(model: PhoneNumberConfig) -> dict[str, Any]:
    return model.model_dump(mode="json", include=set(PhoneNumberConfig.model_fields))


async def create_phone_number(
    session: AsyncSession, *, workspace_id: int, body: PhoneNumberCreate, settings: Settings
) -> PhoneNumber:
    config = _config_of(body)
    await _check_agents(session, workspace_id=workspace_id, config=config)
    taken = Conflict(f"phone number {body.phone_number} is already configured", code="phone_number_taken")
    if await session.get(PhoneNumber, body.phone_number) is not None:
        raise taken
    now = utcnow()
    row = PhoneNumber(
        phone_number=body.phone_number,
        workspace_id=workspace_id,
        twilio_account_sid=body.twilio_account_sid,
        twilio_auth_token=credentials.seal(settings, body.twilio_auth_token),
        config=config,
        created_at=now,
        updated_at=now,
    )
    session.add(row)
    try:
        await session.flush()
    except IntegrityError:  # configured by someone else a moment ago
        raise taken from None
    return row


async def get_phone_number(
    session: AsyncSession, *, workspace_id: int, phone_number: str, for_update: bool = False
) -> PhoneNumber:
    return await get_scoped(
        session, PhoneNumber.phone_number, phone_number, workspace_id=workspace_id,
        missing=lambda: phone_number_not_found(phone_number), for_update=for_update,
    )


async def list_phone_numbers(
    session: AsyncSession, *, workspace_id: int, page: PageRequest
) -> tuple[list[PhoneNumber], str | None]:
    query = select(PhoneNumber).where(PhoneNumber.workspace_id == workspace_id)
    return await fetch_page(session, query, PhoneNumber.phone_number, page)


async def update_phone_number(
    session: AsyncSession, *, workspace_id: int, phone_number: str, patch: dict[str, Any], settings: Settings
) -> PhoneNumber:
    """Apply the fields sent; new Twilio credentials replace the stored ones."""
    row = await get_phone_number(session, workspace_id=workspace_id, phone_number=phone_number, for_update=True)
    secrets = {name: patch.pop(name) for name in CREDENTIAL_FIELDS if name in patch}
    merged = validate_merged(PhoneNumberConfig, row.config, patch)
    config = _config_of(merged)  # type: ignore[arg-type]
    await _check_agents(session, workspace_id=workspace_id, config=config)
    row.config = config
    if secrets.get("twilio_account_sid"):
        row.twilio_account_sid = secrets["twilio_account_sid"]
    if secrets.get("twilio_auth_token"):
        row.twilio_auth_token = credentials.seal(settings, secrets["twilio_auth_token"])
    row.updated_at = utcnow()
    await session.flush()
    return row


async def delete_phone_number(session: AsyncSession, *, workspace_id: int, phone_number: str) -> None:
    """Forget the number. Its chats stay; texts still queued for it are not sent."""
    result = await session.execute(
        delete(PhoneNumber).where(
            PhoneNumber.phone_number == phone_number, PhoneNumber.workspace_id == workspace_id
        )
    )
    if result.rowcount == 0:
        raise phone_number_not_found(phone_number)


def pick_agent(agents: list[dict[str, Any]], *, rng: random.Random | None = None) -> dict[str, Any] | None:
    """One of ``agents`` ({agent_id, weight, agent_version?}), with probability its weight."""
    if not agents:
        return None
    return (rng or random).choices(agents, weights=[a["weight"] for a in agents])[0]


# --- SMS chats ------------------------------------------------------------------


async def ongoing_chat(
    session: AsyncSession, *, workspace_id: int, agent_number: str, user_number: str
) -> Chat | None:
    """The newest ongoing SMS chat between our number and theirs."""
    return await session.scalar(
        select(Chat)
        .where(
            Chat.agent_number == agent_number,
            Chat.user_number == user_number,
            Chat.workspace_id == workspace_id,
            Chat.type == "sms_chat",
            Chat.status == "ongoing",
        )
        .order_by(Chat.id.desc())
        .limit(1)
    )


async def start_sms_chat(
    session: AsyncSession, *, workspace_id: int, body: CreateSmsChatRequest
) -> tuple[Chat, list[ChatMessage]]:
    """Start an SMS chat from one of our numbers; its begin message is queued as the first text."""
    number = await get_phone_number(session, workspace_id=workspace_id, phone_number=body.from_number)
    if body.override_agent_id:
        agent_id, version = body.override_agent_id, body.override_agent_version
    else:
        choice = pick_agent(number.config.get("outbound_sms_agents") or [])
        if choice is None:
            raise InvalidInput(
                f"is required: phone number {body.from_number} has no outbound_sms_agents",
                field="override_agent_id",
            )
        agent_id, version = choice["agent_id"], choice.get("agent_version")
    ongoing = await ongoing_chat(
        session, workspace_id=workspace_id, agent_number=body.from_number, user_number=body.to_number
    )
    if ongoing is not None:
        # One conversation per pair of numbers: the user's reply must find its chat.
        raise Conflict(
            f"chat {ongoing.id} between {body.from_number} and {body.to_number} is ongoing; end it first",
            code="sms_chat_ongoing",
        )
    chat, messages = await create_chat(
        session,
        workspace_id=workspace_id,
        agent_id=agent_id,
        agent_version=version,
        metadata=body.metadata,
        dynamic_variables=body.uponai_dynamic_variables,
        chat_type="sms_chat",
        user_number=body.to_number,
        agent_number=body.from_number,
    )
    if not messages:
        # Rolled back with the request: an outbound chat that says nothing is no chat.
        raise Conflict(
            f"chat agent {agent_id} has no begin_message, and an outbound SMS chat starts with it",
            code="begin_message_missing",
        )
    await queue_agent_messages(session, chat=chat, messages=messages)
    return chat, messages


# --- the outbox -----------------------------------------------------------------


async def queue_text(
    session: AsyncSession,
    *,
    workspace_id: int,
    agent_number: str,
    user_number: str,
    body: str,
    chat_id: str | None,
    chat_message_id: str | None = None,
) -> list[SmsMessage]:
    """Queue ``body`` to be texted (as several texts if it is long), in the caller's transaction."""
    rows = []
    for part in split_text(body):
        row = SmsMessage(
            id=new_id("sms"), workspace_id=workspace_id, direction="outbound", agent_number=agent_number,
            user_number=user_number, body=part, media=[], status="queued", chat_id=chat_id,
            chat_message_id=chat_message_id, created_at=utcnow(),
        )
        session.add(row)
        rows.append(row)
    await session.flush()
    for row in rows:
        await jobs.enqueue(
            session, SEND_JOB, {"sms_id": row.id},
            # Texts of one conversation leave in the order they were queued.
            ordering_key=f"sms-send:{conversation_key(agent_number, user_number)}",
            dedupe_key=row.id,
            max_attempts=SEND_ATTEMPTS,
        )
    return rows


async def queue_agent_messages(session: AsyncSession, *, chat: Chat, messages: Iterable[ChatMessage]) -> None:
    """Text the agent's messages of an SMS chat to its user, once each (a message
    already queued is skipped, so a repeated run queues nothing twice)."""
    wanted = [m for m in messages if m.role == "assistant" and (m.content or "").strip()]
    if chat.type != "sms_chat" or not chat.agent_number or not chat.user_number or not wanted:
        return
    queued = set(
        (
            await session.scalars(
                select(SmsMessage.chat_message_id).where(
                    SmsMessage.chat_id == chat.id, SmsMessage.chat_message_id.in_([m.id for m in wanted])
                )
            )
        ).all()
    )
    for message in wanted:
        if message.id not in queued:
            await queue_text(
                session, workspace_id=chat.workspace_id, agent_number=chat.agent_number,
                user_number=chat.user_number, body=message.content, chat_id=chat.id, chat_message_id=message.id,
            )
