"""LLM configurations: create, read, edit, publish, delete."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from chatplane import configs
from chatplane.errors import Conflict, InvalidInput
from chatplane.llms.schemas import LlmConfig
from chatplane.models import ChatAgent, KnowledgeBase, Llm
from chatplane.schemas import validate_merged
from chatplane.settings import Settings


def _check_model(config: LlmConfig, settings: Settings) -> dict[str, Any]:
    data = config.model_dump(mode="json", exclude={"workspace_id"})
    if data["model"] is None:  # unset; an empty name is refused like any unknown one
        data["model"] = settings.default_model
    if data["model"] not in settings.model_names:
        known = ", ".join(sorted(settings.model_names))
        raise InvalidInput(f"unknown model {data['model']!r}; this server offers: {known}", field="model")
    return data


async def _check_knowledge(session: AsyncSession, workspace_id: int, config: LlmConfig) -> None:
    """Every knowledge base the configuration names is one of the workspace's."""
    if not config.knowledge_base_ids:
        return
    found = set((await session.scalars(
        select(KnowledgeBase.id).where(
            KnowledgeBase.workspace_id == workspace_id, KnowledgeBase.id.in_(config.knowledge_base_ids))
        # Locked as deleting one locks it first: a delete either waits and
        # sees this LLM (409), or went first and the id is not found here.
        .with_for_update()
    )).all())
    for i, kb in enumerate(config.knowledge_base_ids):
        if kb not in found:
            raise InvalidInput(f"no knowledge base {kb[:64]!r} in this workspace", field=f"knowledge_base_ids[{i}]")


async def create_llm(session: AsyncSession, *, workspace_id: int, config: LlmConfig, settings: Settings) -> Llm:
    await _check_knowledge(session, workspace_id, config)
    return await configs.create(
        session, Llm, workspace_id=workspace_id, config=_check_model(config, settings)
    )


async def update_llm(
    session: AsyncSession, *, workspace_id: int, llm_id: str, patch: dict[str, Any], settings: Settings
) -> Llm:
    row = await configs.get(session, Llm, workspace_id=workspace_id, id=llm_id, for_update=True)
    merged = validate_merged(LlmConfig, row.config, patch)
    await _check_knowledge(session, workspace_id, merged)  # type: ignore[arg-type]
    return await configs.save(session, row, config=_check_model(merged, settings))  # type: ignore[arg-type]


async def delete_llm(session: AsyncSession, *, workspace_id: int, llm_id: str) -> None:
    # Lock the LLM first: an agent being created on it at this moment reads
    # it FOR UPDATE too, so one of the two waits and sees the other's result.
    await configs.get(session, Llm, workspace_id=workspace_id, id=llm_id, for_update=True)
    user = await session.scalar(
        select(ChatAgent.id).where(
            ChatAgent.workspace_id == workspace_id,
            ChatAgent.llm_id == llm_id,
            ChatAgent.deleted_at.is_(None),
        ).limit(1)
    )
    if user is not None:
        raise Conflict(f"LLM {llm_id} is used by chat agent {user}; delete or repoint it first", code="llm_in_use")
    await configs.soft_delete(session, Llm, workspace_id=workspace_id, id=llm_id)
