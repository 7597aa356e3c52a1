"""Chat agents: create, read, edit, publish, delete."""

from __future__ import annotations

from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from chatplane import configs
from chatplane.agents.schemas import ChatAgentConfig
from chatplane.errors import Conflict, InvalidInput, NotFound
from chatplane.models import ChatAgent, Llm
from chatplane.schemas import validate_merged
from chatplane.settings import Settings


async def _checked(
    session: AsyncSession, *, workspace_id: int, config: ChatAgentConfig, settings: Settings
) -> dict[str, Any]:
    """The stored form of ``config``, after the checks that need the database."""
    data = config.model_dump(mode="json", exclude={"workspace_id"})
    engine = data["response_engine"]
    if engine["type"] != "uponai-llm":
        raise InvalidInput(
            "conversation flows are not served by this server yet; use an uponai-llm response engine",
            field="response_engine.type",
        )
    try:
        # FOR UPDATE: pairs with the lock delete_llm takes, so an LLM cannot
        # be deleted while an agent is being pointed at it.
        await configs.get(session, Llm, workspace_id=workspace_id, id=engine["llm_id"], for_update=True)
    except NotFound as exc:
        raise InvalidInput(exc.message, field="response_engine.llm_id") from None
    if engine["version"] is not None:
        try:
            await configs.get(
                session, Llm, workspace_id=workspace_id, id=engine["llm_id"], version=engine["version"]
            )
        except NotFound as exc:
            raise InvalidInput(exc.message, field="response_engine.version") from None
    model = data["post_chat_analysis_model"]
    if model is not None and model not in settings.model_names:
        known = ", ".join(sorted(settings.model_names))
        raise InvalidInput(
            f"unknown model {model!r}; this server offers: {known}", field="post_chat_analysis_model"
        )
    return data


async def create_agent(
    session: AsyncSession, *, workspace_id: int, config: ChatAgentConfig, settings: Settings
) -> ChatAgent:
    data = await _checked(session, workspace_id=workspace_id, config=config, settings=settings)
    return await configs.create(
        session, ChatAgent, workspace_id=workspace_id, config=data,
        llm_id=data["response_engine"]["llm_id"],
    )


async def update_agent(
    session: AsyncSession, *, workspace_id: int, agent_id: str, patch: dict[str, Any], settings: Settings
) -> ChatAgent:
    row = await configs.get(session, ChatAgent, workspace_id=workspace_id, id=agent_id, for_update=True)
    merged = validate_merged(ChatAgentConfig, row.config, patch)
    data = await _checked(session, workspace_id=workspace_id, config=merged, settings=settings)  # type: ignore[arg-type]
    return await configs.save(session, row, config=data, llm_id=data["response_engine"]["llm_id"])


async def publish_agent(session: AsyncSession, *, workspace_id: int, agent_id: str) -> ChatAgent:
    """Freeze the latest version, and with it the LLM version it runs on.

    An agent published on "the latest LLM" would change under its users the
    next time the LLM is edited, so publishing pins the version it has now.
    """
    row = await configs.get(session, ChatAgent, workspace_id=workspace_id, id=agent_id, for_update=True)
    if row.is_published:
        return row
    engine = row.config["response_engine"]
    try:
        llm = await configs.get(
            session, Llm, workspace_id=workspace_id, id=engine["llm_id"], version=engine.get("version"),
            for_update=True,
        )
    except NotFound:
        raise Conflict(
            f"chat agent {agent_id} uses LLM {engine['llm_id']}, which no longer exists; "
            "point response_engine at another LLM first",
            code="llm_missing",
        ) from None
    await configs.mark_published(session, llm)
    if engine.get("version") != llm.version:
        row.config = {**row.config, "response_engine": {**engine, "version": llm.version}}
    return await configs.mark_published(session, row)
