"""Retell phone numbers as far as SMS needs them, and ``/create-sms-chat``.

A number here is a Twilio number of your own (``phone_number_type`` ``custom``):
``/import-phone-number`` takes its Twilio account SID and auth token, fields
Retell's shape lacks (``extra_body`` in the SDK: docs/retell.md), stored
encrypted and never returned. Retell's voice fields (SIP trunks, codecs,
voice agents, country lists) are accepted and not kept.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query, Request, Response
from pydantic import Field

from chatplane.auth import Session
from chatplane.chats import service as chats
from chatplane.chats.schemas import StringMap
from chatplane.errors import error_responses
from chatplane.models import PhoneNumber
from chatplane.pagination import SortOrder
from chatplane.retell.common import (
    RESPONSES,
    TAG,
    RetellBody,
    RetellWorkspace,
    listed,
    page_of,
    validated,
)
from chatplane.retell.shapes import ms, shape_chat
from chatplane.schemas import MAX_VERSION, Variables
from chatplane.sms import service
from chatplane.sms.schemas import (
    E164,
    AccountSid,
    AuthToken,
    CreateSmsChatRequest,
    PhoneNumberCreate,
    PhoneNumberUpdate,
    SmsAgent,
)

router = APIRouter(tags=[TAG], responses=RESPONSES)

SERVED = ("nickname", "inbound_sms_agents", "outbound_sms_agents", "inbound_sms_webhook_url")


class _VoiceFields(RetellBody):
    """Retell's voice fields of a number: accepted, not kept."""

    allowed_inbound_country_list: Any = None
    allowed_outbound_country_list: Any = None
    codecs: Any = None
    inbound_agents: Any = None
    outbound_agents: Any = None
    inbound_webhook_url: Any = None
    termination_uri: Any = None
    transport: Any = None


class ImportNumberBody(_VoiceFields):
    phone_number: E164
    nickname: str | None = Field(default=None, max_length=200)
    twilio_account_sid: AccountSid = Field(description="chatplane's: the Twilio account the number belongs to.")
    twilio_auth_token: AuthToken = Field(description="chatplane's: that account's auth token (never returned).")
    inbound_sms_agents: list[SmsAgent] | None = None
    outbound_sms_agents: list[SmsAgent] | None = None
    inbound_sms_webhook_url: str | None = None
    ignore_e164_validation: Any = None
    sip_trunk_auth_password: Any = None
    sip_trunk_auth_username: Any = None


class UpdateNumberBody(_VoiceFields):
    nickname: str | None = Field(default=None, max_length=200)
    inbound_sms_agents: list[SmsAgent] | None = None
    outbound_sms_agents: list[SmsAgent] | None = None
    inbound_sms_webhook_url: str | None = None
    twilio_account_sid: AccountSid | None = None
    twilio_auth_token: AuthToken | None = None
    auth_password: Any = None
    auth_username: Any = None
    fallback_number: Any = None


def number_out(row: PhoneNumber) -> dict[str, Any]:
    """A number in Retell's shape (``retell-sdk`` ``PhoneNumberResponse``)."""
    config = row.config
    return {
        **{name: config.get(name) for name in SERVED},
        "phone_number": row.phone_number,
        "phone_number_type": "custom",
        "last_modification_timestamp": ms(row.updated_at),
    }


def _ours(body: RetellBody, names: set[str]) -> dict[str, Any]:
    return {k: v for k, v in body.model_dump(include=names, exclude_unset=True).items() if v is not None}


@router.post("/import-phone-number", status_code=201, summary="Import phone number (Retell)",
             description="A Twilio number of yours, with its `twilio_account_sid` and `twilio_auth_token` "
             "(chatplane's fields; stored encrypted, never returned). 409 `phone_number_taken` if it is "
             "configured in a workspace already.", responses=error_responses(409, 413))
