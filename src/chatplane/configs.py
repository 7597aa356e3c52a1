"""Versioned configurations: the one mechanism behind LLMs and chat agents.

Version 1 is made on create. Editing a draft changes it in place; editing a
published version leaves it frozen and starts the next version as a draft.
Exactly one row per id carries ``is_latest``. Delete is soft.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, TypeVar

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession

from chatplane.db import utcnow
from chatplane.ids import new_id
from chatplane.errors import NotFound, shown
from chatplane.models import ChatAgent, Llm
from chatplane.pagination import PageRequest, fetch_page

M = TypeVar("M", Llm, ChatAgent)

LABELS: dict[type, tuple[str, str]] = {
    Llm: ("LLM", "llm_not_found"),
    ChatAgent: ("chat agent", "chat_agent_not_found"),
}
PREFIXES: dict[type, str] = {Llm: "llm", ChatAgent: "chat_agent"}


def not_found(model: type, id: str, version: int | None = None) -> NotFound:
    label, code = LABELS[model]
    what = f"{label} {shown(id)}" + (f" version {version}" if version is not None else "")
    return NotFound(f"{what} not found", code=code)


async def create(
    session: AsyncSession, model: type[M], *, workspace_id: int, config: dict[str, Any], **columns: Any
) -> M:
    now = utcnow()
    row = model(
        id=new_id(PREFIXES[model]),
        version=1,
        workspace_id=workspace_id,
        is_published=False,
        is_latest=True,
        config=config,
        created_at=now,
        updated_at=now,
        **columns,
    )
    session.add(row)
    await session.flush()
    return row


async def get(
    session: AsyncSession,
    model: type[M],
    *,
    workspace_id: int,
    id: str,
    version: int | None = None,
    for_update: bool = False,
) -> M:
    """The latest version, or the one asked for; 404 for another workspace's."""
    query = select(model).where(
        model.id == id, model.workspace_id == workspace_id, model.deleted_at.is_(None)
    )
    query = query.where(model.version == version) if version is not None else query.where(model.is_latest)
    if for_update:
        query = query.with_for_update()
    row = await session.scalar(query)
    if row is None and for_update and version is None:
        # Waiting for the lock, we may have seen the latest row stop being the
        # latest (a concurrent edit made the next version): look once more,
        # with a fresh snapshot, for the row that is the latest now.
        row = await session.scalar(query)
    if row is None:
        raise not_found(model, id, version)
    return row


async def list_latest(
    session: AsyncSession, model: type[M], *, workspace_id: int, page: PageRequest, where: Sequence[Any] = ()
) -> tuple[list[M], str | None]:
    """One page of the latest versions (and of those matching ``where``)."""
    query = select(model).where(
        model.workspace_id == workspace_id, model.is_latest, model.deleted_at.is_(None), *where
    )
    return await fetch_page(session, query, model.id, page)


async def list_versions(session: AsyncSession, model: type[M], *, workspace_id: int, id: str) -> list[M]:
    rows = list(
        (
            await session.scalars(
                select(model)
                .where(model.id == id, model.workspace_id == workspace_id, model.deleted_at.is_(None))
                .order_by(model.version)
            )
        ).all()
    )
    if not rows:
        raise not_found(model, id)
    return rows


async def save(session: AsyncSession, row: M, *, config: dict[str, Any], **columns: Any) -> M:
    """Store a new configuration for ``row`` (the latest version, locked).

    A draft is changed in place; a published version stays as it was and the
    change becomes the next version.
    """
    now = utcnow()
    if not row.is_published:
        row.config = config
        row.updated_at = now
        for name, value in columns.items():
            setattr(row, name, value)
        await session.flush()
        return row
    model = type(row)
    row.is_latest = False
    draft = model(
        id=row.id,
        version=row.version + 1,
        workspace_id=row.workspace_id,
        is_published=False,
        is_latest=True,
        config=config,
        created_at=now,
        updated_at=now,
        **columns,
    )
    session.add(draft)
    await session.flush()
    return draft


async def mark_published(session: AsyncSession, row: M) -> M:
    if not row.is_published:
        row.is_published = True
        row.updated_at = utcnow()
        await session.flush()
    return row


async def soft_delete(session: AsyncSession, model: type[M], *, workspace_id: int, id: str) -> None:
    result = await session.execute(
        update(model)
        .where(model.id == id, model.workspace_id == workspace_id, model.deleted_at.is_(None))
        .values(deleted_at=utcnow())
    )
    if result.rowcount == 0:
        raise not_found(model, id)
