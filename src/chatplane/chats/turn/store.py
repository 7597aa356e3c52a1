"""Where a turn is locked, read and written: one store per database.

The engine asks its ``TurnStore``; it never asks which database it runs on.
Each database's tricks stay in its store (``postgres.PgStore``,
``sqlite.SqliteStore``); the turns' writes go through one ``WriteBatcher``.
"""

from __future__ import annotations

from contextlib import AbstractAsyncContextManager
from typing import Any, Protocol

from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from chatplane.chats.locks import TurnLocks
from chatplane.chats.turn.postgres import PgStore
from chatplane.chats.turn.read import History, Read
from chatplane.chats.turn.sqlite import SqliteStore
from chatplane.chats.turn.write import TurnWrite


class TurnStore(Protocol):
    locks: TurnLocks

    def hold(self, chat_id: str, workspace_id: int, idempotency_key: str | None) -> AbstractAsyncContextManager[Any]:
        """Hold the chat's turn lock (one turn at a time, across processes); it
        yields what the lock found, for ``read``."""
        ...

    async def read(self, found: Any, chat_id: str, workspace_id: int, idempotency_key: str | None,
                   cached: History | None, *, trust_memo: bool) -> Read:
        """What the turn reads under its lock: the chat, the answer stored under
        ``idempotency_key``, the history ``cached`` lacks. ``trust_memo``: the
        turn may start from what the lock's last holder left (``keep``)."""
        ...

    async def write(self, turn: TurnWrite) -> bool:
        """Write the turn whole (with other chats' turns); False if its chat is
        gone or its guard failed (nothing written)."""
        ...

    async def write_in(self, conn: AsyncConnection, turn: TurnWrite) -> None:
        """Write the turn inside the caller's transaction (with the ORM's rows:
        webhooks, the end of the chat)."""
        ...

    def keep(self, chat_id: str, row: Any, **changed: Any) -> None:
        """Leave the chat row the turn read, with what it ``changed``, to the
        lock's next holder (as this turn left it)."""
        ...

    async def aclose(self) -> None:
        """Wait for the writes still going out; give back what the store holds."""
        ...


def open_store(engine: AsyncEngine, locks: TurnLocks) -> TurnStore:
    """The store of ``engine``'s database."""
    return PgStore(engine, locks) if engine.dialect.name == "postgresql" else SqliteStore(engine, locks)
