"""Knowledge bases and their sources: what the routes do.

A request only records: the knowledge base, each source with its original
(a text, a file's bytes, a URL) and one ``knowledge.index`` job per source,
in the request's transaction. Fetching, converting, chunking and indexing
happen in the job (``knowledge.ingest``), never in the request.

Status, as Retell reports it: ``in_progress`` until the first sources are
indexed, then ``complete`` (``error`` if every one of them failed);
``refreshing_in_progress`` while sources added later, or re-fetched, are
indexed, and what was indexed before stays searchable meanwhile.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import bindparam, delete, func, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from chatplane import jobs
from chatplane.db import get_scoped, insert_of, utcnow
from chatplane.errors import Conflict, NotFound
from chatplane.ids import new_id
from chatplane.models import (
    KnowledgeBase,
    KnowledgeChunk,
    KnowledgeSource,
    KnowledgeTerm,
    Llm,
)
from chatplane.pagination import PageRequest, fetch_page

INDEX_JOB = "knowledge.index"
PENDING = "pending"


@dataclass(frozen=True, slots=True)
class Upload:
    """A file as it came in a multipart body (its type checked already)."""

    filename: str
    content_type: str | None
    data: bytes


def not_found(knowledge_base_id: str) -> NotFound:
    return NotFound(f"knowledge base {knowledge_base_id} not found", code="knowledge_base_not_found")


async def get_base(
    session: AsyncSession, *, workspace_id: int, knowledge_base_id: str, for_update: bool = False
) -> KnowledgeBase:
    return await get_scoped(
        session, KnowledgeBase.id, knowledge_base_id, workspace_id=workspace_id,
        missing=lambda: not_found(knowledge_base_id), for_update=for_update,
    )


async def sources_of(session: AsyncSession, knowledge_base_id: str) -> list[KnowledgeSource]:
    """A knowledge base's sources, oldest first, without their originals and texts."""
    columns = [c for c in KnowledgeSource.__table__.columns if c.key not in ("original", "text")]
    rows = await session.execute(
        select(*columns).where(KnowledgeSource.knowledge_base_id == knowledge_base_id).order_by(KnowledgeSource.id)
    )
    return [KnowledgeSource(**row._mapping) for row in rows]


async def get_source(session: AsyncSession, base: KnowledgeBase, source_id: str) -> KnowledgeSource:
    source = await session.scalar(
        select(KnowledgeSource).where(KnowledgeSource.id == source_id, KnowledgeSource.knowledge_base_id == base.id)
    )
    if source is None:
        raise NotFound(f"source {source_id} not found in knowledge base {base.id}", code="source_not_found")
    return source


async def create_base(
    session: AsyncSession, *, workspace_id: int, name: str, max_chunk_size: int, min_chunk_size: int,
    enable_auto_refresh: bool, texts: Iterable[tuple[str, str]], urls: Iterable[str], files: Iterable[Upload],
) -> KnowledgeBase:
    now = utcnow()
    base = KnowledgeBase(
        id=new_id("knowledge_base"), workspace_id=workspace_id, name=name, status="in_progress",
        max_chunk_size=max_chunk_size, min_chunk_size=min_chunk_size, enable_auto_refresh=enable_auto_refresh,
        chunk_count=0, term_count=0, created_at=now, updated_at=now,
    )
    session.add(base)
    await session.flush()
    if not await _add(session, base, texts, urls, files):
        base.status = "complete"  # nothing to index
    return base


async def add_sources(
    session: AsyncSession, *, workspace_id: int, knowledge_base_id: str,
    texts: Iterable[tuple[str, str]], urls: Iterable[str], files: Iterable[Upload],
) -> KnowledgeBase:
    base = await get_base(session, workspace_id=workspace_id, knowledge_base_id=knowledge_base_id, for_update=True)
    if await _add(session, base, texts, urls, files):
        refreshing(base)
    return base


def refreshing(base: KnowledgeBase) -> None:
    """The knowledge base is being re-indexed (what it held stays searchable)."""
    if base.status != "in_progress":
        base.status = "refreshing_in_progress"
    base.updated_at = utcnow()


