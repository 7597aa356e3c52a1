"""Retell chat agents (``/create-chat-agent`` ...): chatplane's chat agents in Retell's shape.

The response engine ``retell-llm`` is chatplane's ``uponai-llm``. Retell's
fields for hosted features (guardrails, handbook, contact memory, signed URLs,
pre- and post-session tools, PII scrubbing until it is served) are accepted
and not kept (``IGNORED``); analysis items of type ``system-presets`` are
dropped (the summary, sentiment and success are always analysed).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, Union

from fastapi import APIRouter, Query, Request, Response
from pydantic import BaseModel, Field
from sqlalchemy import func, or_, select

from chatplane import configs
from chatplane.agents import service
from chatplane.agents.schemas import ChatAgentConfig
from chatplane.auth import Session
from chatplane.errors import Conflict, InvalidInput, error_responses
from chatplane.models import Chat, ChatAgent
from chatplane.pagination import SortOrder
from chatplane.pagination import page_of as page_cut
from chatplane.retell.common import (
    RESPONSES,
    TAG,
    RetellBody,
    RetellPage,
    RetellWorkspace,
    latest,
    listed,
    page_of,
    sent,
    served_model,
    validated,
)
from chatplane.retell.shapes import ms
from chatplane.schemas import MAX_VERSION

router = APIRouter(tags=[TAG], responses=RESPONSES)

# A Retell chat agent may have no name; chatplane's have one.
DEFAULT_NAME = "Chat agent"
SERVED = ("agent_name", "auto_close_message", "data_storage_retention_days", "data_storage_setting",
          "end_chat_after_silence_ms", "language", "post_chat_analysis_data", "post_chat_analysis_model",
          "timezone", "webhook_events", "webhook_timeout_ms", "webhook_url")
IGNORED = ("contact_memory_config", "guardrail_config", "handbook_config", "opt_in_signed_url", "pii_config",
           "post_session_tools", "pre_session_tools", "signed_url_expiration_ms", "version_title")
ENGINES = {"retell-llm": "uponai-llm", "conversation-flow": "conversation-flow"}
VersionParam = Annotated[int | None, Query(ge=1, le=MAX_VERSION, description="A version; the latest if unset.")]


class RetellLlmEngine(RetellBody):
    type: Literal["retell-llm"]
    llm_id: str = Field(min_length=1, max_length=64)
    version: int | None = Field(default=None, ge=1, le=MAX_VERSION)


class FlowEngine(RetellBody):
    type: Literal["conversation-flow"]
    conversation_flow_id: str = Field(min_length=1, max_length=64)
    version: int | None = Field(default=None, ge=1, le=MAX_VERSION)


class CustomLlmEngine(RetellBody):
    """Not served (a websocket LLM of your own): refused with a 422 that says so."""

    type: Literal["custom-llm"]
    llm_websocket_url: str = Field(max_length=2000)


ResponseEngine = Annotated[Union[RetellLlmEngine, FlowEngine, CustomLlmEngine], Field(discriminator="type")]


class RetellAgentBody(RetellBody):
    """Retell's chat agent fields (``retell-sdk`` ``ChatAgentCreateParams``)."""

    response_engine: ResponseEngine | None = None
    agent_name: str | None = None
    auto_close_message: str | None = None
    data_storage_retention_days: int | None = None
    data_storage_setting: str | None = None
    end_chat_after_silence_ms: int | None = None
    language: str | list[str] | None = None
    post_chat_analysis_data: list[dict[str, Any]] | None = None
    post_chat_analysis_model: str | None = None
    timezone: str | None = None
    webhook_events: list[str] | None = None
    webhook_timeout_ms: int | None = None
    webhook_url: str | None = None
    # Accepted, not kept (see IGNORED).
    contact_memory_config: Any = None
    guardrail_config: Any = None
    handbook_config: Any = None
    opt_in_signed_url: Any = None
    pii_config: Any = None
    post_session_tools: Any = None
    pre_session_tools: Any = None
    signed_url_expiration_ms: Any = None
    version_title: Any = None


class RetellAgentCreate(RetellAgentBody):
    response_engine: ResponseEngine


def _engine(engine: dict[str, Any], renames: dict[str, str], field: str) -> dict[str, Any]:
    kind = engine.get("type")
    if kind not in renames:
        served = ", ".join(sorted(renames))
        raise InvalidInput(f"response engine {kind!r} is not served; use one of: {served}", field=f"{field}.type")
    return {**engine, "type": renames[kind]}


