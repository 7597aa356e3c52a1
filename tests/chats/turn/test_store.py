"""The ``TurnStore`` protocol, once against both stores (``PgStore`` and
``SqliteStore``, as ``open_store`` picks them): what a turn reads under its
lock, a turn written whole or not at all (alone or in the caller's
transaction), a chat gone meanwhile, and what the next holder of a chat's
lock starts from."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Any

import pytest
from asyncpg.exceptions import UniqueViolationError
from sqlalchemy.exc import IntegrityError

from chatplane.chats.locks import TurnLocks
from chatplane.chats.messages import NewMessage, message_rows
from chatplane.chats.turn.statements import CHATS, READ_CHAT, READ_IDEMPOTENT
from chatplane.chats.turn.store import TurnStore, open_store
from chatplane.chats.turn.write import TurnWrite
from chatplane.db import create_engine
from chatplane.errors import AppError
from chatplane.testing import Reply
from tests.chat_helpers import make_agent, make_chat, make_llm, say
from tests.conftest import Api, ScriptedModel


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
        try:
            return await read_all(engine)
        finally:
            await engine.dispose()

    async def read_all(engine):  # type: ignore[no-untyped-def]
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

    (replay, fresh, plain), elsewhere, row, earlier = asyncio.run(both())
    for read in (replay, fresh, plain):
        assert read.chat._fields == row._fields
        assert tuple(read.chat) == tuple(row)
    assert isinstance(replay.chat.combined_cost, float) and replay.chat.ended_at == AT
    assert replay.chat.started_at.tzinfo is not None and replay.chat.llm_config["begin_message"] == "Hello there"
    assert tuple(replay.earlier) == tuple(earlier) and replay.earlier.response["messages"][0]["content"] == "sure"
    assert fresh.earlier is None and plain.earlier is None
    assert elsewhere.chat is None  # another workspace's chat is not found



def _turn(chat_id: str, message_count: int, text: str) -> TurnWrite:
    """A turn of a user message and an answer, as the engine builds it."""
    now = datetime.now(UTC)
    rows, counters = message_rows(chat_id, message_count, [NewMessage("user", text, now), NewMessage("assistant", text, now)])
    after = {"b_chat_id": chat_id, "b_count": counters.message_count, "b_user_at": now, "b_agent_at": now}
    return TurnWrite(rows, after)


def _contents(api: Api, chat_id: str) -> list[str]:
    return [m["content"] for m in api.get(f"/api/chats/{chat_id}").json()["messages"]]


def test_a_turn_written_in_the_callers_transaction_lands_with_it_or_not_at_all(api: Api) -> None:
    """``write_in``: the turn's writes join the caller's transaction (the ORM's
    rows of webhooks and the end of a chat): rolled back with it, committed with it."""
    chat_id = make_chat(api)["chatId"]

    class Undone(Exception):
        pass

    async def scenario() -> None:
        engine = create_engine(api.backend.settings)
        try:
            async with _store(api.backend.settings, engine) as store:
                with pytest.raises(Undone):
                    async with engine.begin() as conn:
                        await store.write_in(conn, _turn(chat_id, 0, "rolled back"))
                        raise Undone
                async with engine.begin() as conn:
                    await store.write_in(conn, _turn(chat_id, 0, "committed"))
        finally:
            await engine.dispose()

    asyncio.run(scenario())
    assert _contents(api, chat_id) == ["committed", "committed"]


def test_a_turn_whose_chat_is_gone_writes_nothing_and_says_so(api: Api) -> None:
    """The chat was deleted (with its workspace) while its turn ran: ``write``
    answers False, ``write_in`` raises the chat's 404, and other chats' turns
    written with it are not held up."""
    gone, kept = make_chat(api)["chatId"], make_chat(api)["chatId"]

    async def scenario() -> tuple[list[bool], str]:
        engine = create_engine(api.backend.settings)
        try:
            async with engine.begin() as conn:
                await conn.execute(CHATS.delete().where(CHATS.c.id == gone))
            async with _store(api.backend.settings, engine) as store:
                written = list(await asyncio.gather(store.write(_turn(gone, 0, "lost")),
                                                    store.write(_turn(kept, 0, "kept"))))
                with pytest.raises(AppError) as raised:
                    async with engine.begin() as conn:
                        await store.write_in(conn, _turn(gone, 0, "lost"))
                return written, raised.value.code
        finally:
            await engine.dispose()

    written, code = asyncio.run(scenario())
    assert written == [False, True] and code == "chat_not_found"
    assert _contents(api, kept) == ["kept", "kept"]
    assert api.get(f"/api/chats/{gone}").status_code == 404


def test_the_next_holder_of_a_chat_reads_it_as_the_last_turn_left_it(api: Api) -> None:
    """``keep`` then the next ``hold``/``read`` (may start from the memo):
    however a store serves it (PostgreSQL: the memo of a lock taken back;
    SQLite: a read), the next turn sees the counters the last one wrote."""
    chat_id = make_chat(api)["chatId"]
    settings = api.backend.settings

    async def scenario() -> list[int]:
        engine = create_engine(settings)
        seen = []
        try:
            async with _store(settings, engine) as store:
                for text in ("one", "two", "three"):
                    async with store.hold(chat_id, api.ws, None) as found:
                        read = await store.read(found, chat_id, api.ws, None, None, trust_memo=True)
                        count = read.chat.message_count
                        seen.append(count)
                        assert await store.write(_turn(chat_id, count, text))
                        store.keep(chat_id, read.chat, message_count=count + 2)
        finally:
            await engine.dispose()
        return seen

    assert asyncio.run(scenario()) == [0, 2, 4]
    assert _contents(api, chat_id) == ["one", "one", "two", "two", "three", "three"]
