"""Test harness: every test runs on a real SQLite file and on real PostgreSQL.

A session-scoped ``backend`` (parametrised sqlite/postgresql) makes a fresh
database, migrates it with the real Alembic history and serves the real app
with uvicorn on a loopback socket. Tests talk HTTP to it. Each test gets its
own workspace and key (``api``), so tests never see each other's rows.
"""

from __future__ import annotations

import asyncio
import os
import socket
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from chatplane import auth
from chatplane.app import create_app
from chatplane.chats import locks as locks_module
from chatplane.cli import run_in_transaction
from chatplane.db import migrate
from chatplane.http import uvicorn_options
from chatplane.settings import ModelPrice, Provider, Settings
from chatplane.testing import ScriptedModel

PG_ADMIN_URL = os.environ.get(
    "CHATPLANE_TEST_PG_URL", "postgresql+asyncpg://postgres@127.0.0.1:5432/test"
)
BACKENDS = ["sqlite", "postgresql"]


async def _pg_admin(sql: str) -> None:
    engine = create_async_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    try:
        async with engine.connect() as conn:
            await conn.execute(text(sql))
    finally:
        await engine.dispose()


def create_pg_database() -> str:
    """A new, empty PostgreSQL database; returns its URL."""
    name = f"chatplane_test_{uuid.uuid4().hex[:12]}"
    asyncio.run(_pg_admin(f'CREATE DATABASE "{name}"'))
    return PG_ADMIN_URL.rsplit("/", 1)[0] + "/" + name