def to_ours(body: RetellAgentBody, settings: Any, *, clear_nulls: bool) -> dict[str, Any]:
    """The chatplane configuration fields a Retell body sets (a null on an
    update sets the field's default)."""
    ours = sent(body, {*SERVED, "response_engine"} if body.response_engine else set(SERVED), ChatAgentConfig,
                clear_nulls=clear_nulls, defaults={"agent_name": DEFAULT_NAME})
    if "response_engine" in ours:
        engine = {k: v for k, v in ours["response_engine"].items() if k != "llm_websocket_url"}
        ours["response_engine"] = _engine(engine, ENGINES, "response_engine")
    if "post_chat_analysis_data" in ours:
        ours["post_chat_analysis_data"] = [
            item for item in ours["post_chat_analysis_data"]
            if not (isinstance(item, dict) and item.get("type") == "system-presets")
        ]
    if "post_chat_analysis_model" in ours:
        ours["post_chat_analysis_model"] = served_model(ours["post_chat_analysis_model"], settings)
    return ours


def agent_out(row: ChatAgent) -> dict[str, Any]:
    """One stored version in Retell's shape (``retell-sdk`` ``ChatAgentResponse``)."""
    config = row.config
    engine = {k: v for k, v in config["response_engine"].items() if v is not None}
    return {
        **{name: config.get(name) for name in SERVED},
        "response_engine": _engine(engine, {ours: retell for retell, ours in ENGINES.items()}, "response_engine"),
        "agent_id": row.id,
        "version": row.version,
        "is_published": row.is_published,
        "last_modification_timestamp": ms(row.updated_at),
    }


@router.post("/create-chat-agent", status_code=201, summary="Create chat agent (Retell)",
             responses=error_responses(413))
async def create_chat_agent(body: RetellAgentCreate, request: Request, session: Session,
                            workspace_id: RetellWorkspace) -> dict[str, Any]:
    settings = request.app.state.settings
    # Its webhooks carry Retell's ChatResponse: what the handlers of a Retell user parse.
    ours = {"agent_name": DEFAULT_NAME, "webhook_format": "retell", **to_ours(body, settings, clear_nulls=False)}
    config = validated(ChatAgentConfig, ours)
    return agent_out(await service.create_agent(session, workspace_id=workspace_id, config=config, settings=settings))


@router.get("/get-chat-agent/{agent_id}", summary="Get chat agent (Retell)")
async def get_chat_agent(agent_id: str, session: Session, workspace_id: RetellWorkspace,
                         version: VersionParam = None) -> dict[str, Any]:
    return agent_out(await configs.get(session, ChatAgent, workspace_id=workspace_id, id=agent_id, version=version))


@router.patch("/update-chat-agent/{agent_id}", summary="Update chat agent (Retell)",
              description="Changes the latest version (a published one: a new draft version). "
              "`version`, if given, must be the latest: 409 `version_not_latest` otherwise.",
              responses=error_responses(409, 413))
async def update_chat_agent(agent_id: str, body: RetellAgentBody, request: Request, session: Session,
                            workspace_id: RetellWorkspace, version: VersionParam = None) -> dict[str, Any]:
    settings = request.app.state.settings
    await latest(session, ChatAgent, workspace_id=workspace_id, id=agent_id, version=version)
    row = await service.update_agent(
        session, workspace_id=workspace_id, agent_id=agent_id,
        patch=to_ours(body, settings, clear_nulls=True), settings=settings,
    )
    return agent_out(row)


class PublishBody(RetellBody):
    version: int = Field(ge=1, le=MAX_VERSION)
    version_description: str | None = Field(default=None, max_length=2000)
    version_title: str | None = Field(default=None, max_length=200)


@router.post("/publish-agent-version/{agent_id}", status_code=204, summary="Publish chat agent version (Retell)",
             description="Publishes the latest version, with the LLM version it uses; a version that is "
             "published already stays so. 409 `version_not_latest` for an older draft, `llm_missing` if "
             "its LLM was deleted.", responses=error_responses(409, 413))
async def publish_agent_version(agent_id: str, body: PublishBody, session: Session,
                                workspace_id: RetellWorkspace) -> Response:
    row = await configs.get(session, ChatAgent, workspace_id=workspace_id, id=agent_id, version=body.version)
    if not row.is_published:
        await latest(session, ChatAgent, workspace_id=workspace_id, id=agent_id, version=body.version)
        await service.publish_agent(session, workspace_id=workspace_id, agent_id=agent_id)
    return Response(status_code=204)


class CreateVersionBody(RetellBody):
    base_version: int = Field(ge=1, le=MAX_VERSION, description="The version the new draft starts from.")


@router.post("/create-agent-version/{agent_id}", status_code=201, summary="Create chat agent version (Retell)",
             description="The next version, a draft with `base_version`'s configuration. One draft at a time: "
             "409 `draft_exists` while the latest version is not published.", responses=error_responses(409, 413))
async def create_agent_version(agent_id: str, body: CreateVersionBody, session: Session,
                               workspace_id: RetellWorkspace) -> dict[str, Any]:
    current = await configs.get(session, ChatAgent, workspace_id=workspace_id, id=agent_id, for_update=True)
    base = await configs.get(session, ChatAgent, workspace_id=workspace_id, id=agent_id, version=body.base_version)
    return agent_out(await configs.branch(session, current, base, llm_id=base.llm_id))


