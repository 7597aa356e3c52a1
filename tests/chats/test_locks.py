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

from chatplane.chats import locks as locks_module
from chatplane.chats.locks import ChatRead, HeldOver, TurnLocks, lock_key
from chatplane.db import create_engine, migrate
from tests.conftest import dispose_settings, fresh_settings


@pytest.fixture
def pg_settings(tmp_path: Path):  # type: ignore[no-untyped-def]
    settings = fresh_settings("postgresql", tmp_path)
    migrate(settings)  # the locks are taken by a function of the schema's
    yield settings
    dispose_settings(settings)


def _with_locks(kind: str, tmp_path: Path, scenario: Callable[[TurnLocks], Awaitable[None]]) -> None:
    """Run ``scenario`` with one process's ``TurnLocks`` on ``kind``; then
    nothing may be left behind: no release pending, no queue entry."""
    settings = fresh_settings(kind, tmp_path)
    migrate(settings)

    async def main() -> None:
        engine = create_engine(settings)
        locks = TurnLocks(engine, lock_file=tmp_path / "turns.lock" if kind == "sqlite" else None)
        try:
            await scenario(locks)
            await locks.settled()
            assert locks.busy_chats() == []
        finally:
            await locks.aclose()
            await engine.dispose()

    try:
        asyncio.run(main())
    finally:
        dispose_settings(settings)


def _in_processes(settings, count: int, scenario) -> None:  # type: ignore[no-untyped-def]
    """Run ``scenario(engines, locks)`` with ``count`` processes' engines and
    ``TurnLocks`` on PostgreSQL (each its own advisory-lock connection)."""
    async def main() -> None:
        engines = [create_engine(settings) for _ in range(count)]
        locks = [TurnLocks(engine, lock_file=None) for engine in engines]
        try:
            await scenario(engines, locks)
        finally:
            for each in locks:
                await each.aclose()
            for engine in engines:
                await engine.dispose()

    asyncio.run(main())


async def _seen_closed(locks: TurnLocks) -> None:
    """Until the process has seen its lock connection closed by the server."""
    async with asyncio.timeout(5):
        while locks.shared.conn.is_open():
            await asyncio.sleep(0.01)


def _statements(locks: TurnLocks) -> list[tuple[int, int]]:
    """(releases, acquisitions) of each lock statement ``locks`` sends from now on."""
    sent: list[tuple[int, int]] = []
    send = locks.shared.round_trip

    async def counting(releases, asked):  # type: ignore[no-untyped-def]
        sent.append((len(releases), len(asked)))
        return await send(releases, asked)

    locks.shared.round_trip = counting
    return sent


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
    async def scenario(engines, locks) -> None:  # type: ignore[no-untyped-def]
        first, second = locks
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

    _in_processes(pg_settings, 2, scenario)


async def _held_by_anyone(engine, chat_id: str) -> int:  # type: ignore[no-untyped-def]
    """How many times the chat's advisory lock is held (PostgreSQL counts a session's holds)."""
    async with engine.connect() as conn:
        return int(await conn.scalar(text(
            "SELECT coalesce(sum(1), 0) FROM pg_locks WHERE locktype = 'advisory' AND granted "
            "AND ((classid::bigint << 32) | objid::bigint) = (:key)::bigint"
        ), {"key": lock_key(chat_id)}))


def test_the_advisory_lock_is_let_go_after_the_turn_without_holding_up_the_next(pg_settings) -> None:  # type: ignore[no-untyped-def]
    async def scenario(engines, both) -> None:  # type: ignore[no-untyped-def]
        locks, other = both
        async with locks.hold("chat_d"):
            assert await _held_by_anyone(engines[0], "chat_d") == 1
        # Let go in the background: the answer does not wait for it, nor
        # does the process's next turn on the chat (the lock is held twice
        # for a moment, and let go twice).
        async with locks.hold("chat_d"):
            await locks.settled()
            assert await _held_by_anyone(engines[0], "chat_d") == 1
            got, _ = await asyncio.wait_for(other.shared.try_acquire(lock_key("chat_d")), 5)
            assert not got  # another process does not get it meanwhile
        await locks.settled()
        assert await _held_by_anyone(engines[0], "chat_d") == 0
        async with asyncio.timeout(5), other.hold("chat_d"):  # another process gets it now
            pass

    _in_processes(pg_settings, 2, scenario)


