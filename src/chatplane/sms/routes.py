"""/api/phone-numbers, POST /api/chats/sms, and Twilio's POST /webhooks/twilio/sms."""

from __future__ import annotations

from urllib.parse import parse_qsl

from fastapi import APIRouter, Request, Response

from chatplane.auth import CurrentPrincipal, QueryWorkspace, Session
from chatplane.chats import service as chats
from chatplane.chats.schemas import Chat
from chatplane.errors import ErrorResponse, error_responses
from chatplane.models import PhoneNumber
from chatplane.pagination import Page, PageQuery
from chatplane.sms import inbound, service
from chatplane.sms.schemas import CreateSmsChatRequest, PhoneNumberCreate, PhoneNumberOut, PhoneNumberUpdate
from chatplane.sms.twilio import SIGNATURE_HEADER

router = APIRouter(prefix="/api/phone-numbers", tags=["Phone Numbers"], responses=error_responses(401, 404, 422))
chats_router = APIRouter(prefix="/api/chats", tags=["Chats"], responses=error_responses(401, 404, 422))
webhook_router = APIRouter(tags=["SMS"])

# Twilio takes an empty TwiML answer as "nothing to send now": replies go by the REST API.
EMPTY_TWIML = '<?xml version="1.0" encoding="UTF-8"?><Response></Response>'


def number_out(row: PhoneNumber) -> dict:
    """The API shape of a number; its Twilio account SID and auth token stay out."""
    return {
        **row.config,
        "phone_number": row.phone_number,
        "created_at": row.created_at,
        "updated_at": row.updated_at,
        "last_modification_timestamp": int(row.updated_at.timestamp() * 1000),
    }


@router.post("", status_code=201, response_model=PhoneNumberOut, summary="Add a phone number",
             description="A Twilio number of yours, with the account SID and auth token it belongs to "
             "(stored encrypted, never returned). Point the number's \"A message comes in\" webhook at "
             "`POST /webhooks/twilio/sms` on this server. A number can be configured in one workspace only "
             "(409 `phone_number_taken`).",
             responses=error_responses(409, 413))
async def create_phone_number(body: PhoneNumberCreate, request: Request, session: Session,
                              principal: CurrentPrincipal) -> dict:
    workspace_id = principal.require(body.workspace_id)
    row = await service.create_phone_number(
        session, workspace_id=workspace_id, body=body, settings=request.app.state.settings
    )
    return number_out(row)


@router.get("", response_model=Page[PhoneNumberOut], summary="List phone numbers",
            description="Ordered by number (`sortOrder` ascending or descending).")
async def list_phone_numbers(session: Session, workspace_id: QueryWorkspace, page: PageQuery) -> dict:
    rows, key = await service.list_phone_numbers(session, workspace_id=workspace_id, page=page)
    return {"data": [number_out(r) for r in rows], "pagination_key": key}


@router.get("/{phone_number}", response_model=PhoneNumberOut, summary="Get phone number",
            description="The number in E.164, e.g. `/api/phone-numbers/%2B14155550100`.")
async def get_phone_number(phone_number: str, session: Session, workspace_id: QueryWorkspace) -> dict:
    return number_out(
        await service.get_phone_number(session, workspace_id=workspace_id, phone_number=phone_number)
    )


@router.patch("/{phone_number}", response_model=PhoneNumberOut, summary="Update phone number",
              description="Changes the fields sent. New `twilio_account_sid` / `twilio_auth_token` replace the stored ones.",
              responses=error_responses(413))
async def update_phone_number(phone_number: str, body: PhoneNumberUpdate, request: Request, session: Session,
                              principal: CurrentPrincipal) -> dict:
    workspace_id = principal.require(body.workspace_id)
    row = await service.update_phone_number(
        session, workspace_id=workspace_id, phone_number=phone_number,
        patch=body.model_dump(mode="json", exclude_unset=True, exclude={"workspace_id"}),
        settings=request.app.state.settings,
    )
    return number_out(row)


@router.delete("/{phone_number}", status_code=204, summary="Delete phone number",
               description="Its chats stay; texts still queued for it are not sent, and texts to it answer 403.")
async def delete_phone_number(phone_number: str, session: Session, workspace_id: QueryWorkspace) -> Response:
    await service.delete_phone_number(session, workspace_id=workspace_id, phone_number=phone_number)
    return Response(status_code=204)


@chats_router.post("/sms", status_code=201, response_model=Chat, summary="Create SMS chat",
                   description="Start a chat by text from one of your numbers: the agent's begin message is "
                   "texted to `to_number` (so the agent needs one), and the user's replies continue this chat. "
                   "The agent is `override_agent_id`, else one of the number's `outbound_sms_agents` by weight. "
                   "409 `sms_chat_ongoing` while a chat between the two numbers is ongoing.",
                   responses=error_responses(409, 413))
async def create_sms_chat(body: CreateSmsChatRequest, session: Session, principal: CurrentPrincipal) -> dict:
    workspace_id = principal.require(body.workspace_id)
    chat, messages = await service.start_sms_chat(session, workspace_id=workspace_id, body=body)
    return chats.chat_out(chat, messages)


def signed_url(request: Request) -> str:
    """The URL Twilio signed: the configured public URL and this request's path."""
    public = request.app.state.settings.public_url
    if not public:
        return str(request.url)
    query = f"?{request.url.query}" if request.url.query else ""
    return public.rstrip("/") + request.url.path + query


@webhook_router.post(
    "/webhooks/twilio/sms",
    summary="Twilio's incoming-message webhook",
    description="Set as the number's \"A message comes in\" webhook (HTTP POST) in the Twilio console. "
    "The `X-Twilio-Signature` must verify against the number's auth token and the server's `public_url`, "
    "else 403 and nothing is kept. The text is recorded and answered by a job, by Twilio's REST API; this "
    "answers an empty TwiML `<Response/>` at once. A repeated `MessageSid` is recognised and ignored.",
    response_class=Response,
    responses={
        200: {"content": {"text/xml": {}}},
        403: {"model": ErrorResponse, "description": "The signature does not verify."},
    },
)
async def twilio_sms(request: Request, session: Session) -> Response:
    body = await request.body()
    params = dict(parse_qsl(body.decode("utf-8", "replace"), keep_blank_values=True))
    await inbound.receive_text(
        session, settings=request.app.state.settings, url=signed_url(request), params=params,
        signature=request.headers.get(SIGNATURE_HEADER),
    )
    return Response(EMPTY_TWIML, media_type="text/xml")
