"""``db.run_unit``: the hot path's way to the database (one hop on SQLite, straight to asyncpg on PostgreSQL)."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import func, insert, select, text

from chatplane.chats.turn.statements import (
    MESSAGES,
    READ_CHAT,
    READ_HISTORY,
    READ_IDEMPOTENT,
)
from chatplane.db import create_engine, migrate, run_unit
from chatplane.models import Workspace
from chatplane.testing import Reply
from tests.chat_helpers import make_agent, make_chat, make_llm, say
from tests.conftest import (
    BACKENDS,
    Api,
    ScriptedModel,
    dispose_settings,
    fresh_settings,
)

WORKSPACES = Workspace.__table__


AT = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)


@pytest.fixture(params=BACKENDS)
def engine_settings(request: pytest.FixtureRequest, tmp_path: Path):  # type: ignore[no-untyped-def]
    settings = fresh_settings(request.param, tmp_path)
    migrate(settings)
    yield settings
    dispose_settings(settings)


def _count(conn) -> int:  # type: ignore[no-untyped-def]
    return conn.scalar(select(func.count()).select_from(WORKSPACES).where(WORKSPACES.c.name.like("unit-%")))


def test_a_write_commits_whole_or_not_at_all_and_types_round_trip(engine_settings) -> None:  # type: ignore[no-untyped-def]
    async def scenario() -> None:
        engine = create_engine(engine_settings)
        try:
            def write(conn) -> int:  # type: ignore[no-untyped-def]
                conn.execute(insert(WORKSPACES), [{"name": "unit-a", "created_at": AT}, {"name": "unit-b", "created_at": AT}])
                return _count(conn)

            assert await run_unit(engine, write, write=True) == 2

            def half_then_fail(conn) -> None:  # type: ignore[no-untyped-def]
                conn.execute(insert(WORKSPACES), {"name": "unit-c", "created_at": AT})
                raise RuntimeError("the second half failed")

            with pytest.raises(RuntimeError, match="second half"):
                await run_unit(engine, half_then_fail, write=True)
            assert await run_unit(engine, _count, write=False) == 2  # unit-c rolled back
            # The UTC column comes back aware and equal, as through the async engine.
            stored = await run_unit(
                engine, lambda conn: conn.scalar(select(WORKSPACES.c.created_at).where(WORKSPACES.c.name == "unit-a")),
                write=False,
            )
            assert stored == AT and stored.tzinfo is not None
            # The async engine sees the same rows (same database, same connection on SQLite).
            async with engine.connect() as conn:
                assert await conn.run_sync(_count) == 2
        finally:
            await engine.dispose()

    asyncio.run(scenario())


def test_a_read_takes_no_write_lock(engine_settings) -> None:  # type: ignore[no-untyped-def]
    """A read unit goes ahead while another connection holds the write lock
    (SQLite: a read that began IMMEDIATE would wait out busy_timeout)."""
    async def scenario() -> None:
        writer, reader = create_engine(engine_settings), create_engine(engine_settings)
        try:
            async with writer.begin() as conn:
                await conn.execute(insert(WORKSPACES), {"name": "unit-held", "created_at": AT})
                count = await asyncio.wait_for(run_unit(reader, _count, write=False), timeout=5)
                assert count == 0  # not yet committed
            assert await run_unit(reader, _count, write=False) == 1
        finally:
            await writer.dispose()
            await reader.dispose()

    asyncio.run(scenario())


def test_units_one_after_another_share_the_one_sqlite_connection(tmp_path: Path) -> None:
    """Many concurrent units on one SQLite engine (one connection) queue for
    it: none interleaves with another's transaction."""
    settings = fresh_settings("sqlite", tmp_path)
    migrate(settings)

    async def scenario() -> int:
        engine = create_engine(settings)
        try:
            def write(i: int):  # type: ignore[no-untyped-def]
                def unit(conn) -> None:  # type: ignore[no-untyped-def]
                    conn.execute(insert(WORKSPACES), {"name": f"unit-{i}", "created_at": AT})
                    assert conn.scalar(text("SELECT count(*) FROM workspaces WHERE name = :n"), {"n": f"unit-{i}"}) == 1
                return unit

            await asyncio.gather(*(run_unit(engine, write(i), write=True) for i in range(50)))
            return await run_unit(engine, _count, write=False)
        finally:
            await engine.dispose()

    assert asyncio.run(scenario()) == 50


def test_a_read_unit_reads_what_sqlalchemy_reads(api: Api, model: ScriptedModel) -> None:
    """On PostgreSQL a read unit's statements go straight to asyncpg: the rows
    must be the ones SQLAlchemy gives (names, JSON, aware UTC times)."""
    chat = make_chat(api, make_agent(api, make_llm(api, begin_message="Hello there")))
    model.push(Reply("sure"))
    assert say(api, chat["chatId"], "héllo", headers={"Idempotency-Key": "k-read"}).status_code == 201
    params = {"chat_id": chat["chatId"], "workspace_id": api.ws, "from_seq": 0, "key": "k-read"}

    def read(conn):  # type: ignore[no-untyped-def]
        return (
            conn.execute(READ_CHAT, params).one_or_none(),
            conn.execute(READ_HISTORY, params).all(),
            conn.execute(READ_IDEMPOTENT, params).one(),
            conn.execute(READ_IDEMPOTENT, {**params, "key": "k-none"}).one_or_none(),
            conn.scalar(select(func.count()).select_from(MESSAGES).where(MESSAGES.c.chat_id == chat["chatId"])),
        )

    async def both():  # type: ignore[no-untyped-def]
        engine = create_engine(api.backend.settings)
        try:
            unit = await run_unit(engine, read, write=False)
            async with engine.connect() as conn:
                return unit, await conn.run_sync(read)
        finally:
            await engine.dispose()

    unit, through_sqlalchemy = asyncio.run(both())
    chat_row, history, answer, missing, count = unit
    assert chat_row._fields == through_sqlalchemy[0]._fields
    assert tuple(chat_row) == tuple(through_sqlalchemy[0])
    assert chat_row.started_at.tzinfo is not None and chat_row.llm_config["begin_message"] == "Hello there"
    assert [tuple(r) for r in history] == [tuple(r) for r in through_sqlalchemy[1]]
    assert [r.content for r in history] == ["Hello there", "héllo", "sure"]
    assert tuple(answer) == tuple(through_sqlalchemy[2]) and answer.response["messages"][0]["content"] == "sure"
    assert missing is None and count == 3 == through_sqlalchemy[4]


def test_a_read_unit_on_a_dead_postgresql_connection_fails_once(tmp_path: Path) -> None:
    """A pooled connection whose backend went away (a restart, a cut) fails the
    read that finds it, and is not handed out again."""
    settings = fresh_settings("postgresql", tmp_path)  # used one unit at a time: one connection

    async def scenario() -> None:
        engine, other = create_engine(settings), create_engine(settings)
        pid = text("SELECT pg_backend_pid()")
        try:
            first = await run_unit(engine, lambda conn: conn.scalar(pid), write=False)
            async with other.connect() as conn:
                await conn.execute(text("SELECT pg_terminate_backend(:pid, 5000)"), {"pid": first})
            with pytest.raises(Exception):  # noqa: B017, PT011 - asyncpg's own, whichever it is
                await run_unit(engine, lambda conn: conn.scalar(pid), write=False)
            second = await run_unit(engine, lambda conn: conn.scalar(pid), write=False)
            assert second != first
        finally:
            await engine.dispose()
            await other.dispose()

    try:
        asyncio.run(scenario())
    finally:
        dispose_settings(settings)

