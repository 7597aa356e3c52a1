"""What a chatplane process runs on: built once at start-up, shared by the
API (``app.state``) and by job handlers (``JobContext.services``)."""

from __future__ import annotations

import asyncio
import gc
import importlib
from dataclasses import dataclass, field
from typing import Any

import httpx
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from chatplane.auth import PrincipalCache
from chatplane.chats.locks import TurnLocks
from chatplane.chats.turn.engine import Turns
from chatplane.db import create_engine, create_sessionmaker
from chatplane.db_sqlite import checkpoint_loop
from chatplane.jobs import Worker
from chatplane.providers import Registry
from chatplane.settings import Settings

# Modules whose job handlers a worker must know, imported for their registration.
import chatplane.chats.analysis  # noqa: E402,F401
import chatplane.chats.idle  # noqa: E402,F401
import chatplane.knowledge.ingest  # noqa: E402,F401
import chatplane.knowledge.refresh  # noqa: E402,F401
import chatplane.webhooks.deliver  # noqa: E402,F401
import chatplane.sms.tasks  # noqa: E402,F401


@dataclass
class Services:
    settings: Settings
    engine: AsyncEngine
    sessions: async_sessionmaker[AsyncSession]
    registry: Registry
    turns: Turns
    principals: PrincipalCache
    # For outgoing calls that are not model calls (webhooks, custom tools).
    http: httpx.AsyncClient
    worker: Worker | None = None
    background: set[asyncio.Task[Any]] = field(default_factory=set)
    _tasks: list[asyncio.Task[Any]] = field(default_factory=list)

    @property
    def locks(self) -> TurnLocks:
        return self.turns.locks

    def spawn(self, coro: Any) -> asyncio.Task[Any]:
        """Run ``coro`` beside the requests; shutdown waits for it."""
        task = asyncio.create_task(coro)
        self.background.add(task)
        task.add_done_callback(self.background.discard)
        return task


async def start(settings: Settings, *, worker: bool) -> Services:
    engine = create_engine(settings)
    sessions = create_sessionmaker(engine)
    registry = Registry(settings)
    lock_file = settings.sqlite_path.with_suffix(".turnlocks") if settings.is_sqlite else None
    http = httpx.AsyncClient(follow_redirects=False)
    services = Services(
        settings=settings,
        engine=engine,
        sessions=sessions,
        registry=registry,
        turns=Turns(
            engine, registry, TurnLocks(engine, lock_file=lock_file),
            http=http, allow_private_networks=settings.allow_private_networks,
            embedding_model=settings.knowledge.embedding_model,
        ),
        principals=PrincipalCache(engine, settings.auth_cache_s),
        http=http,
    )
    if settings.is_sqlite:
        services._tasks.append(asyncio.create_task(checkpoint_loop(settings)))
    # Everything loaded so far (modules, the app) lives as long as the
    # process: move it out of the collector's sight, so a full collection
    # during a request walks only what requests made.
    gc.collect()
    gc.freeze()
    if worker:
        jobs = settings.jobs
        for module in jobs.extra_modules:
            importlib.import_module(module)
        services.worker = Worker(
            sessions, services, concurrency=jobs.concurrency, lease_s=jobs.lease_s, poll_s=jobs.poll_s,
            backoff_base_s=jobs.backoff_base_s, backoff_cap_s=jobs.backoff_cap_s,
        )
        services._tasks.append(asyncio.create_task(services.worker.run_forever()))
        services._tasks.append(asyncio.create_task(chatplane.chats.idle.run_monitor(services)))
        services._tasks.append(asyncio.create_task(chatplane.knowledge.refresh.run_monitor(services)))
    return services


async def stop(services: Services) -> None:
    grace = services.settings.server.shutdown_grace_s
    # Let turns whose clients went away finish and be stored.
    if services.background:
        await asyncio.wait(services.background, timeout=grace)
    if services.worker:
        await services.worker.stop(grace_s=grace)
    for task in services._tasks:
        task.cancel()
    await asyncio.gather(*services._tasks, return_exceptions=True)
    await services.turns.aclose()
    await services.turns.locks.aclose()
    await services.registry.aclose()
    await services.http.aclose()
    await services.engine.dispose()
