"""SQLite: a turn reads its chat and writes its messages on the event loop
(``db_sqlite.LoopConnection``), on a connection of its own, when nothing else in the
process is writing; on the driver's thread when it cannot at once (a lock it
may not wait for on the loop, a long history to catch up, writes under way)."""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.ext.asyncio import create_async_engine

from chatplane.chats.turn import read as read_module
from chatplane.chats.turn import sqlite as sqlite_module
from chatplane.chats.turn.engine import Turns
from chatplane.db_sqlite import LoopConnection
from tests.chat_helpers import make_chat, say
from tests.conftest import (
    Api,
    Backend,
    ScriptedModel,
    scripted_providers,
    served,
    tenant,
)


@pytest.fixture(scope="module")
def sqlite_backend(tmp_path_factory: pytest.TempPathFactory, scripted_model: ScriptedModel) -> Iterator[Backend]:
    with served("sqlite", tmp_path_factory.mktemp("on_loop"), providers=scripted_providers(scripted_model)) as b:
        yield b


@pytest.fixture
def api(sqlite_backend: Backend) -> Iterator[Api]:
    with tenant(sqlite_backend, "mine") as client:
        yield client


def _turns(api: Api) -> Turns:
    return api.backend.server.app.state.turns


def _sent(model: ScriptedModel) -> list[str]:
    return [m["content"] for m in model.requests[-1]["messages"] if m["role"] in ("user", "assistant")]


def _count(monkeypatch: pytest.MonkeyPatch, on_loop: LoopConnection) -> list[tuple[bool, threading.Thread]]:
    """(write, thread) of each unit ``on_loop`` runs from now on."""
    units: list[tuple[bool, threading.Thread]] = []
    run = on_loop.run

    def counted(work, *, write=False):  # type: ignore[no-untyped-def]
        units.append((write, threading.current_thread()))
        return run(work, write=write)

    monkeypatch.setattr(on_loop, "run", counted)
    return units


def _on_thread(monkeypatch: pytest.MonkeyPatch) -> list[bool]:
    """``write`` of each unit a turn runs on the driver's thread from now on."""
    units: list[bool] = []
    run_unit = read_module.run_unit

    async def counted(engine, work, *, write, **kw):  # type: ignore[no-untyped-def]
        units.append(write)
        return await run_unit(engine, work, write=write, **kw)

    monkeypatch.setattr(read_module, "run_unit", counted)  # a turn's reads
    monkeypatch.setattr(sqlite_module, "run_unit", counted)  # and its writes
    return units


def _stored(api: Api, chat_id: str) -> list[str]:
    return [m["content"] for m in api.get(f"/api/chats/{chat_id}").json()["messages"]]


