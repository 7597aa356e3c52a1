"""``TurnLocks``: one turn at a time per chat, in arrival order, across processes.

Two ``TurnLocks`` on two engines stand for two server processes: on
PostgreSQL each has its own advisory-lock connection, on SQLite both open
the same lock file (POSIX record locks are per process, so the SQLite case
of two processes is in ``test_concurrency.py``; here only one process).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
from sqlalchemy import text

from chatplane.chats.locks import TurnLocks, lock_key
from chatplane.db import create_engine
from tests.conftest import dispose_settings, fresh_settings


@pytest.fixture
def pg_settings(tmp_path: Path):  # type: ignore[no-untyped-def]
    settings = fresh_settings("postgresql", tmp_path)
    yield settings
    dispose_settings(settings)


def _with_locks(kind: str, tmp_path: Path, scenario: Callable[[TurnLocks], Awaitable[None]]) -> None:
    """Run ``scenario`` with one process's ``TurnLocks`` on ``kind``; then
    nothing may be left behind: no release pending, no queue entry."""
    settings = fresh_settings(kind, tmp_path)

    async def main() -> None:
        engine = create_engine(settings)
        locks = TurnLocks(engine, lock_file=tmp_path / "turns.lock" if kind == "sqlite" else None)
        try:
            await scenario(locks)
            await locks.settled()
            assert locks._local == {}
        finally:
            await locks.aclose()
            await engine.dispose()

    try:
        asyncio.run(main())
    finally:
        dispose_settings(settings)


@pytest.mark.parametrize("kind", ["sqlite", "postgresql"])
def test_turns_on_one_chat_run_one_at_a_time_in_arrival_order(kind: str, tmp_path: Path) -> None:
    async def scenario(locks: TurnLocks) -> None:
        ran: list[int] = []

        async def turn(i: int) -> None:
            async with locks.hold("chat_a"):
                ran.append(i)
                await asyncio.sleep(0.002)  # yield while holding: nobody may slip in
                ran.append(i)

        await asyncio.gather(*(turn(i) for i in range(20)))
        assert ran == [i for i in range(20) for _ in (0, 1)]  # whole turns, in order

    _with_locks(kind, tmp_path, scenario)


def test_another_process_waits_for_the_advisory_lock_until_it_is_let_go(pg_settings) -> None:  # type: ignore[no-untyped-def]
    async def scenario() -> None:
        engines = [create_engine(pg_settings), create_engine(pg_settings)]
        first, second = (TurnLocks(engine, lock_file=None) for engine in engines)
        try:
            order: list[str] = []
            entered = asyncio.Event()
            leave = asyncio.Event()

            async def one() -> None:
                async with first.hold("chat_b"):
                    order.append("first in")
                    entered.set()
                    await leave.wait()
                    order.append("first out")

            async def two() -> None:
                await entered.wait()
                async with second.hold("chat_b"):
                    order.append("second in")

            tasks = [asyncio.create_task(one()), asyncio.create_task(two())]
            await entered.wait()
            await asyncio.sleep(0.1)  # the second process polls meanwhile
            assert order == ["first in"]
            # Another chat is not held up by chat_b's turn.
            async with second.hold("chat_c"):
                pass
            leave.set()
            await asyncio.wait_for(asyncio.gather(*tasks), 5)
            assert order == ["first in", "first out", "second in"]
        finally:
            for locks in (first, second):
                await locks.aclose()
            for engine in engines:
                await engine.dispose()

    asyncio.run(scenario())


def test_the_advisory_lock_is_let_go_after_the_turn_and_before_the_next_one(pg_settings) -> None:  # type: ignore[no-untyped-def]
    async def held_by_anyone(engine, key_of: str) -> bool:  # type: ignore[no-untyped-def]
        async with engine.connect() as conn:
            return bool(await conn.scalar(text(
                "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted "
                "AND ((classid::bigint << 32) | objid::bigint) = (:key)::bigint"
            ), {"key": key_of}))

    async def scenario() -> None:
        engine = create_engine(pg_settings)
        locks = TurnLocks(engine, lock_file=None)
        key = lock_key("chat_d")
        try:
            async with locks.hold("chat_d"):
                assert await held_by_anyone(engine, key)
            # Let go in the background: the answer does not wait for it...
            assert locks._releasing
            # ...but the next turn on the chat in this process does.
            async with locks.hold("chat_d"):
                assert await held_by_anyone(engine, key)
            await locks.settled()
            assert not await held_by_anyone(engine, key)
        finally:
            await locks.aclose()
            await engine.dispose()

    asyncio.run(scenario())


def test_a_lost_lock_connection_is_logged_and_the_chat_stays_usable(  # type: ignore[no-untyped-def]
    pg_settings, caplog: pytest.LogCaptureFixture
) -> None:
    async def scenario() -> None:
        engine = create_engine(pg_settings)
        locks = TurnLocks(engine, lock_file=None)
        try:
            async with locks.hold("chat_e"):
                # The lock connection dies mid-turn (a restart, a network cut):
                # its advisory locks die with it, and the release cannot go out.
                pid = await locks._shared.raw.fetchval("SELECT pg_backend_pid()")
                async with engine.connect() as conn:
                    await conn.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
            await locks.settled()
            assert locks._local == {}
            async with asyncio.timeout(5):
                async with locks.hold("chat_e"):  # a new connection, the lock free
                    pass
        finally:
            await locks.aclose()
            await engine.dispose()

    with caplog.at_level(logging.WARNING, logger="chatplane.chats.locks"):
        asyncio.run(scenario())
    assert "letting go of the turn lock of chat_e failed" in caplog.text


@pytest.mark.parametrize("kind", ["sqlite", "postgresql"])
def test_a_turn_cancelled_while_it_waits_leaves_the_queue_intact(kind: str, tmp_path: Path) -> None:
    async def scenario(locks: TurnLocks) -> None:
        leave = asyncio.Event()
        ran: list[str] = []

        async def turn(name: str, wait: asyncio.Event | None = None) -> None:
            async with locks.hold("chat_f"):
                ran.append(name)
                if wait is not None:
                    await wait.wait()

        head = asyncio.create_task(turn("head", leave))
        await asyncio.sleep(0.05)
        gone = asyncio.create_task(turn("gone"))  # a client that hangs up while queued
        last = asyncio.create_task(turn("last"))
        await asyncio.sleep(0.05)
        gone.cancel()
        leave.set()
        await asyncio.wait_for(asyncio.gather(head, last), 5)
        assert gone.cancelled()
        assert ran == ["head", "last"]

    _with_locks(kind, tmp_path, scenario)
