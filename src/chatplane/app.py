"""create_app(settings): routers, error handlers, the database, lifespan."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import asyncio

from fastapi import FastAPI

from chatplane import __version__
from chatplane.agents.routes import router as agents_router
from chatplane.auth import PrincipalCache
from chatplane.chats.list_v3 import router as list_chats_v3_router
from chatplane.chats.locks import TurnLocks
from chatplane.chats.routes import router as chats_router
from chatplane.chats.turns import Turns
from chatplane.db import create_engine, create_sessionmaker
from chatplane.errors import install_error_handlers
from chatplane.limits import BodyLimit
from chatplane.llms.routes import router as llms_router
from chatplane.providers import Registry
from chatplane.settings import Settings
from chatplane.workspaces.routes import router as workspaces_router

DESCRIPTION = """\
Self-hosted chat agents speaking the UponAI Platform chat API.

Every `/api` call takes `Authorization: Bearer <api key>` and names its
workspace: `workspaceId` in the JSON body (POST/PATCH) or the query
(GET/DELETE). A resource of another workspace answers 404 exactly like a
missing one. Errors are `{"error": {"code", "message", "field"?, "details"?}}`.
"""


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        engine = create_engine(settings)
        app.state.engine = engine
        app.state.sessions = create_sessionmaker(engine)
        app.state.principals = PrincipalCache(engine, settings.auth_cache_s)
        app.state.registry = Registry(settings)
        locks = TurnLocks(engine, lock_file=settings.sqlite_path.with_suffix(".turnlocks") if settings.is_sqlite else None)
        app.state.turns = Turns(engine, app.state.registry, locks)
        app.state.background = set()
        try:
            yield
        finally:
            # Let turns whose clients went away finish and be stored.
            if app.state.background:
                await asyncio.wait(app.state.background, timeout=settings.server.shutdown_grace_s)
            await locks.aclose()
            await app.state.registry.aclose()
            await engine.dispose()

    app = FastAPI(
        title="chatplane",
        version=__version__,
        description=DESCRIPTION,
        lifespan=lifespan,
    )
    app.state.settings = settings
    install_error_handlers(app)
    for router in (workspaces_router, llms_router, agents_router, chats_router, list_chats_v3_router):
        app.include_router(router)

    @app.get("/healthz", include_in_schema=False)
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    # Ours rather than Starlette's RequestBodyLimitMiddleware: that one lets
    # the route start (auth, validation) on a declared-oversized body and
    # answers in plain text; this one refuses before the app runs, in the
    # API's error shape.
    app.add_middleware(BodyLimit, max_bytes=settings.server.max_body_bytes)
    return app