def drop_pg_database(url: str) -> None:
    name = url.rsplit("/", 1)[1]
    asyncio.run(_pg_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


SCRIPTED = "scripted-model"  # retried like a real provider
SCRIPTED_NO_RETRY = "scripted-no-retry"  # fails fast: one try, short timeout


def scripted_providers(model: ScriptedModel) -> list[Provider]:
    return [
        Provider(
            name="scripted", base_url=model.base_url, timeout_s=5, max_retries=2,
            models=[ModelPrice(name=SCRIPTED, input_per_million=1.0, output_per_million=2.0)],
        ),
        Provider(
            name="scripted-fast", base_url=model.base_url, timeout_s=0.5, max_retries=0,
            models=[ModelPrice(name=SCRIPTED_NO_RETRY, upstream_name=SCRIPTED)],
        ),
    ]


def fresh_settings(kind: str, tmp: Path, **overrides: Any) -> Settings:
    if kind == "sqlite":
        return Settings(data_dir=tmp, **overrides)
    return Settings(data_dir=tmp, database_url=create_pg_database(), **overrides)


@pytest.fixture(scope="session")
def scripted_model() -> Iterator[ScriptedModel]:
    model = ScriptedModel().start_in_thread()
    yield model
    model.stop()


@pytest.fixture
def model(scripted_model: ScriptedModel) -> Iterator[ScriptedModel]:
    """The scripted model endpoint, with an empty script for this test."""
    scripted_model.reset()
    yield scripted_model
    scripted_model.reset()


def dispose_settings(settings: Settings) -> None:
    if not settings.is_sqlite:
        drop_pg_database(settings.resolved_database_url)


class ServerThread:
    """The real app under uvicorn on a loopback socket, in a thread."""

    def __init__(self, settings: Settings, **app_options: Any) -> None:
        # IPPROTO_TCP, not 0: asyncio turns TCP_NODELAY on only for sockets that
        # say so, and without it every response waits ~40 ms for a delayed ACK.
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.app = create_app(settings, **app_options)
        config = uvicorn.Config(self.app, log_level="warning", lifespan="on", **uvicorn_options(settings.server))
        self.server = uvicorn.Server(config)
        self.loop: asyncio.AbstractEventLoop | None = None

        async def serve() -> None:
            self.loop = asyncio.get_running_loop()
            await self.server.serve(sockets=[self.sock])

        self.thread = threading.Thread(target=lambda: asyncio.run(serve()), daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> ServerThread:
        self.thread.start()
        for _ in range(500):
            if self.server.started:
                return self
            if not self.thread.is_alive():
                break
            threading.Event().wait(0.01)
        raise RuntimeError("test server did not start")

    def call(self, make_coro):  # type: ignore[no-untyped-def]
        """Run ``make_coro(services)`` on the server's own loop and wait for it."""
        assert self.loop is not None
        future = asyncio.run_coroutine_threadsafe(make_coro(self.app.state.services), self.loop)
        return future.result(60)

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)
        self.sock.close()


def hold_locks_over(server: ServerThread, monkeypatch: pytest.MonkeyPatch) -> None:
    """PostgreSQL: ``server`` lets go of a chat's turn lock a second after a
    turn (not 2 ms), and a turn on the chat meanwhile takes it back with what
    the last turn left (``locks.HeldOver``), however slow the machine."""
    shared = server.app.state.turns.locks.shared
    if hasattr(shared, "release_wait_s"):
        monkeypatch.setattr(shared, "release_wait_s", 1.0)
        monkeypatch.setattr(locks_module, "HOLD_OVER_S", 60.0)


@dataclass
class Backend:
    kind: str
    settings: Settings
    url: str
    server: ServerThread

    def run(self, work):  # type: ignore[no-untyped-def]
        """Run ``work(session)`` in one committed transaction on this database."""
        return run_in_transaction(self.settings, work)


@pytest.fixture(scope="session", params=BACKENDS)
def backend(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, scripted_model: ScriptedModel
) -> Iterator[Backend]:
    with served(request.param, tmp_path_factory.mktemp(request.param), providers=scripted_providers(scripted_model)) as b:
        yield b


@contextmanager
def served(kind: str, tmp: Path, **overrides: Any) -> Iterator[Backend]:
    """A fresh, migrated database of ``kind`` served by the real app; settings
    overrides for test files that need their own (fast retries, Twilio, …)."""
    settings = fresh_settings(kind, tmp, **overrides)
    try:
        migrate(settings)
        with ServerThread(settings) as server:
            yield Backend(kind, settings, server.url, server)
    finally:
        dispose_settings(settings)


class Api:
    """An HTTP client for one workspace, with its key."""

    def __init__(self, backend: Backend, workspace_id: int, key: str) -> None:
        self.backend = backend
        self.ws = workspace_id
        self.key = key
        self.http = httpx.Client(
            base_url=backend.url, headers={"Authorization": f"Bearer {key}"}, timeout=30
        )

    def get(self, path: str, **params: Any) -> httpx.Response:
        params.setdefault("workspaceId", self.ws)
        return self.http.get(path, params=params)

    def delete(self, path: str, **params: Any) -> httpx.Response:
        params.setdefault("workspaceId", self.ws)
        return self.http.delete(path, params=params)

    def post(self, path: str, body: dict[str, Any] | None = None, **kw: Any) -> httpx.Response:
        return self.http.post(path, json={"workspaceId": self.ws, **(body or {})}, **kw)

    def patch(self, path: str, body: dict[str, Any] | None = None, **kw: Any) -> httpx.Response:
        return self.http.patch(path, json={"workspaceId": self.ws, **(body or {})}, **kw)

    def close(self) -> None:
        self.http.close()


def make_api(backend: Backend, name: str = "test") -> Api:
    async def work(session):  # type: ignore[no-untyped-def]
        workspace = await auth.create_workspace(session, name=name)
        _, secret = await auth.create_key(session, workspace_ids=[workspace.id], name=name)
        return workspace.id, secret

    workspace_id, secret = backend.run(work)
    return Api(backend, workspace_id, secret)


@pytest.fixture
def api(backend: Backend) -> Iterator[Api]:
    with tenant(backend, "mine") as client:
        yield client


@pytest.fixture
def other(backend: Backend) -> Iterator[Api]:
    """A second tenant: its key and ids must never reach ``api``'s data."""
    with tenant(backend, "theirs") as client:
        yield client


@contextmanager
def tenant(backend: Backend, name: str) -> Iterator[Api]:
    """A new workspace with its own key on ``backend``, as an HTTP client."""
    client = make_api(backend, name)
    try:
        yield client
    finally:
        client.close()


def assert_error(response: httpx.Response, status: int, code: str | None = None, field: str | None = None) -> dict:
    """The one error shape: status, machine code, and the field at fault when given."""
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"}, body
    error = body["error"]
    assert isinstance(error["message"], str) and error["message"], body
    if code is not None:
        assert error["code"] == code, body
    if field is not None:
        assert error.get("field") == field, body
    return error