async def _add(
    session: AsyncSession, base: KnowledgeBase, texts: Iterable[tuple[str, str]], urls: Iterable[str],
    files: Iterable[Upload],
) -> int:
    """Record the sources and queue their indexing; how many there were."""
    now = utcnow()
    sources = [
        *(KnowledgeSource(type="text", title=title, original=text.encode(), file_size=len(text.encode()))
          for title, text in texts),
        *(KnowledgeSource(type="url", title=url, url=url, file_size=0) for url in urls),
        *(KnowledgeSource(type="document", title=f.filename, filename=f.filename, content_type=f.content_type,
                          original=f.data, file_size=len(f.data)) for f in files),
    ]
    for source in sources:
        source.id = new_id("source")
        source.knowledge_base_id = base.id
        source.status = PENDING
        source.chunk_count = 0
        source.created_at = now
        session.add(source)
    await session.flush()
    for source in sources:
        await queue_index(session, base.id, source.id)
    return len(sources)


async def queue_index(
    session: AsyncSession, knowledge_base_id: str, source_id: str, *, dedupe_key: str | None = None
) -> None:
    # One knowledge base's sources are indexed one at a time, in order: the
    # term counts of a knowledge base are only ever changed by one job.
    await jobs.enqueue(session, INDEX_JOB, {"source_id": source_id}, ordering_key=f"knowledge:{knowledge_base_id}",
                       dedupe_key=dedupe_key, max_attempts=3)


async def list_bases(session: AsyncSession, *, workspace_id: int, page: PageRequest) -> tuple[list[KnowledgeBase], str | None]:
    query = select(KnowledgeBase).where(KnowledgeBase.workspace_id == workspace_id)
    return await fetch_page(session, query, KnowledgeBase.id, page)


async def in_use_by(session: AsyncSession, *, workspace_id: int, knowledge_base_id: str) -> str | None:
    """An LLM configuration (any version of an LLM not deleted: a published
    version keeps serving the agents pinned to it) that names this knowledge base."""
    rows = await session.execute(
        select(Llm.id, Llm.version, Llm.config).where(Llm.workspace_id == workspace_id, Llm.deleted_at.is_(None))
        .order_by(Llm.id, Llm.version)
    )
    for llm_id, version, config in rows:
        if knowledge_base_id in (config.get("knowledge_base_ids") or []):
            return f"{llm_id} (version {version})"
    return None


async def delete_base(session: AsyncSession, *, workspace_id: int, knowledge_base_id: str) -> None:
    base = await get_base(session, workspace_id=workspace_id, knowledge_base_id=knowledge_base_id, for_update=True)
    user = await in_use_by(session, workspace_id=workspace_id, knowledge_base_id=knowledge_base_id)
    if user is not None:
        raise Conflict(
            f"knowledge base {knowledge_base_id} is used by LLM {user}; remove it from knowledge_base_ids first",
            code="knowledge_base_in_use",
        )
    # Chunks first: on SQLite their delete trigger keeps the FTS index in step.
    await session.execute(delete(KnowledgeChunk).where(KnowledgeChunk.knowledge_base_id == base.id))
    await session.delete(base)  # sources and term counts go with it (ON DELETE CASCADE)


async def delete_source(
    session: AsyncSession, *, workspace_id: int, knowledge_base_id: str, source_id: str
) -> KnowledgeBase:
    base = await get_base(session, workspace_id=workspace_id, knowledge_base_id=knowledge_base_id, for_update=True)
    source = await get_source(session, base, source_id)
    await drop_chunks(session, base, source.id)
    await session.delete(source)
    base.updated_at = utcnow()
    await session.flush()
    await settle(session, base)
    return base


async def refresh_source(
    session: AsyncSession, *, workspace_id: int, knowledge_base_id: str, source_id: str
) -> KnowledgeBase:
    """Fetch a URL source again (only a changed page is re-indexed)."""
    base = await get_base(session, workspace_id=workspace_id, knowledge_base_id=knowledge_base_id, for_update=True)
    source = await get_source(session, base, source_id)
    if source.type != "url":
        raise Conflict(f"source {source_id} is a {source.type}, not a URL: there is nothing to fetch again",
                       code="not_a_url_source")
    source.status = PENDING
    refreshing(base)
    await queue_index(session, base.id, source.id)
    return base


