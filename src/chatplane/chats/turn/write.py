"""What a turn writes, and the writes of many turns sent together (``TurnWrites``)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import bindparam, insert, update
from sqlalchemy.engine import Connection, Dialect
from sqlalchemy.ext.asyncio import AsyncEngine

from chatplane.chats.service import chat_not_found
from chatplane.chats.turn.postgres import turns_write
from chatplane.chats.turn.read import CHATS, IDEMPOTENCY, MESSAGES
from chatplane.db import LoopConnection, OwnConnection, fetch, run_unit

# Turns written in one statement (PostgreSQL) or transaction (SQLite) at most (TurnWrites).
WRITE_BATCH = 64

INSERT_MESSAGES = insert(MESSAGES)
INSERT_IDEMPOTENT = insert(IDEMPOTENCY)
_AFTER_TURN = {
    "message_count": bindparam("b_count"),
    "last_user_message_at": bindparam("b_user_at", type_=CHATS.c.last_user_message_at.type),
    "last_agent_message_at": bindparam("b_agent_at", type_=CHATS.c.last_agent_message_at.type),
}
UPDATE_AFTER_TURN = update(CHATS).where(CHATS.c.id == bindparam("b_chat_id")).values(**_AFTER_TURN)
# Only for turns whose tools changed the chat's state or collected variables.
UPDATE_AFTER_TOOLS = (
    update(CHATS)
    .where(CHATS.c.id == bindparam("b_chat_id"))
    .values(
        **_AFTER_TURN,
        current_state=bindparam("b_state", type_=CHATS.c.current_state.type),
        collected_dynamic_variables=bindparam("b_collected", type_=CHATS.c.collected_dynamic_variables.type),
    )
)


@dataclass(slots=True)
class TurnWrite:
    """What one turn writes: its messages, the chat's counters, what its tools
    changed (state, collected variables) and its idempotent answer."""

    messages: list[dict[str, Any]]
    after: dict[str, Any]
    tool_changes: dict[str, Any] | None = None
    idempotent: dict[str, Any] | None = None
    # PostgreSQL: (agent's, LLM's updated_at) the turn started from; written
    # only if both are still so (an unchecked read), else nothing is.
    guard: tuple[datetime, datetime] | None = None


def write_turn(conn: Connection, turn: TurnWrite) -> None:
    if _one_statement(conn.dialect):
        if not _write_turns(conn, [turn]):  # the chat is gone (deleted with its workspace)
            raise chat_not_found(turn.after["b_chat_id"])
        return
    conn.execute(INSERT_MESSAGES, turn.messages)
    if turn.tool_changes is not None:
        conn.execute(UPDATE_AFTER_TOOLS, {**turn.after, **turn.tool_changes})
    else:
        conn.execute(UPDATE_AFTER_TURN, turn.after)
    if turn.idempotent is not None:
        conn.execute(INSERT_IDEMPOTENT, turn.idempotent)


def _one_statement(dialect: Dialect) -> bool:
    """Whether this database writes turns in one statement (see ``_turns_statement``)."""
    return dialect.name == "postgresql"


def _write_turns(conn: Connection, turns: list[TurnWrite]) -> set[str]:
    """PostgreSQL: the writes of several turns (of different chats) in one
    statement; the ids of the chats written (a turn whose guard failed, or
    whose chat is gone, wrote nothing)."""
    return {chat_id for (chat_id,) in conn.execute(*turns_write(turns)).all()}


class TurnWrites:
    """Turns' writes, sent together.

    The writes that wait while one is out go as the next one (at most
    ``WRITE_BATCH`` turns): under load a process commits many turns in one
    commit. On PostgreSQL that is one statement, one round trip; on SQLite
    one transaction on the driver's thread, so the database's one write lock
    is taken once for them all (650 -> 950 completions/s at 64 chats in
    ``bench/chats.py``, CPU per completion 2.4 -> 1.8 ms). Turns of one chat
    never meet in a batch (a turn writes under its chat's lock). If a batch
    fails, each of its turns is written alone, so a turn fails only for a
    reason of its own. On SQLite, a turn that finds nothing written or
    waiting is written at once on the event loop (``db.LoopConnection``),
    unless another process holds the write lock.
    """

    def __init__(self, engine: AsyncEngine, on_loop: LoopConnection | None = None) -> None:
        self.engine = engine
        self.on_loop = on_loop
        self._waiting: list[tuple[TurnWrite, asyncio.Future[bool]]] = []
        self._driver: asyncio.Task[None] | None = None
        # PostgreSQL: this connection sends one statement, whose right plan
        # is a primary-key lookup per turn however small the tables: on a new
        # database the planner hashed the whole chats table for every write
        # instead (0.3 ms a turn at 400 chats). Planned once: a custom plan
        # each time costs more than the write (~0.3 ms).
        self.conn = OwnConnection(
            engine,
            "SET enable_hashjoin = off; SET enable_mergejoin = off; SET enable_seqscan = off; "
            "SET plan_cache_mode = force_generic_plan",
        ) if _one_statement(engine.dialect) else None

    async def write(self, turn: TurnWrite) -> bool:
        """Whether the turn was written (see ``_write_turns``)."""
        if self.on_loop is not None and self.idle():
            # SQLite, nothing else writing in this process: right here, unless
            # another process holds the write lock.
            try:
                self.on_loop.run(lambda conn: write_turn(conn, turn), write=True)
            except LoopConnection.Busy:
                pass
            else:
                return True
        future: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._waiting.append((turn, future))
        if self._driver is None:
            self._driver = asyncio.create_task(self._drive())
        try:
            return await asyncio.shield(future)
        except asyncio.CancelledError:
            # The turn holds its chat's lock until this returns: a write still
            # queued or on its way must land (or fail) before another turn on
            # the chat may read it.
            await asyncio.wait([future])
            raise

    async def _drive(self) -> None:
        try:
            while self._waiting:
                batch, self._waiting = self._waiting[:WRITE_BATCH], self._waiting[WRITE_BATCH:]
                try:
                    await self._write(batch)
                except BaseException as exc:  # every turn of the batch gets an answer, whatever happened
                    for _, future in batch:
                        if isinstance(exc, Exception):
                            _settle(future, error=exc)
                        else:
                            future.cancel()
                    if not isinstance(exc, Exception):
                        raise
        finally:
            self._driver = None

    async def _write(self, batch: list[tuple[TurnWrite, asyncio.Future[bool]]]) -> None:
        try:
            written = await self._send([turn for turn, _ in batch])
        except Exception:
            if len(batch) == 1:
                raise
            for turn, future in batch:  # alone, so that only a turn at fault fails
                try:
                    alone = await self._send([turn])
                except Exception as error:  # noqa: BLE001 - handed to its turn
                    _settle(future, error=error)
                else:
                    _settle(future, turn.after["b_chat_id"] in alone)
        else:
            for turn, future in batch:
                _settle(future, turn.after["b_chat_id"] in written)

    async def _send(self, turns: list[TurnWrite]) -> set[str]:
        if self.conn is None:  # SQLite: one transaction; a chat gone fails it (its messages' foreign key)
            await run_unit(self.engine, lambda conn: [write_turn(conn, turn) for turn in turns], write=True)
            return {turn.after["b_chat_id"] for turn in turns}
        rows = await fetch(await self.conn.driver(), self.engine.dialect, *turns_write(turns))
        return {chat_id for (chat_id,) in rows}

    def idle(self) -> bool:
        """Whether no write is out or waiting."""
        return self._driver is None

    async def aclose(self) -> None:
        while self._driver is not None:
            await asyncio.wait([self._driver])
        if self.conn is not None:
            await self.conn.discard()  # its planner settings are not for the pool's other users


def _settle(future: asyncio.Future[bool], written: bool = False, *, error: BaseException | None = None) -> None:
    if future.done():  # its turn was cancelled while it waited; the write went out (or not) all the same
        return
    if error is None:
        future.set_result(written)
    else:
        future.set_exception(error)

