"""The SQLite store of turns (``SqliteStore``).

- The lock is a byte-range lock per chat on a file beside the database
  (``locks.TurnLocks``); the read comes after it.
- A turn in a quiet process (no write out or waiting) reads and writes right
  on the event loop (``db_sqlite.LoopConnection``: no thread switches, never a wait
  for the database's lock: busy means the usual way); under load it reads on
  the driver's thread, in order with the writes, which go out together in
  one transaction: reading on the loop there too made more turns/s but a
  longer tail (p99 3-3.7x p50 at 64 chats against 1.9x).
"""

from __future__ import annotations

from contextlib import AbstractAsyncContextManager
from typing import Any

from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from chatplane.chats.locks import TurnLocks
from chatplane.chats.service import chat_not_found
from chatplane.chats.turn.read import History, Read, read_now, read_unit, with_history
from chatplane.chats.turn.write import TurnWrite, WriteBatcher, write_turn
from chatplane.db import run_unit
from chatplane.db_sqlite import LoopConnection

# History rows a turn reads on the event loop at most; a longer rest (a cold
# cache on a long chat) is read on the driver's thread.
LOOP_READ_ROWS = 64


class SqliteStore:
    def __init__(self, engine: AsyncEngine, locks: TurnLocks) -> None:
        self.engine = engine
        self.locks = locks
        path = engine.url.database
        self.on_loop = LoopConnection(path) if path and path != ":memory:" else None
        self.writes = WriteBatcher(self._send)

    def hold(self, chat_id: str, workspace_id: int, idempotency_key: str | None) -> AbstractAsyncContextManager[Any]:
        return self.locks.hold(chat_id)

    async def read(self, found: Any, chat_id: str, workspace_id: int, idempotency_key: str | None,
                   cached: History | None, *, trust_memo: bool) -> Read:
        if self.on_loop is not None and self.writes.idle():  # quiet: on the event loop, a few rows by key
            cached_rows = cached.rows if cached else 0
            try:
                read = self.on_loop.run(lambda conn: read_unit(
                    conn, chat_id, workspace_id, idempotency_key, cached_rows, LOOP_READ_ROWS))
            except LoopConnection.Busy:
                pass
            else:
                return await with_history(self.engine, read, chat_id, cached)
        return await read_now(self.engine, chat_id, workspace_id, idempotency_key, cached)

    async def write(self, turn: TurnWrite) -> bool:
        if self.on_loop is not None and self.writes.idle():
            # Nothing else writing in this process: right here, unless
            # another process holds the write lock.
            try:
                return self.on_loop.run(lambda conn: write_turn(conn, turn), write=True)
            except LoopConnection.Busy:
                pass
        return await self.writes.write(turn)

    async def write_in(self, conn: AsyncConnection, turn: TurnWrite) -> None:
        if not await conn.run_sync(lambda sync_conn: write_turn(sync_conn, turn)):
            raise chat_not_found(turn.after["b_chat_id"])  # gone (deleted with its workspace)

    def keep(self, chat_id: str, row: Any, **changed: Any) -> None:
        """Nothing to keep: a SQLite turn always reads the chat."""

    async def _send(self, turns: list[TurnWrite]) -> set[str]:
        # One transaction; a turn whose chat is gone writes nothing.
        def written(conn: Connection) -> set[str]:
            return {turn.after["b_chat_id"] for turn in turns if write_turn(conn, turn)}

        return await run_unit(self.engine, written, write=True)

    async def aclose(self) -> None:
        await self.writes.aclose()
        if self.on_loop is not None:
            self.on_loop.close()