@router.delete("/delete-agent-version/{agent_id}", status_code=204, summary="Delete chat agent version (Retell)",
               description="Deletes the draft (the latest version, not published); the version before it is the "
               "latest again. 409: `version_published` (published versions stay: chats may run on them), "
               "`only_version` (delete the agent), `version_in_use` (a chat ran on the draft).",
               responses=error_responses(409))
async def delete_agent_version(
    agent_id: str, session: Session, workspace_id: RetellWorkspace,
    version: Annotated[int, Query(ge=1, le=MAX_VERSION, description="The version to delete.")],
) -> Response:
    row = await configs.get(session, ChatAgent, workspace_id=workspace_id, id=agent_id, version=version,
                            for_update=True)
    if not row.is_published:
        await latest(session, ChatAgent, workspace_id=workspace_id, id=agent_id, version=version)
        used = await session.scalar(
            select(Chat.id).where(Chat.agent_id == agent_id, Chat.agent_version == version).limit(1)
        )
        if used is not None:
            raise Conflict(f"chat {used} ran on version {version} of chat agent {agent_id}; it stays",
                           code="version_in_use")
    await configs.drop_draft(session, row)
    return Response(status_code=204)


@router.get("/list-agent-versions/{agent_id}", summary="List chat agent versions (Retell)",
            description="Oldest first unless `sort_order=descending`.")
async def list_agent_versions(
    agent_id: str, session: Session, workspace_id: RetellWorkspace,
    limit: Annotated[int, Query(ge=1, le=1000)] = 50, pagination_key: str | None = None,
    sort_order: SortOrder = "ascending",
) -> dict[str, Any]:
    rows = await configs.list_versions(session, ChatAgent, workspace_id=workspace_id, id=agent_id)
    page = page_of(limit, pagination_key, sort_order)
    keyed = [(f"{row.version:010d}", row) for row in (rows if sort_order == "ascending" else rows[::-1])]
    if page.after is not None:
        keyed = [(key, row) for key, row in keyed
                 if (key > page.after if sort_order == "ascending" else key < page.after)]
    taken, next_key = page_cut([row for _, row in keyed], [key for key, _ in keyed], page)
    items = [{"version": row.version, "is_published": row.is_published,
              "last_modification_timestamp": ms(row.updated_at)} for row in taken]
    return listed(items, next_key)


class ListFilter(BaseModel):
    op: str
    type: str
    value: Any


class AgentFilters(RetellBody):
    channel: ListFilter | None = None
    is_transfer_agent: ListFilter | None = None
    query: str | None = Field(default=None, max_length=200)


class ListAgentsBody(RetellBody):
    filter_criteria: AgentFilters | None = None


_STRING_OPS = {"eq": str.__eq__, "ne": str.__ne__, "sw": str.startswith, "ew": str.endswith, "co": str.__contains__}


def _chat_channel_matches(criterion: ListFilter) -> bool:
    """Whether the channel ``chat`` (every agent here) passes ``criterion``."""
    if criterion.type != "string" or criterion.op not in _STRING_OPS or not isinstance(criterion.value, str):
        raise InvalidInput("a string filter: op one of eq, ne, sw, ew, co", field="filter_criteria.channel")
    return _STRING_OPS[criterion.op]("chat", criterion.value)


@router.post("/v2/list-agents", summary="List chat agents (Retell)",
             description="Every agent here is a chat agent (`channel` `chat`), none a transfer agent; "
             "`query` matches the name (case-insensitive) or the id.", responses=error_responses(413))
async def list_agents(
    session: Session, workspace_id: RetellWorkspace, page: RetellPage, body: ListAgentsBody | None = None,
) -> dict[str, Any]:
    filters = body.filter_criteria if body else None
    where = []
    if filters is not None:
        none = (filters.channel is not None and not _chat_channel_matches(filters.channel)) or (
            filters.is_transfer_agent is not None and filters.is_transfer_agent.value is True
        )
        if none:
            return listed([], None)
        if filters.query:
            pattern = "%" + filters.query.lower().replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
            name = func.lower(ChatAgent.config["agent_name"].as_string())
            where.append(or_(name.like(pattern, escape="\\"), ChatAgent.id.like(pattern, escape="\\")))
    rows, key = await configs.list_latest(session, ChatAgent, workspace_id=workspace_id, page=page, where=where)
    items = [
        {"agent_id": row.id, "agent_name": row.config["agent_name"], "channel": "chat", "is_suspended": False,
         "is_transfer_agent": False, "tags": {}, "user_modified_timestamp": ms(row.updated_at)}
        for row in rows
    ]
    return listed(items, key)


@router.delete("/delete-chat-agent/{agent_id}", status_code=204, summary="Delete chat agent (Retell, all versions)")
async def delete_chat_agent(agent_id: str, session: Session, workspace_id: RetellWorkspace) -> Response:
    await configs.soft_delete(session, ChatAgent, workspace_id=workspace_id, id=agent_id)
    return Response(status_code=204)
