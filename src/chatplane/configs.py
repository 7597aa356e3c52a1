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
from chatplane.errors import Conflict, NotFound, shown
from chatplane.ids import new_id
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
    return await _next_version(session, row, config=config, columns=columns)


async def _next_version(session: AsyncSession, latest: M, *, config: dict[str, Any], columns: dict[str, Any]) -> M:
    """A new draft after ``latest``, which stops being the latest."""
    now = utcnow()
    latest.is_latest = False
    draft = type(latest)(
        id=latest.id,
        version=latest.version + 1,
        workspace_id=latest.workspace_id,
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


async def branch(session: AsyncSession, latest: M, base: M, **columns: Any) -> M:
    """The next version, a draft with ``base``'s configuration (``latest`` is
    published: there is one draft at a time, and it is the latest)."""
    if not latest.is_published:
        label = LABELS[type(latest)][0]
        raise Conflict(f"{label} {latest.id} has a draft already (version {latest.version}): "
                       "change or publish it", code="draft_exists")
    return await _next_version(session, latest, config=base.config, columns=columns)


async def drop_draft(session: AsyncSession, latest: M) -> M:
    """Delete the draft ``latest``; the version before it is the latest again."""
    model = type(latest)
    label = LABELS[model][0]
    if latest.is_published:
        raise Conflict(f"version {latest.version} of {label} {latest.id} is published; only a draft is deleted",
                       code="version_published")
    previous = await session.scalar(
        select(model)
        .where(model.id == latest.id, model.workspace_id == latest.workspace_id, model.version < latest.version)
        .order_by(model.version.desc())
        .limit(1)
        .with_for_update()
    )
    if previous is None:
        raise Conflict(f"version {latest.version} is the only version of {label} {latest.id}: delete it instead",
                       code="only_version")
    await session.delete(latest)
    await session.flush()  # before another row is the latest (one latest per id)
    previous.is_latest = True
    await session.flush()
    return previous


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
