"""The PostgreSQL store of turns (``PgStore``).

- The lock and the read are one round trip: ``chatplane_turn_locks`` takes
  the chat's advisory lock and reads the chat under it (``locks.ChatRead``),
  as JSON, turned back into the row ``READ_CHAT`` gives (``_read_with_lock``).
- A turn that comes for a chat whose lock this process let go of a moment
  ago, and whose release had not gone out, takes the lock back without a
  round trip (``locks.HeldOver``) and starts from the chat row the last turn
  left (``keep``), its configurations checked before a tool runs or by the
  guard of the statement that writes it.
- The writes of any number of turns are one statement (``turns_write``), on
  a connection of the store's own.
"""

from __future__ import annotations

import collections
import functools
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    Boolean,
    Float,
    Select,
    and_,
    bindparam,
    case,
    func,
    insert,
    select,
    true,
    update,
)
from sqlalchemy.dialects import postgresql
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from chatplane.chats.locks import ChatRead, HeldOver, TurnLocks
from chatplane.chats.service import chat_not_found
from chatplane.chats.turn.read import History, Read, read_now, with_history
from chatplane.chats.turn.statements import AGENTS, CHATS, IDEMPOTENCY, LLMS, MESSAGES, READ_CHAT
from chatplane.chats.turn.write import TurnWrite, WriteBatcher
from chatplane.db import OwnConnection, UTCDateTime, fetch

# This connection sends one statement, whose right plan is a primary-key
# lookup per turn however small the tables: on a new database the planner
# hashed the whole chats table for every write instead (0.3 ms a turn at 400
# chats). Planned once: a custom plan each time costs more than the write (~0.3 ms).
PLANNER = (
    "SET enable_hashjoin = off; SET enable_mergejoin = off; SET enable_seqscan = off; "
    "SET plan_cache_mode = force_generic_plan"
)


class PgStore:
    def __init__(self, engine: AsyncEngine, locks: TurnLocks) -> None:
        self.engine = engine
        self.locks = locks
        self.conn = OwnConnection(engine, PLANNER)
        self.writes = WriteBatcher(self._send)

    def hold(self, chat_id: str, workspace_id: int, idempotency_key: str | None) -> AbstractAsyncContextManager[Any]:
        return self.locks.hold(chat_id, ChatRead(chat_id, workspace_id, idempotency_key))

    async def read(self, found: Any, chat_id: str, workspace_id: int, idempotency_key: str | None,
                   cached: History | None, *, trust_memo: bool) -> Read:
        """What the lock's round trip found (``found``), or the memo of a lock
        taken back (``HeldOver``) when the turn may start from it (never with an
        Idempotency-Key: the stored answer is not in a memo), else a read now."""
        if isinstance(found, HeldOver) and (found.memo is None or idempotency_key or not trust_memo):
            found = None
        if found is None:
            return await read_now(self.engine, chat_id, workspace_id, idempotency_key, cached)
        read = Read(found.memo, unchecked=True) if isinstance(found, HeldOver) else _read_with_lock(found)
        return await with_history(self.engine, read, chat_id, cached)

    async def write(self, turn: TurnWrite) -> bool:
        return await self.writes.write(turn)

    async def write_in(self, conn: AsyncConnection, turn: TurnWrite) -> None:
        if not await conn.run_sync(lambda sync_conn: _written(sync_conn, [turn])):
            raise chat_not_found(turn.after["b_chat_id"])  # gone (deleted with its workspace)

    def keep(self, chat_id: str, row: Any, **changed: Any) -> None:
        self.locks.keep(chat_id, row._replace(**changed))

    async def _send(self, turns: list[TurnWrite]) -> set[str]:
        rows = await fetch(await self.conn.driver(), self.engine.dialect, *turns_write(turns))
        return {chat_id for (chat_id,) in rows}

    async def aclose(self) -> None:
        await self.writes.aclose()
        await self.conn.discard()  # its planner settings are not for the pool's other users


# PostgreSQL reads the chat in the round trip that takes its turn lock
# (``locks.ChatRead``), as JSON (``row_to_json``): turned back into the row
# READ_CHAT gives, with its times and floats.
_CHAT_FIELDS = tuple(column.name for column in READ_CHAT.selected_columns)
_ChatRow = collections.namedtuple("_ChatRow", _CHAT_FIELDS, rename=True)  # type: ignore[misc]
_Earlier = collections.namedtuple("_Earlier", ["request_hash", "response"])


def _from_json(column: Any) -> Callable[[Any], Any] | None:
    if isinstance(column.type, UTCDateTime):
        return lambda value: datetime.fromisoformat(value).astimezone(UTC)
    if isinstance(column.type, Float):
        return float
    return None


_DECODE = [(name, _from_json(column)) for name, column in zip(_CHAT_FIELDS, READ_CHAT.selected_columns, strict=True)]


def _read_with_lock(found: Any) -> Read:
    """``Read`` of what the lock's round trip found (the history aside)."""
    chat = found["chat"]
    if chat is None:
        return Read(None)
    row = _ChatRow._make(
        decode(chat[name]) if decode is not None and chat[name] is not None else chat[name]
        for name, decode in _DECODE
    )
    earlier = found["earlier"]
    return Read(row, _Earlier(earlier["request_hash"], earlier["response"]) if earlier is not None else None)


