"""``db.run_unit``: the hot path's way to the database (one hop on SQLite)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from asyncpg.exceptions import UniqueViolationError
from sqlalchemy import func, insert, select, text
from sqlalchemy.exc import IntegrityError

from chatplane.chats.locks import TurnLocks
from chatplane.chats.turn.postgres import PgStore
from chatplane.chats.turn.statements import CHATS, MESSAGES, READ_CHAT, READ_HISTORY, READ_IDEMPOTENT
from chatplane.chats.turn.store import TurnStore, open_store
from chatplane.chats.turn.write import TurnWrite
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


@asynccontextmanager
async def _store(settings: Any, engine: Any) -> AsyncIterator[TurnStore]:
    """The store a server on ``settings`` opens, with its locks."""
    lock_file = settings.sqlite_path.with_suffix(".turnlocks") if settings.is_sqlite else None
    locks = TurnLocks(engine, lock_file=lock_file)
    store = open_store(engine, locks)
    try:
        yield store
    finally:
        await store.aclose()
        await locks.aclose()
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


def test_a_turn_is_written_whole_or_not_at_all(api: Api, model: ScriptedModel) -> None:
    """The turn's write (messages, the chat's counters, the idempotent answer):
    one statement on PostgreSQL, one transaction on SQLite; when its last part
    fails, nothing of it stays."""
    chat = make_chat(api)
    model.push(Reply("first"))
    assert say(api, chat["chatId"], "hello", headers={"Idempotency-Key": "k-taken"}).status_code == 201
    before = api.get(f"/api/chats/{chat['chatId']}").json()
    seq = len(before["messages"])
    now = datetime.now(UTC)
    messages = [
        {"id": f"msg_unit_{i}", "chat_id": chat["chatId"], "seq": seq + i, "role": role, "content": role,
         "name": None, "tool_calls": None, "model": None, "prompt_tokens": 0, "completion_tokens": 0,
         "created_at": now}
        for i, role in enumerate(("user", "assistant"))
    ]
    after = {"b_chat_id": chat["chatId"], "b_count": seq + 2, "b_user_at": now, "b_agent_at": now}
    # The key is already stored for this chat: the write's last part fails.
    taken = {"chat_id": chat["chatId"], "key": "k-taken", "request_hash": "x", "response": {}, "created_at": now}

    async def write(idempotent: dict | None) -> None:
        engine = create_engine(api.backend.settings)
        try:
            async with _store(api.backend.settings, engine) as store:
                assert await store.write(TurnWrite(messages, after, None, idempotent))
        finally:
            await engine.dispose()

    with pytest.raises((IntegrityError, UniqueViolationError)):  # SQLite's through SQLAlchemy, asyncpg's own
        asyncio.run(write(taken))
    assert api.get(f"/api/chats/{chat['chatId']}").json() == before
    asyncio.run(write({**taken, "key": "k-free"}))  # the same write, whole
    written = api.get(f"/api/chats/{chat['chatId']}").json()["messages"][seq:]
    assert [m["messageId"] for m in written] == ["msg_unit_0", "msg_unit_1"]


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


def test_the_chat_a_turn_reads_under_its_lock_is_the_row_sqlalchemy_reads(api: Api, model: ScriptedModel) -> None:
    """On PostgreSQL the chat comes back as JSON from the round trip that takes
    the turn's lock (``chatplane_turn_locks``); turned back into a row it must
    be READ_CHAT's, with its times (aware UTC), floats and JSON; the stored
    answer of an Idempotency-Key as well. On SQLite the same read is a unit."""
    chat = make_chat(api, make_agent(api, make_llm(api, begin_message="Hello there")))
    model.push(Reply("sure"))
    assert say(api, chat["chatId"], "héllo", headers={"Idempotency-Key": "k-lock"}).status_code == 201
    settings = api.backend.settings

    async def both():  # type: ignore[no-untyped-def]
        engine = create_engine(settings)
        async with engine.begin() as conn:  # every kind of column filled, a whole-number float too
            await conn.execute(CHATS.update().where(CHATS.c.id == chat["chatId"]).values(
                combined_cost=2.0, user_sentiment="Positive", chat_successful=True, ended_at=AT,
                chat_cost={"combined_cost": 2.0}, current_state="warm",
            ))
        async with _store(settings, engine) as store:
            reads = []
            for key in ("k-lock", "k-none", None):
                async with store.hold(chat["chatId"], api.ws, key) as found:
                    reads.append(await store.read(found, chat["chatId"], api.ws, key, None, trust_memo=False))
            async with store.hold(chat["chatId"], api.ws + 1000, None) as found:
                elsewhere = await store.read(found, chat["chatId"], api.ws + 1000, None, None, trust_memo=False)
            async with engine.connect() as conn:
                params = {"chat_id": chat["chatId"], "workspace_id": api.ws, "key": "k-lock"}
                row = (await conn.execute(READ_CHAT, params)).one()
                earlier = (await conn.execute(READ_IDEMPOTENT, params)).one()
            return reads, elsewhere, row, earlier
            await engine.dispose()

    (replay, fresh, plain), elsewhere, row, earlier = asyncio.run(both())
    for read in (replay, fresh, plain):
        assert read.chat._fields == row._fields
        assert tuple(read.chat) == tuple(row)
    assert isinstance(replay.chat.combined_cost, float) and replay.chat.ended_at == AT
    assert replay.chat.started_at.tzinfo is not None and replay.chat.llm_config["begin_message"] == "Hello there"
    assert tuple(replay.earlier) == tuple(earlier) and replay.earlier.response["messages"][0]["content"] == "sure"
    assert fresh.earlier is None and plain.earlier is None
    assert elsewhere.chat is None  # another workspace's chat is not found


@pytest.mark.parametrize("backend", ["postgresql"], indirect=True)  # SQLite writes a turn in a transaction
def test_turns_of_several_chats_are_written_in_one_statement_and_fail_alone(api: Api) -> None:
    """PostgreSQL: the writes waiting together go out as one statement (each
    chat's counters, a turn's tool changes, another's idempotent answer); when
    that statement fails, each turn is written alone and only the one at
    fault fails."""
    chats = [make_chat(api)["chatId"] for _ in range(3)]
    now = datetime.now(UTC)

    def turn(chat_id: str, seq: int, *, tools: bool = False, key: str | None = None) -> TurnWrite:
        messages = [
            {"id": f"msg_{chat_id}_{seq + i}", "chat_id": chat_id, "seq": seq + i, "role": role, "content": role,
             "name": None, "tool_calls": None, "model": None, "prompt_tokens": 0, "completion_tokens": 0,
             "created_at": now}
            for i, role in enumerate(("user", "assistant"))
        ]
        after = {"b_chat_id": chat_id, "b_count": seq + 2, "b_user_at": now, "b_agent_at": now}
        return TurnWrite(
            messages, after,
            {"b_state": "second", "b_collected": {"city": "Oslo"}} if tools else None,
            {"chat_id": chat_id, "key": key, "request_hash": "h", "response": {"messages": []}, "created_at": now}
            if key else None,
        )

    async def write(turns: list[TurnWrite]) -> tuple[list[int], list[BaseException | None]]:
        engine = create_engine(api.backend.settings)
        store = PgStore(engine, TurnLocks(engine, lock_file=None))
        writes = store.writes
        sent: list[int] = []
        send = writes.send

        async def counting(batch):  # type: ignore[no-untyped-def]
            sent.append(len(batch))
            return await send(batch)

        writes.send = counting
        try:
            results = await asyncio.gather(*(store.write(t) for t in turns), return_exceptions=True)
            results = list(results)
        finally:
            await store.aclose()
            await store.locks.aclose()
        try:
            # The writes' connection, with its planner settings, is not given
            # back to the pool (which hands out the last connection returned).
            async with engine.connect() as conn:
                assert (await conn.execute(text("SHOW enable_seqscan"))).scalar() == "on"
            return sent, results
        finally:
            await engine.dispose()

    sent, results = asyncio.run(write([turn(chats[0], 0), turn(chats[1], 0, tools=True), turn(chats[2], 0, key="k")]))
    assert sent == [3] and results == [True, True, True]
    got = [api.get(f"/api/chats/{chat_id}").json() for chat_id in chats]
    assert [len(chat["messages"]) for chat in got] == [2, 2, 2]
    assert [chat["collectedDynamicVariables"] for chat in got] == [{}, {"city": "Oslo"}, {}]

    async def state_and_key() -> tuple[list[Any], Any]:
        engine = create_engine(api.backend.settings)
        try:
            async with engine.connect() as conn:
                states = (await conn.execute(select(CHATS.c.current_state).where(CHATS.c.id.in_(chats))
                                             .order_by(CHATS.c.id))).scalars().all()
                key = (await conn.execute(READ_IDEMPOTENT, {"chat_id": chats[2], "key": "k"})).one()
                return list(states), key
        finally:
            await engine.dispose()

    states, key = asyncio.run(state_and_key())
    assert sorted(states, key=str) == sorted([None, "second", None], key=str) and key.request_hash == "h"

    # The first chat's turn takes seqs that are taken: the batch fails, then each goes alone.
    sent, results = asyncio.run(write([turn(chats[0], 0), turn(chats[1], 2), turn(chats[2], 2)]))
    assert sent == [3, 1, 1, 1]
    assert isinstance(results[0], UniqueViolationError) and results[1:] == [True, True]
    assert [len(api.get(f"/api/chats/{chat_id}").json()["messages"]) for chat_id in chats] == [2, 4, 4]

    # A turn with a guard is written only if its agent's and LLM's
    # configurations are as it read them (updated_at); the others are not held up.
    async def read_rows() -> list[Any]:
        engine = create_engine(api.backend.settings)
        try:
            async with engine.connect() as conn:
                return [(await conn.execute(READ_CHAT, {"chat_id": chat_id, "workspace_id": api.ws})).one()
                        for chat_id in chats]
        finally:
            await engine.dispose()

    rows = asyncio.run(read_rows())
    edited_llm, edited_agent, unchanged = turn(chats[0], 2), turn(chats[1], 4), turn(chats[2], 4)
    edited_llm.guard = (rows[0].agent_updated_at, rows[0].llm_updated_at - timedelta(microseconds=1))
    edited_agent.guard = (rows[1].agent_updated_at + timedelta(seconds=1), rows[1].llm_updated_at)
    unchanged.guard = (rows[2].agent_updated_at, rows[2].llm_updated_at)
    sent, results = asyncio.run(write([edited_llm, edited_agent, unchanged]))
    assert sent == [3] and results == [False, False, True]
    assert [len(api.get(f"/api/chats/{chat_id}").json()["messages"]) for chat_id in chats] == [2, 4, 6]


@pytest.mark.parametrize("backend", ["postgresql"], indirect=True)
def test_a_cancelled_turn_waits_for_its_write_before_it_lets_go(api: Api) -> None:
    """A turn cancelled while its write is queued or on its way (a shutdown)
    does not return, and so does not let go of its chat's lock, before the
    write has landed: the next turn on the chat reads it."""
    chat_id = make_chat(api)["chatId"]
    now = datetime.now(UTC)
    messages = [
        {"id": f"msg_cancel_{i}", "chat_id": chat_id, "seq": i, "role": role, "content": role, "name": None,
         "tool_calls": None, "model": None, "prompt_tokens": 0, "completion_tokens": 0, "created_at": now}
        for i, role in enumerate(("user", "assistant"))
    ]
    turn = TurnWrite(messages, {"b_chat_id": chat_id, "b_count": 2, "b_user_at": now, "b_agent_at": now})

    async def scenario() -> list[str]:
        engine = create_engine(api.backend.settings)
        store = PgStore(engine, TurnLocks(engine, lock_file=None))
        writes = store.writes
        go = asyncio.Event()
        events: list[str] = []
        send = writes.send

        async def slow(batch):  # type: ignore[no-untyped-def]
            await go.wait()
            written = await send(batch)
            events.append("written")
            return written

        writes.send = slow
        try:
            task = asyncio.create_task(store.write(turn))
            await asyncio.sleep(0.05)
            task.cancel()
            await asyncio.sleep(0.05)
            events.append("still waiting" if not task.done() else "returned early")
            go.set()
            with pytest.raises(asyncio.CancelledError):
                await task
            events.append("returned")
            return events
        finally:
            await store.aclose()
            await store.locks.aclose()
            await engine.dispose()

    assert asyncio.run(scenario()) == ["still waiting", "written", "returned"]
    assert len(api.get(f"/api/chats/{chat_id}").json()["messages"]) == 2


@pytest.mark.parametrize("backend", ["postgresql"], indirect=True)
def test_the_writes_connection_closed_by_the_server_is_replaced_before_the_next_turn(api: Api) -> None:
    """The connection the turns are written on is the process's own: closed by
    PostgreSQL (a restart, an administrator), the next turn writes on a new
    one, and the chat goes on."""
    server = api.backend.server
    chat_id = make_chat(api)["chatId"]
    assert say(api, chat_id, "first").status_code == 201
    writes = server.app.state.turns.store

    async def backend_pid(_services):  # type: ignore[no-untyped-def]
        return await writes.conn.raw.fetchval("SELECT pg_backend_pid()")

    async def terminate(pid: int) -> None:
        engine = create_engine(api.backend.settings)
        try:
            async with engine.connect() as conn:
                await conn.execute(text("SELECT pg_terminate_backend(:pid, 5000)"), {"pid": pid})
        finally:
            await engine.dispose()

    old = server.call(backend_pid)
    asyncio.run(terminate(old))

    async def seen_closed(_services):  # type: ignore[no-untyped-def]
        async with asyncio.timeout(5):  # the server's loop sees the connection closed
            while writes.conn.is_open():
                await asyncio.sleep(0.01)

    server.call(seen_closed)
    second = say(api, chat_id, "second")
    assert second.status_code == 201, second.text
    assert server.call(backend_pid) != old
    assert [m["content"] for m in api.get(f"/api/chats/{chat_id}").json()["messages"]] == ["first", "ok", "second", "ok"]