def test_many_turns_share_round_trips_and_each_reads_its_own_chat_under_its_lock(pg_settings) -> None:  # type: ignore[no-untyped-def]
    async def scenario(engines, both) -> None:  # type: ignore[no-untyped-def]
        (engine,), (locks,) = engines, both
        sent = _statements(locks)

        async def turn(i: int) -> None:
            # No such chats: each finds nothing (its own answer), under its own lock.
            async with locks.hold(f"chat_{i}", ChatRead(f"chat_{i}", 1, None)) as found:
                assert found["got"] and found["chat"] is None
                assert await _held_by_anyone(engine, f"chat_{i}") == 1

        await asyncio.gather(*(turn(i) for i in range(30)))
        await locks.settled()
        asked = [n for _, n in sent]
        assert sum(asked) == 30 and len(asked) < 30  # batched
        assert all([await _held_by_anyone(engine, f"chat_{i}") == 0 for i in range(30)])

    _in_processes(pg_settings, 1, scenario)


@pytest.mark.parametrize("noticed", [True, False])
def test_a_lost_lock_connection_is_logged_and_the_chat_stays_usable(  # type: ignore[no-untyped-def]
    pg_settings, caplog: pytest.LogCaptureFixture, noticed: bool
) -> None:
    """The lock connection dies mid-turn (a restart, a network cut): its
    advisory locks die with it. Seen closed before the release goes out, the
    release is dropped (the next connection may hold the key anew); not seen
    yet, its statement fails. Either way: logged, and the chat usable."""
    async def scenario(engines, both) -> None:  # type: ignore[no-untyped-def]
        (engine,), (locks,) = engines, both
        sent = _statements(locks)
        async with locks.hold("chat_e"):
            raw = locks.shared.conn.raw
            pid = await raw.fetchval("SELECT pg_backend_pid()")
            if not noticed:  # the process reads nothing from the dead connection until it sends
                raw._transport.pause_reading()
            async with engine.connect() as conn:
                await conn.execute(text("SELECT pg_terminate_backend(:pid, 5000)"), {"pid": pid})
            if noticed:
                await _seen_closed(locks)
        settling = asyncio.create_task(locks.settled())
        if not noticed:
            async with asyncio.timeout(5):  # the release is sent on the dead connection
                while len(sent) < 2:
                    await asyncio.sleep(0.01)
            await asyncio.sleep(0.05)
            assert not raw.is_closed()
            raw._transport.resume_reading()
        await settling
        assert sent[1:] == [(1, 0)]
        if noticed:  # a new connection, the release not on it
            assert locks.shared.conn.generation == 2 and locks.shared.conn.is_open()
            assert "its connection was lost" in caplog.text
        else:  # the statement failed: the connection closed for good, a new one on next use
            assert locks.shared.conn.raw is None
        assert locks.busy_chats() == []
        async with asyncio.timeout(5), locks.hold("chat_e"):  # a new connection, the lock free
            pass

    with caplog.at_level(logging.WARNING, logger="chatplane.chats.locks"):
        _in_processes(pg_settings, 1, scenario)
    assert "letting go of the turn lock of chat_e failed" in caplog.text


