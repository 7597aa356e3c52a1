"""Auto-refresh: URL sources of knowledge bases with ``enable_auto_refresh``
are fetched again once ``knowledge.refresh_s`` (a day) has passed since
their last fetch.

A monitor in each process (``run_monitor``) looks for due sources every
``jobs.monitor_s`` and queues their ``knowledge.index`` job, the one a manual
refresh queues: the page is fetched, and only a page whose text changed (its
SHA-256) is re-indexed; the old chunks stay searchable meanwhile. The job is
deduplicated by the source and the fetch it follows, so monitors of several
processes that find the same source queue it once. A fetch that fails
counts as a fetch: the source is tried again a period later, not at every pass.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import func, select

from chatplane import jobs
from chatplane.db import transaction, utcnow
from chatplane.knowledge import service
from chatplane.models import KnowledgeBase, KnowledgeSource

BATCH = 200  # sources queued by one pass at most; the next pass takes the rest


async def queue_due_refreshes(services: Any, *, now: datetime | None = None) -> int:
    """One monitor pass: a refresh job per due URL source; how many were queued."""
    now = now or utcnow()
    fetched = func.coalesce(KnowledgeSource.refreshed_at, KnowledgeSource.created_at)
    cutoff = now - timedelta(seconds=services.settings.knowledge.refresh_s)
    async with transaction(services.sessions) as session:
        due = (await session.execute(
            select(KnowledgeSource.id, KnowledgeSource.knowledge_base_id, fetched.label("fetched"))
            .join(KnowledgeBase, KnowledgeBase.id == KnowledgeSource.knowledge_base_id)
            .where(KnowledgeBase.enable_auto_refresh, KnowledgeSource.type == "url",
                   KnowledgeSource.status != service.PENDING, fetched <= cutoff)
            .order_by(fetched).limit(BATCH)
        )).all()
        by_base: dict[str, list[Any]] = {}
        for row in due:
            by_base.setdefault(row.knowledge_base_id, []).append(row)
        for base_id in sorted(by_base):  # locked in one order: two monitors never wait on each other in a cycle
            base = await session.get(KnowledgeBase, base_id, with_for_update=True)
            if base is None:
                continue
            for row in by_base[base_id]:
                source = await session.get(KnowledgeSource, row.id, with_for_update=True)
                if source is None or source.status == service.PENDING:
                    continue  # deleted, or queued by another process meanwhile
                source.status = service.PENDING
                stamp = row.fetched.isoformat() if isinstance(row.fetched, datetime) else str(row.fetched)
                await service.queue_index(session, base.id, source.id, dedupe_key=f"refresh:{source.id}:{stamp}")
            service.refreshing(base)
    return len(due)


async def run_monitor(services: Any) -> None:
    await jobs.monitor(services, queue_due_refreshes, "knowledge auto-refresh")
