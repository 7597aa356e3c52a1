"""Retell LLMs (``/create-retell-llm`` ...): chatplane's LLM configurations in Retell's shape.

Retell's fields that have no meaning in a chat, or name a hosted feature
(voice timing, backup and speech-to-speech models, MCP servers), are accepted
and not kept: ``IGNORED``. Tools: Retell's ``end_call`` is chatplane's
``end_chat``; ``custom`` and ``extract_dynamic_variable`` are the same, less
their voice-only keys (``TOOL_IGNORED``). Every other Retell tool type is a 422.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query, Request, Response
from pydantic import Field

from chatplane import configs
from chatplane.auth import Session
from chatplane.errors import InvalidInput, error_responses
from chatplane.llms import service
from chatplane.llms.schemas import LlmConfig
from chatplane.models import Llm
from chatplane.retell.common import (
    RESPONSES,
    TAG,
    RetellBody,
    RetellPage,
    RetellWorkspace,
    latest,
    listed,
    renamed_tools,
    sent,
    served_model,
    validated,
)
from chatplane.retell.shapes import ms
from chatplane.schemas import MAX_VERSION, VersionQuery
from chatplane.settings import Settings

router = APIRouter(tags=[TAG], responses=RESPONSES)

# A Retell LLM has no name; chatplane's LLM configurations have one.
DISPLAY_NAME = "Retell LLM"
SERVED = ("general_prompt", "begin_message", "general_tools", "states", "starting_state", "model",
          "model_temperature", "knowledge_base_ids", "kb_config", "default_dynamic_variables")
IGNORED = ("backup_model", "begin_after_user_silence_ms", "is_transfer_llm", "mcps", "model_config",
           "model_high_priority", "model_ultrafast", "s2s_model", "start_speaker", "tool_call_strict_mode")
TO_OURS = {"end_call": "end_chat"}
TO_RETELL = {ours: retell for retell, ours in TO_OURS.items()}
TOOL_IGNORED = ("custom_sip_headers", "enable_typing_sound", "execution_message_description",
                "execution_message_type", "speak_during_execution", "speak_after_execution")


class RetellLlmBody(RetellBody):
    """Retell's LLM fields (``retell-sdk`` ``LlmCreateParams``)."""

    general_prompt: str | None = None
    begin_message: str | None = None
    general_tools: list[dict[str, Any]] | None = None
    states: list[dict[str, Any]] | None = None
    starting_state: str | None = None
    model: str | None = Field(
        default=None, description="A model the server offers; any other name (a hosted one) runs on the default.",
    )
    model_temperature: float | None = None
    knowledge_base_ids: list[str] | None = None
    kb_config: dict[str, Any] | None = None
    default_dynamic_variables: dict[str, str] | None = None
    # Accepted, not kept (see IGNORED).
    backup_model: Any = None
    begin_after_user_silence_ms: Any = None
    is_transfer_llm: Any = None
    mcps: Any = None
    model_config_: Any = Field(default=None, alias="model_config")
    model_high_priority: Any = None
    model_ultrafast: Any = None
    s2s_model: Any = None
    start_speaker: Any = None
    tool_call_strict_mode: Any = None


def _tools(tools: list[dict[str, Any]] | None, field: str) -> list[dict[str, Any]] | None:
    renamed = renamed_tools(tools, TO_OURS)
    if renamed is None:
        return None
    out = []
    for i, tool in enumerate(renamed):
        if tool.get("type") == "custom" and tool.get("parameter_type", "json") != "json":
            raise InvalidInput("only JSON bodies are sent to custom tools", field=f"{field}[{i}].parameter_type")
        out.append({k: v for k, v in tool.items() if k not in TOOL_IGNORED and k != "parameter_type"})
    return out


def to_ours(body: RetellLlmBody, settings: Settings, *, clear_nulls: bool) -> dict[str, Any]:
    """The chatplane configuration fields a Retell body sets. A null sets the
    field's default when ``clear_nulls`` (an update), else it is left out."""
    ours = sent(body, set(SERVED), LlmConfig, clear_nulls=clear_nulls)
    if "general_tools" in ours:
        ours["general_tools"] = _tools(ours["general_tools"], "general_tools")
    if ours.get("states"):
        ours["states"] = [
            {**state, "tools": _tools(state.get("tools"), f"states[{i}].tools") or []}
            if isinstance(state, dict) else state
            for i, state in enumerate(ours["states"])
        ]
    if "model" in ours:
        ours["model"] = served_model(ours["model"], settings)
    return ours


def llm_out(row: Llm) -> dict[str, Any]:
    """One stored version in Retell's shape (``retell-sdk`` ``LlmResponse``)."""
    config = row.config
    out = {name: config.get(name) for name in SERVED}
    out["general_tools"] = renamed_tools(config.get("general_tools"), TO_RETELL)
    out["states"] = [{**state, "tools": renamed_tools(state.get("tools"), TO_RETELL)}
                     for state in config.get("states") or []]
    return {**out, "llm_id": row.id, "version": row.version, "is_published": row.is_published,
            "last_modification_timestamp": ms(row.updated_at)}


@router.post("/create-retell-llm", status_code=201, summary="Create Retell LLM", responses=error_responses(413))
async def create_retell_llm(body: RetellLlmBody, request: Request, session: Session,
                            workspace_id: RetellWorkspace) -> dict[str, Any]:
    settings = request.app.state.settings
    config = validated(LlmConfig, {"display_name": DISPLAY_NAME, **to_ours(body, settings, clear_nulls=False)})
    return llm_out(await service.create_llm(session, workspace_id=workspace_id, config=config, settings=settings))


@router.get("/get-retell-llm/{llm_id}", summary="Get Retell LLM")
async def get_retell_llm(llm_id: str, session: Session, workspace_id: RetellWorkspace,
                         version: VersionQuery = None) -> dict[str, Any]:
    return llm_out(await configs.get(session, Llm, workspace_id=workspace_id, id=llm_id, version=version))


@router.patch("/update-retell-llm/{llm_id}", summary="Update Retell LLM",
              description="Changes the latest version (a published one: a new draft version). "
              "`version`, if given, must be the latest: 409 `version_not_latest` otherwise.",
              responses=error_responses(409, 413))
async def update_retell_llm(
    llm_id: str, body: RetellLlmBody, request: Request, session: Session, workspace_id: RetellWorkspace,
    version: Annotated[int | None, Query(ge=1, le=MAX_VERSION)] = None,
) -> dict[str, Any]:
    settings = request.app.state.settings
    await latest(session, Llm, workspace_id=workspace_id, id=llm_id, version=version)
    row = await service.update_llm(
        session, workspace_id=workspace_id, llm_id=llm_id,
        patch=to_ours(body, settings, clear_nulls=True), settings=settings,
    )
    return llm_out(row)


@router.get("/v2/list-retell-llms", summary="List Retell LLMs (latest versions)")
async def list_retell_llms(session: Session, workspace_id: RetellWorkspace, page: RetellPage) -> dict[str, Any]:
    rows, key = await configs.list_latest(session, Llm, workspace_id=workspace_id, page=page)
    return listed([llm_out(row) for row in rows], key)


@router.delete("/delete-retell-llm/{llm_id}", status_code=204, summary="Delete Retell LLM (all versions)",
               description="409 `llm_in_use` while a chat agent uses it.", responses=error_responses(409))
async def delete_retell_llm(llm_id: str, session: Session, workspace_id: RetellWorkspace) -> Response:
    await service.delete_llm(session, workspace_id=workspace_id, llm_id=llm_id)
    return Response(status_code=204)