def test_a_lock_taken_on_a_replaced_connection_is_not_taken_back(pg_settings) -> None:  # type: ignore[no-untyped-def]
    """The lock connection dies while a turn holds a lock, and another turn's
    statement replaces it before that turn lets go: the lock died with the
    old connection, so the next turn on the chat asks for it again."""
    async def scenario(engines, both) -> None:  # type: ignore[no-untyped-def]
        (engine,), (locks,) = engines, both
        locks.shared.release_wait_s = 0.5
        async with locks.hold("chat_m"):
            pid = await locks.shared.conn.raw.fetchval("SELECT pg_backend_pid()")
            async with engine.connect() as conn:
                await conn.execute(text("SELECT pg_terminate_backend(:pid, 5000)"), {"pid": pid})
            await _seen_closed(locks)
            async with asyncio.timeout(5), locks.hold("chat_n"):  # fails, then taken on a new connection
                pass
            locks.keep("chat_m", "left on the old connection")
        async with asyncio.timeout(5), locks.hold("chat_m") as found:
            assert not isinstance(found, HeldOver)
            assert await _held_by_anyone(engine, "chat_m") == 1
        await locks.settled()

    _in_processes(pg_settings, 1, scenario)


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


def test_the_next_turn_on_a_chat_takes_its_lock_back_without_a_round_trip(pg_settings, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """A client's next message on a chat, right after the last answer: the
    release has not gone out, so the new turn takes the lock back (no
    statement) with what the last holder left; a release goes out with the
    next lock asked for, or alone after its wait."""
    async def scenario(engines, both) -> None:  # type: ignore[no-untyped-def]
        (engine,), (locks,) = engines, both
        locks.shared.release_wait_s = 1.0  # long against the client's pause below, on any machine
        monkeypatch.setattr(locks_module, "HOLD_OVER_S", 60.0)  # so is the bound on taking back
        sent = _statements(locks)
        found_by_turn = []
        for turn in range(3):
            async with locks.hold("chat_g") as found:
                found_by_turn.append(found)
                assert await _held_by_anyone(engine, "chat_g") == 1
                locks.keep("chat_g", f"left by turn {turn}")
            await asyncio.sleep(0.01)  # the client reads the answer and sends its next message
        assert sent == [(0, 1)]
        assert not isinstance(found_by_turn[0], HeldOver)
        assert [found.memo for found in found_by_turn[1:]] == ["left by turn 0", "left by turn 1"]
        async with locks.hold("chat_g") as found:  # its holder leaves nothing: the next gets no memo
            assert found.memo == "left by turn 2"
        async with locks.hold("chat_g") as found:
            assert isinstance(found, HeldOver) and found.memo is None
        async with locks.hold("chat_h"):  # another chat's lock: chat_g's release goes with it
            assert sent[1:] == [(1, 1)]
            assert await _held_by_anyone(engine, "chat_g") == 0
        await asyncio.sleep(1.1)  # nothing to ride along with: it goes alone
        assert sent[2:] == [(1, 0)]
        assert await _held_by_anyone(engine, "chat_h") == 0

        # Only for so long after the round trip that took it: then the lock
        # is asked for again, in the statement that lets go of it.
        monkeypatch.setattr(locks_module, "HOLD_OVER_S", 0.05)
        async with locks.hold("chat_g"):
            pass
        await asyncio.sleep(0.1)
        async with locks.hold("chat_g") as found:
            assert not isinstance(found, HeldOver)
            assert await _held_by_anyone(engine, "chat_g") == 1
        assert sent[3:] == [(0, 1), (1, 1)]

    _in_processes(pg_settings, 1, scenario)


def test_a_lock_lost_with_its_connection_is_not_taken_back(pg_settings) -> None:  # type: ignore[no-untyped-def]
    async def scenario(engines, both) -> None:  # type: ignore[no-untyped-def]
        (engine,), (locks,) = engines, both
        locks.shared.release_wait_s = 0.5
        async with locks.hold("chat_i"):
            locks.keep("chat_i", "stale")
            pid = await locks.shared.conn.raw.fetchval("SELECT pg_backend_pid()")
            async with engine.connect() as conn:
                await conn.execute(text("SELECT pg_terminate_backend(:pid, 5000)"), {"pid": pid})
        await _seen_closed(locks)
        async with asyncio.timeout(5), locks.hold("chat_i") as found:  # asked again, on a new connection
            assert not isinstance(found, HeldOver)
            assert await _held_by_anyone(engine, "chat_i") == 1
        await locks.settled()
        assert await _held_by_anyone(engine, "chat_i") == 0

    _in_processes(pg_settings, 1, scenario)