async def list_chunks(
    session: AsyncSession, *, workspace_id: int, knowledge_base_id: str, source_id: str, limit: int,
    after: int | None,
) -> tuple[list[KnowledgeChunk], int | None]:
    base = await get_base(session, workspace_id=workspace_id, knowledge_base_id=knowledge_base_id)
    await get_source(session, base, source_id)
    query = select(KnowledgeChunk).where(KnowledgeChunk.source_id == source_id)
    if after is not None:
        query = query.where(KnowledgeChunk.position > after)
    rows = list((await session.scalars(query.order_by(KnowledgeChunk.position).limit(limit + 1))).all())
    if len(rows) > limit:
        return rows[:limit], rows[limit - 1].position
    return rows, None


# --- the index: what ingest writes and deletes --------------------------------


async def drop_chunks(session: AsyncSession, base: KnowledgeBase, source_id: str) -> None:
    """Take a source's chunks out of the index and out of the knowledge base's counts.

    Both this and ``add_chunks`` move the knowledge base's ``updated_at``:
    what changes its chunks changes it, and each process's vectors of it
    (``dense.VectorCache``) are read again."""
    rows = (await session.execute(
        select(KnowledgeChunk.terms, KnowledgeChunk.term_count).where(KnowledgeChunk.source_id == source_id)
    )).all()
    if not rows:
        return
    holding: Counter[str] = Counter()
    for terms, _ in rows:
        holding.update(set(terms.split()))
    await session.execute(delete(KnowledgeChunk).where(KnowledgeChunk.source_id == source_id))
    await _count_terms(session, base.id, holding, sign=-1)
    await session.execute(
        update(KnowledgeBase).where(KnowledgeBase.id == base.id).values(
            chunk_count=KnowledgeBase.chunk_count - len(rows),
            term_count=KnowledgeBase.term_count - sum(count for _, count in rows), updated_at=utcnow(),
        )
    )


async def add_chunks(session: AsyncSession, base: KnowledgeBase, source_id: str, chunks: list[dict[str, Any]]) -> None:
    """Put a source's chunks (rows of ``KnowledgeChunk`` columns) into the index and the counts."""
    if not chunks:
        return
    await session.execute(KnowledgeChunk.__table__.insert(), chunks)
    holding: Counter[str] = Counter()
    for chunk in chunks:
        holding.update(set(chunk["terms"].split()))
    await _count_terms(session, base.id, holding, sign=1)
    await session.execute(
        update(KnowledgeBase).where(KnowledgeBase.id == base.id).values(
            chunk_count=KnowledgeBase.chunk_count + len(chunks),
            term_count=KnowledgeBase.term_count + sum(chunk["term_count"] for chunk in chunks), updated_at=utcnow(),
        )
    )


async def _count_terms(session: AsyncSession, knowledge_base_id: str, holding: Counter[str], *, sign: int) -> None:
    """Add (or take away) how many chunks hold each term. In term order, so
    that two transactions touching the same terms lock them in the same order."""
    rows = [{"b_base": knowledge_base_id, "b_term": term, "b_n": n} for term, n in sorted(holding.items())]
    table = KnowledgeTerm.__table__
    if sign > 0:
        insert = insert_of(session)
        statement = insert(table).values(
            knowledge_base_id=bindparam("b_base"), term=bindparam("b_term"), chunks=bindparam("b_n")
        )
        statement = statement.on_conflict_do_update(
            index_elements=["knowledge_base_id", "term"], set_={"chunks": table.c.chunks + statement.excluded.chunks}
        )
        await session.execute(statement, rows)
        return
    await session.execute(
        update(table).where(table.c.knowledge_base_id == bindparam("b_base"), table.c.term == bindparam("b_term"))
        .values(chunks=table.c.chunks - bindparam("b_n")),
        rows,
    )
    await session.execute(delete(table).where(table.c.knowledge_base_id == knowledge_base_id, table.c.chunks <= 0))


async def settle(session: AsyncSession, base: KnowledgeBase) -> None:
    """The knowledge base's status once no source waits for its job any more."""
    counts = dict((await session.execute(
        select(KnowledgeSource.status, func.count()).where(KnowledgeSource.knowledge_base_id == base.id)
        .group_by(KnowledgeSource.status)
    )).all())
    if counts.get(PENDING):
        return
    if base.status == "in_progress" and counts.get("error") and not counts.get("complete"):
        base.status = "error"
    elif base.status in ("in_progress", "refreshing_in_progress"):
        base.status = "complete"
    base.updated_at = utcnow()