async def import_phone_number(body: ImportNumberBody, request: Request, session: Session,
                              workspace_id: RetellWorkspace) -> dict[str, Any]:
    ours = _ours(body, {*SERVED, "phone_number", "twilio_account_sid", "twilio_auth_token"})
    create = validated(PhoneNumberCreate, {"workspaceId": workspace_id, **ours})
    row = await service.create_phone_number(session, workspace_id=workspace_id, body=create,
                                            settings=request.app.state.settings)
    return number_out(row)


@router.get("/get-phone-number/{phone_number}", summary="Get phone number (Retell)")
async def get_phone_number(phone_number: str, session: Session, workspace_id: RetellWorkspace) -> dict[str, Any]:
    return number_out(await service.get_phone_number(session, workspace_id=workspace_id, phone_number=phone_number))


@router.get("/v2/list-phone-numbers", summary="List phone numbers (Retell)", description="Ordered by number.")
async def list_phone_numbers(
    session: Session, workspace_id: RetellWorkspace, limit: Annotated[int, Query(ge=1, le=1000)] = 50,
    pagination_key: str | None = None, sort_order: SortOrder = "ascending",
) -> dict[str, Any]:
    rows, key = await service.list_phone_numbers(session, workspace_id=workspace_id,
                                                 page=page_of(limit, pagination_key, sort_order))
    return listed([number_out(row) for row in rows], key)


@router.patch("/update-phone-number/{phone_number}", summary="Update phone number (Retell)",
              description="Changes the fields sent (and new Twilio credentials replace the stored ones).",
              responses=error_responses(413))
async def update_phone_number(phone_number: str, body: UpdateNumberBody, request: Request, session: Session,
                              workspace_id: RetellWorkspace) -> dict[str, Any]:
    patch = _ours(body, {*SERVED, "twilio_account_sid", "twilio_auth_token"})
    checked = validated(PhoneNumberUpdate, {"workspaceId": workspace_id, **patch})
    row = await service.update_phone_number(
        session, workspace_id=workspace_id, phone_number=phone_number, settings=request.app.state.settings,
        patch=checked.model_dump(mode="json", exclude_unset=True, exclude={"workspace_id"}),
    )
    return number_out(row)


@router.delete("/delete-phone-number/{phone_number}", status_code=204, summary="Delete phone number (Retell)")
async def delete_phone_number(phone_number: str, session: Session, workspace_id: RetellWorkspace) -> Response:
    await service.delete_phone_number(session, workspace_id=workspace_id, phone_number=phone_number)
    return Response(status_code=204)


class SmsChatBody(RetellBody):
    from_number: E164
    to_number: E164
    override_agent_id: str | None = Field(default=None, min_length=1, max_length=64)
    override_agent_version: int | None = Field(default=None, ge=1, le=MAX_VERSION)
    metadata: StringMap = Field(default_factory=dict, description="String values only (chatplane's metadata).")
    retell_llm_dynamic_variables: Variables = Field(default_factory=dict)
    honor_internal_dnc: Any = Field(default=None, description="Accepted, not used (no do-not-call list here).")


@router.post("/create-sms-chat", status_code=201, summary="Create SMS chat (Retell)",
             description="As `POST /api/chats/sms`: the agent's begin message is texted to `to_number`. "
             "409 `sms_chat_ongoing` while a chat between the two numbers is ongoing.",
             responses=error_responses(409, 413))
async def create_sms_chat(body: SmsChatBody, session: Session, workspace_id: RetellWorkspace) -> dict[str, Any]:
    request = validated(CreateSmsChatRequest, {
        "workspaceId": workspace_id, **_ours(body, {"from_number", "to_number", "override_agent_id",
                                                    "override_agent_version", "metadata"}),
        "uponai_dynamic_variables": body.retell_llm_dynamic_variables,
    })
    chat, messages = await service.start_sms_chat(session, workspace_id=workspace_id, body=request)
    return shape_chat(chats.chat_out(chat, messages))
