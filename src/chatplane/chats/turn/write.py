"""What a turn writes (``TurnWrite``), and the writes of many turns sent together (``WriteBatcher``)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import bindparam, insert, update
from sqlalchemy.engine import Connection

from chatplane.batching import Batcher
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


def write_turn(conn: Connection, turn: TurnWrite) -> bool:
    """One turn's writes as separate statements (SQLite; inside the caller's
    transaction); False, and nothing written, if its chat is gone."""
    if turn.tool_changes is not None:
        updated = conn.execute(UPDATE_AFTER_TOOLS, {**turn.after, **turn.tool_changes})
    else:
        updated = conn.execute(UPDATE_AFTER_TURN, turn.after)
    if updated.rowcount == 0:  # deleted meanwhile (with its workspace)
        return False
    conn.execute(INSERT_MESSAGES, turn.messages)
    if turn.idempotent is not None:
        conn.execute(INSERT_IDEMPOTENT, turn.idempotent)
    return True


Send = Callable[[list["TurnWrite"]], Awaitable[set[str]]]


class WriteBatcher:
    """Turns' writes, sent together by ``send`` (a store's: it answers the ids
    of the chats it wrote), through a ``batching.Batcher``.

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
        self._batches: Batcher[TurnWrite, bool] = Batcher(self._outcomes, limit=WRITE_BATCH)

    async def write(self, turn: TurnWrite) -> bool:
        """Whether the turn was written (False: its chat is gone, or its guard failed)."""
        # land: the turn holds its chat's lock until this returns, so a write
        # still queued or on its way must land (or fail) before another turn
        # on the chat may read it, even if this turn is cancelled.
        return await self._batches.ask(turn, land=True)

    async def _outcomes(self, turns: list[TurnWrite]) -> list[bool | Exception]:
        try:
            written = await self.send(turns)
        except Exception:
            if len(turns) == 1:
                raise
            return [await self._alone(turn) for turn in turns]  # so that only a turn at fault fails
        return [turn.after["b_chat_id"] in written for turn in turns]

    async def _alone(self, turn: TurnWrite) -> bool | Exception:
        try:
            return turn.after["b_chat_id"] in await self.send([turn])
        except Exception as error:  # noqa: BLE001 - handed to its turn
            return error

    def idle(self) -> bool:
        """Whether no write is out or waiting."""
        return self._batches.idle()

    async def aclose(self) -> None:
        """Wait for the writes still going out."""
        await self._batches.settled()
