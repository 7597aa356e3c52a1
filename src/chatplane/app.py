"""create_app(settings): routers, error handlers, the database, lifespan."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from chatplane import __version__
from chatplane.agents.routes import router as agents_router
from chatplane.chats.fast import CompletionFastPath
from chatplane.chats.routes import router as chats_router
from chatplane.errors import install_error_handlers
from chatplane.limits import InputGuard
from chatplane.knowledge.routes import router as knowledge_router
from chatplane.llms.routes import router as llms_router
from chatplane.retell import agents as retell_agents
from chatplane.retell import chats as retell_chats
from chatplane.retell import knowledge as retell_knowledge
from chatplane.retell import llms as retell_llms
from chatplane.retell import numbers as retell_numbers
from chatplane.services import start, stop
from chatplane.settings import Settings
from chatplane.sms.routes import chats_router as sms_chats_router
from chatplane.sms.routes import router as phone_numbers_router
from chatplane.sms.routes import webhook_router as twilio_webhook_router
from chatplane.webhooks.routes import key_router as webhook_key_router
from chatplane.webhooks.routes import router as webhooks_router
from chatplane.workspaces.routes import router as workspaces_router

# Multipart bodies to these paths stream to the route (files may be far
# larger than a JSON body): knowledge-base files.
UPLOAD_PATHS = ("/api/knowledge-bases", "/create-knowledge-base", "/add-knowledge-base-sources/")

DESCRIPTION = """\
Self-hosted chat agents speaking the UponAI Platform chat API.

Every `/api` call takes `Authorization: Bearer <api key>` and names its
workspace: `workspaceId` in the JSON body (POST/PATCH) or the query
(GET/DELETE). A resource of another workspace answers 404 exactly like a
missing one. Errors are `{"error": {"code", "message", "field"?, "details"?}}`.
"""


def create_app(settings: Settings | None = None, *, fast_completions: bool = True) -> FastAPI:
    """The app. ``fast_completions=False`` leaves every completion to its
    FastAPI route (the tests compare the two ways; see ``chats/fast.py``)."""
    settings = settings or Settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        services = await start(settings, worker=settings.jobs.in_server)
        app.state.services = services
        # The names routes and dependencies reach for.
        app.state.sessions = services.sessions
        app.state.turns = services.turns
        app.state.principals = services.principals
        app.state.background = services.background
        try:
            yield
        finally:
            await stop(services)

    app = FastAPI(
        title="chatplane",
        version=__version__,
        description=DESCRIPTION,
        lifespan=lifespan,
    )
    app.state.settings = settings
    install_error_handlers(app)
    for router in (workspaces_router, webhook_key_router, llms_router, agents_router, chats_router,
                   webhooks_router, phone_numbers_router, sms_chats_router, twilio_webhook_router, retell_llms.router, retell_agents.router, retell_chats.router,
                   retell_numbers.router, knowledge_router, retell_knowledge.router):
        app.include_router(router)

    @app.get("/healthz", include_in_schema=False)
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    if fast_completions:
        # Inside InputGuard (added after it runs first): sees only bodies within the limit.
        app.add_middleware(CompletionFastPath)
    # Ours rather than Starlette's RequestBodyLimitMiddleware: that one lets
    # the route start (auth, validation) on a declared-oversized body and
    # answers in plain text; this one refuses before the app runs, in the
    # API's error shape.
    app.add_middleware(
        InputGuard, max_bytes=settings.server.max_body_bytes, upload_paths=UPLOAD_PATHS,
        max_upload_bytes=settings.knowledge.max_upload_bytes,
    )
    return app
