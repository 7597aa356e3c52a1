"""Retell chats (``/create-chat``, ``/create-chat-completion`` ...): the same
chat loop in Retell's shape (``retell.shapes``)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Header, Request, Response
from fastapi.encoders import jsonable_encoder
from fastapi.responses import JSONResponse
from pydantic import Field

from chatplane.auth import CurrentPrincipal, Session
from chatplane.chats import actions, lifecycle, service
from chatplane.chats.list_v3 import list_chats
from chatplane.chats.list_v3_schemas import ListChatsV3Request, ListChatsV3Response
from chatplane.chats.schemas import StringMap
from chatplane.chats.turn.engine import Turns
from chatplane.errors import InvalidInput, error_responses
from chatplane.retell.common import (
    RESPONSES,
    TAG,
    WORKSPACE_HEADER,
    RetellBody,
    RetellWorkspace,
    retell_workspace,
)
from chatplane.retell.schemas import RetellChatList
from chatplane.retell.shapes import shape_chat, shape_messages
from chatplane.schemas import MAX_VERSION, Variables

router = APIRouter(tags=[TAG], responses=RESPONSES)


class CreateChatBody(RetellBody):
    agent_id: str = Field(min_length=1, max_length=64)
    agent_version: int | str | None = Field(default=None, description="A version number; the latest if unset.")
    metadata: StringMap = Field(default_factory=dict, description="String values only (chatplane's metadata).")
    retell_llm_dynamic_variables: Variables = Field(default_factory=dict)


def _version(value: int | str | None) -> int | None:
    if isinstance(value, str):
        if not (value.isascii() and value.isdigit()):  # "¹" is a digit to str.isdigit, not to int()
            raise InvalidInput("a version number", field="agent_version")
        value = int(value)
    if value is not None and not 1 <= value <= MAX_VERSION:
        raise InvalidInput(f"a version from 1 to {MAX_VERSION}", field="agent_version")
    return value


@router.post("/create-chat", status_code=201, summary="Create chat (Retell)",
             description="409 `llm_missing` if the agent's LLM was deleted.", responses=error_responses(409, 413))
async def create_chat(body: CreateChatBody, session: Session, workspace_id: RetellWorkspace) -> dict[str, Any]:
    chat, messages = await lifecycle.create_chat(
        session, workspace_id=workspace_id, agent_id=body.agent_id, agent_version=_version(body.agent_version),
        metadata=body.metadata, dynamic_variables=body.retell_llm_dynamic_variables,
    )
    return shape_chat(service.chat_out(chat, messages))


@router.get("/get-chat/{chat_id}", summary="Get chat (Retell)")
async def get_chat(chat_id: str, request: Request, workspace_id: RetellWorkspace) -> dict[str, Any]:
    return shape_chat(await actions.get(request.app.state.services, workspace_id, chat_id))


class UpdateChatBody(RetellBody):
    metadata: StringMap | None = Field(default=None, description="Replaces the chat's metadata (string values).")
    custom_attributes: StringMap | None = Field(default=None, description="String values only.")
    override_dynamic_variables: Variables | None = None
    data_storage_setting: str | None = Field(
        default=None, description="Only `everything` is served yet (retention and PII settings come later).",
    )


@router.patch("/update-chat/{chat_id}", summary="Update chat (Retell)",
              description="Waits for a turn in progress: the next turn sees the change.",
              responses=error_responses(413))
async def update_chat(chat_id: str, body: UpdateChatBody, request: Request,
                      workspace_id: RetellWorkspace) -> dict[str, Any]:
    if body.data_storage_setting not in (None, "everything"):
        raise InvalidInput("only 'everything' is served by this server yet", field="data_storage_setting")
    changes = body.model_dump(exclude_unset=True, exclude={"data_storage_setting"})
    return shape_chat(await actions.update(request.app.state.services, workspace_id, chat_id, changes))


@router.delete("/delete-chat/{chat_id}", status_code=204, summary="Delete chat (Retell)")
async def delete_chat(chat_id: str, request: Request, workspace_id: RetellWorkspace) -> Response:
    await actions.delete(request.app.state.services, workspace_id, chat_id)
    return Response(status_code=204)


class CompletionBody(RetellBody):
    chat_id: str = Field(min_length=1, max_length=64)
    content: str = Field(min_length=1, max_length=32_000, description="The user's message.")


@router.post("/create-chat-completion", status_code=201, summary="Create chat completion (Retell)",
             description="One turn, as `POST /api/chats/{chat_id}/completions` (one at a time per chat, stored "
             "whole or not at all); the answer is the agent's messages of this turn.",
             responses=error_responses(409, 413, 502, 504))
async def create_chat_completion(body: CompletionBody, request: Request,
                                 workspace_id: RetellWorkspace) -> dict[str, Any]:
    turns: Turns = request.app.state.turns
    answer = await turns.run(workspace_id=workspace_id, chat_id=body.chat_id, content=body.content)
    return {"messages": shape_messages(answer.body["messages"])}


@router.patch("/end-chat/{chat_id}", status_code=204, summary="End chat (Retell)",
              description="Waits for a turn in progress, then ends the chat. An ended chat answers 409.",
              responses=error_responses(409, 413))
async def end_chat(chat_id: str, request: Request, workspace_id: RetellWorkspace) -> Response:
    await actions.end(request.app.state.services, workspace_id, chat_id)
    return Response(status_code=204)


@router.put("/rerun-chat-analysis/{chat_id}", summary="Re-run post-chat analysis (Retell)",
            description="Runs the analysis now and answers the chat; an ongoing chat answers 409.",
            responses=error_responses(409, 413))
async def rerun_chat_analysis(chat_id: str, request: Request, workspace_id: RetellWorkspace) -> dict[str, Any]:
    return shape_chat(await actions.rerun_analysis(request.app.state.services, workspace_id, chat_id))


@router.post(
    "/v3/list-chats",
    response_model=ListChatsV3Response | RetellChatList,
    response_model_exclude_unset=True,
    tags=["Chats"],
    summary="List chats (v3)",
    description=(
        "Retell's v3 chat list, one route for both shapes: with `workspaceId` the items are chatplane's "
        "chats (the schema below); without it (Retell's SDK) the workspace comes from the key and the "
        "items are Retell's `ChatResponse` (`chat_id`, `chat_status`, ms timestamps ...). "
        "Chats of the workspace matching every filter of `filter_criteria`, "
        "by start time (`sort_order`, newest first by default), `limit` per page, after `skip`; pass "
        "`pagination_key` back for the next page. Items leave out messages and transcript. "
        "`total` is there only with `include_total: true`.\n\n"
        "Each filter is `{op, type, value}` as in the Retell SDK; `type` may be left out when `op` "
        "implies it. String ops `eq ne sw ew co` (case-sensitive), number ops `eq ne gt ge lt le`, "
        "range `bt` (`[lower, upper]`, inclusive), enum `in`, presence `pr np` (no `value`), boolean "
        "`eq`. `ne` also matches chats without a value. Timestamps are Unix milliseconds. Unknown "
        "fields and filters are refused (422), never ignored."
    ),
    responses=error_responses(400, 413),
)
async def list_chats_v3(
    body: ListChatsV3Request, session: Session, principal: CurrentPrincipal,
    chosen: Annotated[int | None, Header(alias=WORKSPACE_HEADER)] = None,
) -> Any:
    retell = body.workspace_id is None
    workspace_id = await retell_workspace(principal, chosen) if retell else principal.require(body.workspace_id)
    page = await list_chats(session, workspace_id=workspace_id, request=body)
    items = [service.chat_out(chat, None) for chat in page.chats]
    out: dict[str, Any] = {
        "items": [shape_chat(item) for item in items] if retell else items,
        "has_more": page.pagination_key is not None,
        "pagination_key": page.pagination_key,
    }
    if body.include_total:
        out["total"] = page.total
    # Retell's items are not chatplane's schema: answered as they are.
    return JSONResponse(jsonable_encoder(out)) if retell else out