def test_a_turn_reads_and_writes_on_the_loop_and_leaves_no_snapshot_open(
    api: Api, model: ScriptedModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    on_loop = _turns(api).store.on_loop
    assert on_loop is not None
    units = _count(monkeypatch, on_loop)
    on_thread = _on_thread(monkeypatch)
    chat_id = make_chat(api)["chatId"]
    for content in ("one", "two"):
        assert say(api, chat_id, content).status_code == 201
    assert [write for write, _ in units] == [False, True, False, True] and on_thread == []
    assert all(thread is units[0][1] for _, thread in units)  # the server's loop thread
    assert _sent(model) == ["one", "ok", "two"]
    assert _stored(api, chat_id) == ["one", "ok", "two", "ok"]
    # No transaction left open between turns: it would pin an old snapshot,
    # and a checkpoint could not fold the whole log back.
    assert not on_loop.engine.raw_connection().driver_connection.in_transaction
    with sqlite3.connect(api.backend.settings.sqlite_path) as other:
        busy, _, _ = other.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
    assert busy == 0


def test_the_loop_never_waits_for_a_lock(tmp_path: Path) -> None:
    """SQLite's busy answer comes back at once as ``LoopConnection.Busy``: a
    write while another connection writes; a read while another holds the
    database exclusively (made here without WAL; in WAL mode only rare locks
    keep a reader out)."""
    for journal in ("wal", "delete"):
        path = str(tmp_path / f"{journal}.db")
        holder = sqlite3.connect(path, isolation_level=None)
        holder.execute(f"PRAGMA journal_mode={journal}")
        holder.execute("CREATE TABLE t (x)")
        on_loop = LoopConnection(path)

        def count(conn: Any) -> int:
            return conn.exec_driver_sql("SELECT count(*) FROM t").scalar()

        try:
            holder.execute("BEGIN EXCLUSIVE")
            holder.execute("INSERT INTO t VALUES (1)")
            started = time.monotonic()
            with pytest.raises(LoopConnection.Busy):
                on_loop.run(lambda conn: conn.exec_driver_sql("INSERT INTO t VALUES (2)"), write=True)
            if journal == "wal":
                assert on_loop.run(count) == 0  # readers go on beside a writer
            else:
                with pytest.raises(LoopConnection.Busy):
                    on_loop.run(count)
            assert time.monotonic() - started < 0.1
            holder.execute("COMMIT")
            on_loop.run(lambda conn: conn.exec_driver_sql("INSERT INTO t VALUES (2)"), write=True)
            assert on_loop.run(count) == 2
            assert holder.execute("SELECT count(*) FROM t").fetchone() == (2,)  # committed
        finally:
            on_loop.close()
            holder.close()


def test_a_turn_that_finds_the_write_lock_taken_writes_on_the_drivers_thread(
    api: Api, model: ScriptedModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another process writes for a moment: the turn's write may not wait
    for it on the loop; on the driver's thread it does (busy_timeout)."""
    chat_id = make_chat(api)["chatId"]
    assert say(api, chat_id, "one").status_code == 201
    on_thread = _on_thread(monkeypatch)
    holder = sqlite3.connect(api.backend.settings.sqlite_path, isolation_level=None, check_same_thread=False)
    holder.execute("BEGIN IMMEDIATE")
    let_go = threading.Timer(0.3, holder.commit)
    let_go.start()
    started = time.monotonic()
    try:
        answer = say(api, chat_id, "two")
    finally:
        let_go.join()
        holder.close()
    assert answer.status_code == 201, answer.text
    assert time.monotonic() - started >= 0.25  # it waited for the lock
    assert on_thread == [True]  # the read went on beside the other writer, on the loop
    assert _stored(api, chat_id) == ["one", "ok", "two", "ok"]


def test_a_turn_the_loop_cannot_read_at_once_reads_on_the_drivers_thread(
    api: Api, model: ScriptedModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    on_loop = _turns(api).store.on_loop
    chat_id = make_chat(api)["chatId"]
    assert say(api, chat_id, "one").status_code == 201
    run = on_loop.run

    def busy_reads(work, *, write=False):  # type: ignore[no-untyped-def]
        if not write:
            raise LoopConnection.Busy
        return run(work, write=write)

    monkeypatch.setattr(on_loop, "run", busy_reads)
    on_thread = _on_thread(monkeypatch)
    answer = say(api, chat_id, "two")
    assert answer.status_code == 201, answer.text
    assert on_thread == [False]
    assert _sent(model) == ["one", "ok", "two"]


def test_a_long_history_the_cache_lacks_is_read_on_the_drivers_thread(
    api: Api, model: ScriptedModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sqlite_module, "LOOP_READ_ROWS", 2)
    turns = _turns(api)
    chat_id = make_chat(api)["chatId"]
    for content in ("one", "two", "three"):
        assert say(api, chat_id, content).status_code == 201
    turns.forget(chat_id)  # a cold cache: six stored messages to read, more than the loop reads
    on_thread = _on_thread(monkeypatch)
    assert say(api, chat_id, "four").status_code == 201
    assert _sent(model) == ["one", "ok", "two", "ok", "three", "ok", "four"]
    assert on_thread == [False]  # the history's read
    assert say(api, chat_id, "five").status_code == 201  # cached again: on the loop
    assert on_thread == [False]


def test_while_writes_are_under_way_a_turn_queues_behind_them(
    api: Api, model: ScriptedModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The loop is for a quiet process: with a write out, a turn reads and
    writes on the driver's thread, in order with the others."""
    writes = _turns(api).store.writes
    chat_id = make_chat(api)["chatId"]
    monkeypatch.setattr(writes, "idle", lambda: False)
    on_thread = _on_thread(monkeypatch)
    assert say(api, chat_id, "one").status_code == 201
    assert on_thread == [False, True]
    assert _stored(api, chat_id) == ["one", "ok"]


def test_without_a_database_file_there_is_no_loop_connection() -> None:
    engine = create_async_engine("sqlite+aiosqlite://")
    assert sqlite_module.SqliteStore(engine, None).on_loop is None  # type: ignore[arg-type]
