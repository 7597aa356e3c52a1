"""The framework's ceiling: the least a chat endpoint on chatplane's stack can do.

    BARE_DATABASE_URL=... BARE_STUB_URL=... uvicorn bare_app:app --app-dir bench --workers N

One FastAPI route, ``POST /chats/{chat_id}/completions`` ``{"content"}``: it
calls the model with the ``openai`` client the way chatplane does (over the
client's aiohttp transport, ``client.post`` with the body as plain JSON, the
answer read with ``json.loads``; ``BARE_MODEL_CALL=create`` uses
``chat.completions.create`` and its typed response instead), then inserts two
rows (the user's message, the assistant's) in one transaction, and answers
the reply. The same libraries and drivers as chatplane (FastAPI, SQLAlchemy Core,
asyncpg or aiosqlite) and the same SQLite settings (WAL, one connection per
process, ``BEGIN IMMEDIATE``), but no authentication, no chat row, no
history (the model gets the system prompt and the new message), no turn
lock, no jobs. ``peers.py`` runs it.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime

import httpx2
import openai
from fastapi import FastAPI
from pydantic import BaseModel
from sqlalchemy import Column, DateTime, Integer, MetaData, String, Table, Text, event, insert
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

SYSTEM = "You are Ava."

metadata = MetaData()
messages = Table(
    "messages", metadata,
    Column("id", String(36), primary_key=True),
    Column("chat_id", String(64), nullable=False, index=True),
    Column("role", String(16), nullable=False),
    Column("content", Text, nullable=False),
    Column("model", String(128)),
    Column("prompt_tokens", Integer, nullable=False, default=0),
    Column("completion_tokens", Integer, nullable=False, default=0),
    Column("created_at", DateTime(timezone=True), nullable=False),
)


def engine_for(url: str) -> AsyncEngine:
    """asyncpg or aiosqlite, configured as chatplane configures them (the pool aside)."""
    if url.startswith("postgresql"):
        # As many connections as chatplane may open (20), all kept (overflow
        # connections are closed on return, and under load that meant a new
        # connection, and backend, every few requests), the most recently
        # used handed out first, as chatplane's.
        return create_async_engine(url.replace("postgresql://", "postgresql+asyncpg://", 1),
                                   pool_size=20, max_overflow=0, pool_use_lifo=True)
    engine = create_async_engine(url.replace("sqlite://", "sqlite+aiosqlite://", 1), pool_size=1, max_overflow=0,
                                 pool_timeout=60, connect_args={"timeout": 30}, pool_reset_on_return=None)

    @event.listens_for(engine.sync_engine, "connect")
    def _pragmas(dbapi_connection, _record) -> None:  # type: ignore[no-untyped-def]
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        for pragma in ("journal_mode=WAL", "synchronous=NORMAL", "busy_timeout=30000"):
            cursor.execute(f"PRAGMA {pragma}")
        cursor.close()

    @event.listens_for(engine.sync_engine, "begin")
    def _begin(conn) -> None:  # type: ignore[no-untyped-def]
        conn.exec_driver_sql("BEGIN IMMEDIATE")

    return engine


async def create_schema(url: str) -> None:
    engine = engine_for(url)
    async with engine.begin() as conn:
        await conn.run_sync(metadata.create_all)
    await engine.dispose()


class CompletionIn(BaseModel):
    content: str


class CompletionOut(BaseModel):
    id: str
    role: str
    content: str


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    app.state.engine = engine_for(os.environ["BARE_DATABASE_URL"])
    app.state.model = openai.AsyncOpenAI(base_url=os.environ["BARE_STUB_URL"], api_key="not-needed",
                                         http_client=openai.DefaultAioHttpClient())
    app.state.create = os.environ.get("BARE_MODEL_CALL", "post") == "create"
    yield
    await app.state.model.close()
    await app.state.engine.dispose()


app = FastAPI(lifespan=lifespan)


@app.post("/chats/{chat_id}/completions", response_model=CompletionOut)
async def complete(chat_id: str, body: CompletionIn) -> dict:
    asked = datetime.now(UTC)
    request = {"model": "stub",
               "messages": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": body.content}]}
    if app.state.create:
        typed = await app.state.model.chat.completions.create(**request)
        text, model, usage = typed.choices[0].message.content, typed.model, typed.usage
        prompt_tokens, completion_tokens = (usage.prompt_tokens, usage.completion_tokens) if usage else (0, 0)
    else:
        raw = await app.state.model.post("/chat/completions", body=request, cast_to=httpx2.Response)
        reply = json.loads(raw.content)
        text, model, usage = reply["choices"][0]["message"]["content"], reply["model"], reply.get("usage") or {}
        prompt_tokens, completion_tokens = usage.get("prompt_tokens", 0), usage.get("completion_tokens", 0)
    answer = {"id": str(uuid.uuid4()), "role": "assistant", "content": text or ""}
    async with app.state.engine.begin() as conn:
        await conn.execute(insert(messages), [
            {"id": str(uuid.uuid4()), "chat_id": chat_id, "role": "user", "content": body.content,
             "model": None, "prompt_tokens": 0, "completion_tokens": 0, "created_at": asked},
            {**answer, "chat_id": chat_id, "model": model, "prompt_tokens": prompt_tokens,
             "completion_tokens": completion_tokens, "created_at": datetime.now(UTC)},
        ])
    return answer


@app.get("/healthz")
async def healthz() -> dict:
    return {"status": "ok"}
