"""``PgStore``, PostgreSQL's own: the turns of several chats in one statement,
the alone-on-failure fallback, a cancelled turn's write, the writes' own
connection."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from asyncpg.exceptions import UniqueViolationError
from sqlalchemy import select, text

from chatplane.chats.locks import TurnLocks
from chatplane.chats.turn.postgres import PgStore
from chatplane.chats.turn.statements import (
    CHATS,
    READ_CHAT,
    READ_IDEMPOTENT,
)
from chatplane.chats.turn.write import TurnWrite
from chatplane.db import create_engine
from tests.chat_helpers import make_chat, say
from tests.conftest import (
    Api,
)


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