def _written(conn: Connection, turns: list[TurnWrite]) -> set[str]:
    """The writes of several turns (of different chats) in one statement; the
    ids of the chats written (a turn whose guard failed, or whose chat is
    gone, wrote nothing)."""
    return {chat_id for (chat_id,) in conn.execute(*turns_write(turns)).all()}

_PG = postgresql.asyncpg.dialect()


def turns_write(turns: list[TurnWrite]) -> tuple[Select[Any], dict[str, Any]]:
    """The statement and parameters that write ``turns`` (see ``_turns_statement``)."""
    messages = [message for turn in turns for message in turn.messages]
    columns = tuple(messages[0])  # every message row of a turn has the same keys
    params: dict[str, Any] = {f"m_{column}": [message[column] for message in messages] for column in columns}
    params.update(
        b_chat_id=[turn.after["b_chat_id"] for turn in turns],
        b_count=[turn.after["b_count"] for turn in turns],
        b_user_at=[turn.after["b_user_at"] for turn in turns],
        b_agent_at=[turn.after["b_agent_at"] for turn in turns],
        b_tools=[turn.tool_changes is not None for turn in turns],
        b_state=[turn.tool_changes["b_state"] if turn.tool_changes else None for turn in turns],
        b_collected=[turn.tool_changes["b_collected"] if turn.tool_changes else None for turn in turns],
        b_agent_changed=[turn.guard[0] if turn.guard else None for turn in turns],
        b_llm_changed=[turn.guard[1] if turn.guard else None for turn in turns],
    )
    keys = [turn.idempotent for turn in turns if turn.idempotent is not None]
    params.update({f"k_{column.name}": [key[column.name] for key in keys] for column in IDEMPOTENCY.c})
    return _turns_statement(columns), params


def _array(name: str, column: Any) -> Any:
    return bindparam(name, type_=postgresql.ARRAY(column.type.dialect_impl(_PG)))


def _unnest(name: str, arrays: list[Any], columns: list[str]) -> Any:
    return func.unnest(*arrays).table_valued(*columns).render_derived(name=name)


@functools.cache
def _turns_statement(columns: tuple[str, ...]) -> Select[Any]:
    """PostgreSQL: the writes of any number of turns as one statement, which
    PostgreSQL runs atomically, so in autocommit it is one round trip (not
    BEGIN, INSERT, UPDATE, COMMIT) and one commit for all of them.

    Each column arrives as one array (``unnest``): one statement, compiled
    once, for any number of turns and messages. Data-modifying CTEs: the
    chats' update, which answers the ids of the chats it wrote, and the
    inserts of the messages and idempotent answers of those chats only. A
    turn with a guard writes only if its agent's and LLM's configurations
    are as it read them; a turn whose tools changed nothing keeps the
    chat's state and collected variables as they are.
    """
    rows = _unnest("turn_rows", [_array(f"m_{name}", MESSAGES.c[name]) for name in columns], list(columns))
    keys = _unnest("turn_keys", [_array(f"k_{column.name}", column) for column in IDEMPOTENCY.c],
                   [column.name for column in IDEMPOTENCY.c])
    chats = _unnest(
        "turn_chats",
        [
            _array("b_chat_id", CHATS.c.id), _array("b_count", CHATS.c.message_count),
            _array("b_user_at", CHATS.c.last_user_message_at), _array("b_agent_at", CHATS.c.last_agent_message_at),
            bindparam("b_tools", type_=postgresql.ARRAY(Boolean())), _array("b_state", CHATS.c.current_state),
            _array("b_collected", CHATS.c.collected_dynamic_variables),
            _array("b_agent_changed", AGENTS.c.updated_at), _array("b_llm_changed", LLMS.c.updated_at),
        ],
        ["chat_id", "count", "user_at", "agent_at", "tools", "state", "collected", "agent_changed_at",
         "llm_changed_at"],
    )
    # Scalar subqueries, not EXISTS: a lookup by primary key for each turn
    # with a guard (an EXISTS in an OR may be planned as a hash of the table).
    unchanged = case(
        (chats.c.agent_changed_at.is_(None), true()),
        else_=and_(
            select(AGENTS.c.updated_at).where(AGENTS.c.id == CHATS.c.agent_id, AGENTS.c.version == CHATS.c.agent_version)
            .scalar_subquery() == chats.c.agent_changed_at,
            select(LLMS.c.updated_at).where(LLMS.c.id == CHATS.c.llm_id, LLMS.c.version == CHATS.c.llm_version)
            .scalar_subquery() == chats.c.llm_changed_at,
        ),
    )
    written = (
        update(CHATS)
        .where(CHATS.c.id == chats.c.chat_id, unchanged)
        .values(
            message_count=chats.c.count,
            last_user_message_at=chats.c.user_at,
            last_agent_message_at=chats.c.agent_at,
            current_state=case((chats.c.tools, chats.c.state), else_=CHATS.c.current_state),
            collected_dynamic_variables=case(
                (chats.c.tools, chats.c.collected), else_=CHATS.c.collected_dynamic_variables
            ),
        )
        .returning(CHATS.c.id)
        .cte("turn_chats_written")
    )
    of_written = select(written.c.id)
    return select(written.c.id).add_cte(
        insert(MESSAGES)
        .from_select(list(columns), select(*rows.c).where(rows.c.chat_id.in_(of_written)))
        .cte("turn_messages"),
        insert(IDEMPOTENCY)
        .from_select([c.name for c in IDEMPOTENCY.c], select(*keys.c).where(keys.c.chat_id.in_(of_written)))
        .cte("turn_keys_in"),
    )

