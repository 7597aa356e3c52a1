"""What a turn writes (``TurnWrite``), and the writes of many turns sent together (``WriteBatcher``)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import bindparam, insert, update
from sqlalchemy.engine import Connection

from chatplane.chats.turn.statements import CHATS, IDEMPOTENCY, MESSAGES

# Turns written in one statement (PostgreSQL) or transaction (SQLite) at most (WriteBatcher).
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
    """One turn's writes as separate statements (SQLite; inside the caller's transaction)."""
    conn.execute(INSERT_MESSAGES, turn.messages)
    if turn.tool_changes is not None:
        conn.execute(UPDATE_AFTER_TOOLS, {**turn.after, **turn.tool_changes})
    else:
        conn.execute(UPDATE_AFTER_TURN, turn.after)
    if turn.idempotent is not None:
        conn.execute(INSERT_IDEMPOTENT, turn.idempotent)


Send = Callable[[list["TurnWrite"]], Awaitable[set[str]]]


class WriteBatcher:
    """Turns' writes, sent together by ``send`` (a store's: it answers the ids
    of the chats it wrote).

    The writes that wait while one is out go as the next one (at most
    ``WRITE_BATCH`` turns): under load a process commits many turns in one
    commit. On PostgreSQL that is one statement, one round trip; on SQLite
    one transaction on the driver's thread, so the database's one write lock
    is taken once for them all (650 -> 950 completions/s at 64 chats in
    ``bench/chats.py``, CPU per completion 2.4 -> 1.8 ms). Turns of one chat
    never meet in a batch (a turn writes under its chat's lock). If a batch
    fails, each of its turns is written alone, so a turn fails only for a
    reason of its own.
    """

    def __init__(self, send: Send) -> None:
        self.send = send
        self._waiting: list[tuple[TurnWrite, asyncio.Future[bool]]] = []
        self._driver: asyncio.Task[None] | None = None

    async def write(self, turn: TurnWrite) -> bool:
        """Whether the turn was written (False: its chat is gone, or its guard failed)."""
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
            written = await self.send([turn for turn, _ in batch])
        except Exception:
            if len(batch) == 1:
                raise
            for turn, future in batch:  # alone, so that only a turn at fault fails
                try:
                    alone = await self.send([turn])
                except Exception as error:  # noqa: BLE001 - handed to its turn
                    _settle(future, error=error)
                else:
                    _settle(future, turn.after["b_chat_id"] in alone)
        else:
            for turn, future in batch:
                _settle(future, turn.after["b_chat_id"] in written)

    def idle(self) -> bool:
        """Whether no write is out or waiting."""
        return self._driver is None

    async def aclose(self) -> None:
        """Wait for the writes still going out."""
        while self._driver is not None:
            await asyncio.wait([self._driver])


def _settle(future: asyncio.Future[bool], written: bool = False, *, error: BaseException | None = None) -> None:
    if future.done():  # its turn was cancelled while it waited; the write went out (or not) all the same
        return
    if error is None:
        future.set_result(written)
    else:
        future.set_exception(error)

