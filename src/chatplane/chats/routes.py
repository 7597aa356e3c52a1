"""/api/chats: the seeds' chat loop."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from typing import Annotated, Any

import mimeparse
from fastapi import APIRouter, Header, Query, Request, Response
from fastapi.responses import JSONResponse, StreamingResponse

from chatplane.auth import CurrentPrincipal, Principal, QueryWorkspace, Session
from chatplane.chats import actions, lifecycle, service
from chatplane.chats.filters import id_bound
from chatplane.chats.schemas import (
    Chat,
    ChatCompletionRequest,
    ChatCompletionResponse,
    ChatList,
    ChatStatus,
    ChatType,
    CreateChatRequest,
    UpdateChatRequest,
)
from chatplane.chats.turn.engine import Turns
from chatplane.errors import AppError, error_responses
from chatplane.pagination import PageQuery
from chatplane.schemas import WorkspaceBody

log = logging.getLogger(__name__)
ANSWER_TYPES = ["application/json", "text/event-stream"]  # a tie goes to the last: streaming
router = APIRouter(prefix="/api/chats", tags=["Chats"], responses=error_responses(401, 404, 422))

def wants_event_stream(accept: str) -> bool:
    """Whether an ``Accept`` header asks for the streamed answer.

    Only when it names ``text/event-stream`` with a quality above zero and
    not below ``application/json``'s (``*/*`` and ``text/*`` alone get JSON,
    the default answer). Ranges that do not parse are ignored.
    """
    if "event-stream" not in accept:
        return False
    ranges = []
    for part in accept.split(","):
        try:
            mimeparse.parse_media_range(part)
        except (mimeparse.MimeTypeParseException, ValueError):
            continue
        ranges.append(part)
    return mimeparse.best_match(ANSWER_TYPES, ",".join(ranges)) == "text/event-stream"


IDEMPOTENCY_KEY_MAX = 255
IdempotencyKeyHeader = Annotated[
    str | None,
    Header(
        alias="Idempotency-Key",
        max_length=IDEMPOTENCY_KEY_MAX,
        description="Send the same key when retrying: the first answer is returned, no second turn runs.",
    ),
]


@router.post("", status_code=201, response_model=Chat, summary="Create chat",
             description="Start a new live chat session backed by a chat agent. "
             "409 `llm_missing` if the agent's LLM was deleted.",
             responses=error_responses(409, 413))
async def create_chat(body: CreateChatRequest, session: Session, principal: CurrentPrincipal) -> dict:
    workspace_id = principal.require(body.workspace_id)
    chat, messages = await lifecycle.create_chat(
        session,
        workspace_id=workspace_id,
        agent_id=body.agent_id,
        agent_version=body.agent_version,
        metadata=body.metadata,
        dynamic_variables=body.uponai_dynamic_variables,
    )
    return service.chat_out(chat, messages)


@router.get("", response_model=ChatList, summary="List chats",
            description="Newest first unless `sortOrder=ascending`. Items leave out messages and transcript.")
async def list_chats(
    session: Session,
    workspace_id: QueryWorkspace,
    page: PageQuery,
    agent_id: Annotated[str | None, Query(alias="agentId")] = None,
    status: ChatStatus | None = None,
    chat_type: Annotated[ChatType | None, Query(alias="type")] = None,
    started_after: Annotated[
        str | None, Query(alias="startedAfter", description="ISO 8601; chats started at or after it.")
    ] = None,
    started_before: Annotated[
        str | None, Query(alias="startedBefore", description="ISO 8601; chats started before it.")
    ] = None,
) -> dict:
    rows, key = await service.list_chats(
        session,
        workspace_id=workspace_id,
        page=page,
        agent_id=agent_id,
        status=status,
        chat_type=chat_type,
        id_after=id_bound(started_after, field="startedAfter"),
        id_before=id_bound(started_before, field="startedBefore"),
    )
    return {"data": [service.chat_out(c, None) for c in rows], "pagination_key": key}


@router.get("/{chat_id}", response_model=Chat, summary="Get chat",
            description="Retrieve details for a specific chat session.")
async def get_chat(chat_id: str, session: Session, workspace_id: QueryWorkspace) -> Response:
    chat = await service.get_chat(session, workspace_id=workspace_id, chat_id=chat_id)
    messages = await service.get_messages(session, chat_id=chat.id, manifests=True)
    return Response(service.chat_json(chat, messages), media_type="application/json")


@router.patch("/{chat_id}", response_model=Chat, summary="Update chat",
              description="Replace metadata, custom attributes or override dynamic variables. Waits for a "
              "turn in progress: the next turn sees the change.",
              responses=error_responses(413))
async def update_chat(chat_id: str, body: UpdateChatRequest, request: Request, principal: CurrentPrincipal) -> dict:
    workspace_id = principal.require(body.workspace_id)
    changes = body.model_dump(exclude_unset=True, exclude={"workspace_id"})
    return await actions.update(request.app.state.services, workspace_id, chat_id, changes)


@router.post("/{chat_id}/end", status_code=204, summary="End chat",
             description="Waits for a turn in progress, then ends the chat. An ended chat answers 409.",
             responses=error_responses(409, 413))
async def end_chat(chat_id: str, body: WorkspaceBody, request: Request, principal: CurrentPrincipal) -> Response:
    await actions.end(request.app.state.services, principal.require(body.workspace_id), chat_id)
    return Response(status_code=204)


@router.post("/{chat_id}/analysis", response_model=Chat, summary="Re-run post-chat analysis",
             description="Runs the analysis now (it also runs by itself when a chat ends) and answers the chat. "
             "An ongoing chat answers 409: analysis is of finished chats.",
             responses=error_responses(409, 413))
async def rerun_analysis(chat_id: str, body: WorkspaceBody, request: Request, principal: CurrentPrincipal) -> dict:
    return await actions.rerun_analysis(request.app.state.services, principal.require(body.workspace_id), chat_id)


@router.delete("/{chat_id}", status_code=204, summary="Delete chat (and its messages)")
async def delete_chat(chat_id: str, request: Request, workspace_id: QueryWorkspace) -> Response:
    await actions.delete(request.app.state.services, workspace_id, chat_id)
    return Response(status_code=204)


@router.post(
    "/{chat_id}/completions",
    status_code=201,
    response_model=ChatCompletionResponse,
    summary="Create chat completion",
    description=(
        "Send a user message into an existing chat and receive the assistant response messages.\n\n"
        "Completions on one chat run one at a time in arrival order. A turn is stored whole "
        "(user message and reply together) or not at all: a provider failure (502/504) leaves "
        "the chat unchanged. With `Accept: text/event-stream` (named, quality above 0 and not below "
        "`application/json`'s; `*/*` alone answers JSON) the answer streams as server-sent "
        "events: `delta` events `{\"content\"}` as text is generated, then one `done` event holding "
        "exactly the JSON answer (or one `error` event). A client that disconnects mid-stream "
        "does not stop the turn: it completes and is stored."
    ),
    # The stream answers 201 like the JSON answer does.
    responses={201: {"content": {"text/event-stream": {}}}, **error_responses(409, 413, 502, 504)},
)
async def create_completion(
    chat_id: str,
    body: ChatCompletionRequest,
    request: Request,
    principal: CurrentPrincipal,
    idempotency_key: IdempotencyKeyHeader = None,
) -> Response:
    turns: Turns = request.app.state.turns
    if wants_event_stream(request.headers.get("accept", "")):
        workspace_id = principal.require(body.workspace_id)
        return await _stream(request, turns, workspace_id, chat_id, body.content, idempotency_key)
    return await complete(turns, principal, chat_id, body, idempotency_key)


async def complete(
    turns: Turns, principal: Principal, chat_id: str, body: ChatCompletionRequest, idempotency_key: str | None
) -> JSONResponse:
    """The JSON answer of a completion, for the route and its fast path
    (``chats.fast``) alike: what a completion does is said once, here."""
    workspace_id = principal.require(body.workspace_id)
    answer = await turns.run(
        workspace_id=workspace_id, chat_id=chat_id, content=body.content, idempotency_key=idempotency_key
    )
    headers = {"Idempotent-Replayed": "true"} if answer.replayed else None
    return JSONResponse(answer.body, status_code=201, headers=headers)


def _sse(event: str, data: dict[str, Any]) -> bytes:
    return f"event: {event}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n".encode()


async def _stream(
    request: Request, turns: Turns, workspace_id: int, chat_id: str, content: str, idempotency_key: str | None
) -> Response:
    # Refuse what can be refused with a real status before the stream starts.
    async with request.app.state.sessions() as session:
        chat = await service.get_chat(session, workspace_id=workspace_id, chat_id=chat_id)
        if chat.status != "ongoing" and not idempotency_key:
            raise service.chat_ended(chat)

    queue: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()

    async def on_delta(text: str) -> None:
        queue.put_nowait(("delta", {"content": text}))

    async def work() -> None:
        try:
            answer = await turns.run(
                workspace_id=workspace_id, chat_id=chat_id, content=content,
                idempotency_key=idempotency_key, on_delta=on_delta,
            )
            queue.put_nowait(("done", answer.body))
        except AppError as exc:
            queue.put_nowait(("error", {**exc.body(), "status": exc.status}))
        except Exception:
            log.exception("turn failed on chat %s", chat_id)
            queue.put_nowait(("error", {"error": {"code": "internal_error", "message": "internal server error"},
                                        "status": 500}))

    # The turn runs as its own task: a client that goes away cancels the
    # stream below, not the turn, which completes and is stored.
    task = asyncio.create_task(work())
    request.app.state.background.add(task)
    task.add_done_callback(request.app.state.background.discard)

    async def events() -> AsyncIterator[bytes]:
        while True:
            kind, payload = await queue.get()
            yield _sse(kind, payload)
            if kind != "delta":
                return

    return StreamingResponse(
        events(), status_code=201, media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )
