"""A turn: the user's message in, the agent's reply out, history kept.

The contract when several messages hit one chat: turns run one at a time, in
arrival order (``TurnLocks``), and a turn is written whole or not at all:
the user's message and the agent's replies go into the database in one
transaction after the model has answered. A turn whose model call fails
leaves the chat exactly as it was, so the client can simply send again.

When the LLM has tools, a turn may take several model calls: the model asks
for tools, they run (``tools.py``), their results go back to it, and it is
called again, at most ``MAX_TOOL_ROUNDS`` times before it must answer in
words. Each model call becomes one assistant message (the ones that called
tools carry ``tool_calls``, each with its ``result``), so token usage stays
recorded per message. What the tools changed (state, collected variables,
the end of the chat) is written in the same transaction as the messages.
"""

from __future__ import annotations

import asyncio
import collections
import functools
import hashlib
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import httpx
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
from sqlalchemy.engine import Connection, Dialect
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, AsyncSession

from chatplane import jobs
from chatplane.chats import lifecycle, tools
from chatplane.chats.locks import ChatRead, HeldOver, TurnLocks
from chatplane.chats.prompt import render
from chatplane.chats.service import (
    Versions,
    chat_ended,
    chat_not_found,
    chat_variables,
)
from chatplane.db import (
    LoopConnection,
    OwnConnection,
    UTCDateTime,
    fetch,
    run_unit,
    utcnow,
)
from chatplane.errors import Conflict
from chatplane.ids import new_id
from chatplane.models import (
    Chat,
    ChatAgent,
    ChatMessage,
    IdempotencyKey,
    Llm,
    Workspace,
)
from chatplane.providers import ModelReply, ModelRequest, OnDelta, Registry
from chatplane.providers.base import Message
from chatplane.webhooks.events import wants

# The per-process history cache holds at most this many model-facing
# messages in all (~300 bytes each: ~30 MiB), of the chats used last.
HISTORY_CACHE_MESSAGES = 100_000
# Model calls that may ask for tools in one turn; the call after the last of
# them is made with tool_choice "none", so the turn always ends in words.
MAX_TOOL_ROUNDS = 5
# Turns written in one statement (PostgreSQL) or transaction (SQLite) at most (_TurnWrites).
WRITE_BATCH = 64
# SQLite: history rows a turn reads on the event loop at most (db.LoopConnection);
# a longer rest (a cold cache on a long chat) is read on the driver's thread.
LOOP_READ_ROWS = 64
END_REASON = "end_chat_tool"


@dataclass(frozen=True, slots=True)
class TurnAnswer:
    """What the completion route answers: the agent's new messages."""

    body: dict[str, Any]
    replayed: bool = False


def _message_json(row: dict[str, Any]) -> dict[str, Any]:
    """``message_out`` of a message row not yet read back, as JSON-ready data."""
    return {
        "role": row["role"],
        "content": row["content"],
        "name": row["name"],
        "tool_calls": row["tool_calls"] or [],
        "messageId": row["id"],
        # The same form the response models give every other datetime.
        "createdAt": row["created_at"].isoformat().replace("+00:00", "Z"),
    }


_PG = postgresql.asyncpg.dialect()
CHATS = Chat.__table__
AGENTS = ChatAgent.__table__
LLMS = Llm.__table__
MESSAGES = ChatMessage.__table__
IDEMPOTENCY = IdempotencyKey.__table__

# The hot path's statements, built once: SQLAlchemy caches the compiled SQL,
# but building the expression tree is itself ~1 ms a turn.
READ_CHAT = (
    select(
        CHATS, ChatAgent.config.label("agent_config"), Llm.config.label("llm_config"),
        # Signs custom-tool calls; a primary-key join, so no second query.
        Workspace.webhook_key.label("webhook_key"),
        # A draft configuration changes in place: what a turn that read
        # nothing checks when it writes (see HeldOver in Turns.run).
        ChatAgent.updated_at.label("agent_updated_at"), Llm.updated_at.label("llm_updated_at"),
    )
    .join(ChatAgent, (ChatAgent.id == CHATS.c.agent_id) & (ChatAgent.version == CHATS.c.agent_version))
    .join(Llm, (Llm.id == CHATS.c.llm_id) & (Llm.version == CHATS.c.llm_version))
    .join(Workspace, Workspace.id == CHATS.c.workspace_id)
    .where(CHATS.c.id == bindparam("chat_id"), CHATS.c.workspace_id == bindparam("workspace_id"))
)
READ_HISTORY = (
    select(MESSAGES.c.role, MESSAGES.c.content, MESSAGES.c.tool_calls)
    .where(MESSAGES.c.chat_id == bindparam("chat_id"), MESSAGES.c.seq >= bindparam("from_seq"))
    .order_by(MESSAGES.c.seq)
)
READ_IDEMPOTENT = select(IDEMPOTENCY.c.request_hash, IDEMPOTENCY.c.response).where(
    IDEMPOTENCY.c.chat_id == bindparam("chat_id"), IDEMPOTENCY.c.key == bindparam("key")
)
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
class _History:
    """The model-facing messages of a chat's first ``rows`` stored messages."""

    rows: int
    messages: list[dict[str, Any]]
    counted: int = 0  # of these messages, how many the cache's total counts


@dataclass(slots=True)
class _Read:
    """What a turn reads before calling the model."""

    chat: Any  # the READ_CHAT row, or None
    earlier: Any = None  # the answer stored under this Idempotency-Key
    history_from: int = 0  # the stored messages in history_rows start at this seq
    history_rows: list[Any] | None = None  # None: the cache is up to date
    # The chat is the memo the lock's last holder left (HeldOver), not read:
    # its configurations are checked before a tool runs or the turn is written.
    unchecked: bool = False
    # The cached history this read tops up (the cache may let go of it meanwhile).
    base: _History | None = None


def _read_turn(
    conn: Connection,
    chat_id: str,
    workspace_id: int,
    idempotency_key: str | None,
    cached_rows: int,
    rows_at_most: int | None = None,
) -> _Read:
    """The chat, the answer stored under the Idempotency-Key, and the history
    the cache lacks; not the history if that is more than ``rows_at_most``
    rows (``_read`` then reads it apart)."""
    chat = conn.execute(READ_CHAT, {"chat_id": chat_id, "workspace_id": workspace_id}).one_or_none()
    if chat is None:
        return _Read(None)
    if idempotency_key:
        earlier = conn.execute(READ_IDEMPOTENT, {"chat_id": chat_id, "key": idempotency_key}).one_or_none()
        if earlier is not None:
            return _Read(chat, earlier)
    start = _history_from(chat, cached_rows)
    if start is None or (rows_at_most is not None and chat.message_count - start > rows_at_most):
        return _Read(chat)
    return _Read(chat, history_from=start, history_rows=_read_history(conn, chat_id, start))


def _history_from(chat: Any, cached_rows: int) -> int | None:
    """The seq from which to read the history to bring the cache up to date,
    or None when it is (or the chat takes no more turns)."""
    if chat.status != "ongoing" or cached_rows == chat.message_count:
        return None
    # Another process wrote to this chat since (or the cache is cold): top up.
    return cached_rows if cached_rows < chat.message_count else 0


def _read_history(conn: Connection, chat_id: str, start: int) -> list[Any]:
    return conn.execute(READ_HISTORY, {"chat_id": chat_id, "from_seq": start}).all()


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


def _read_with_lock(found: Any) -> _Read:
    """``_Read`` of what the lock's round trip found (the history aside)."""
    chat = found["chat"]
    if chat is None:
        return _Read(None)
    row = _ChatRow._make(
        decode(chat[name]) if decode is not None and chat[name] is not None else chat[name]
        for name, decode in _DECODE
    )
    earlier = found["earlier"]
    return _Read(row, _Earlier(earlier["request_hash"], earlier["response"]) if earlier is not None else None)


async def _read(
    engine: AsyncEngine,
    found: Any,
    chat_id: str,
    workspace_id: int,
    idempotency_key: str | None,
    cached: _History | None,
    *,
    trust_memo: bool = False,
    reader: LoopConnection | None = None,
) -> _Read:
    """What the turn reads under its lock: ``found`` by the lock itself
    (PostgreSQL), or the memo of a lock taken back (``HeldOver``) when the turn
    may start from it, else all of it now: with ``reader`` (SQLite) on the
    event loop, save a long history the cache lacks."""
    cached_rows = cached.rows if cached else 0
    if isinstance(found, HeldOver) and (found.memo is None or idempotency_key or not trust_memo):
        found = None  # an Idempotency-Key's stored answer is never in a memo
    read: _Read | None = None
    if found is None and reader is not None:  # SQLite: on the event loop, a few rows by key
        try:
            read = reader.run(
                lambda conn: _read_turn(conn, chat_id, workspace_id, idempotency_key, cached_rows, LOOP_READ_ROWS)
            )
        except LoopConnection.Busy:
            pass
    if found is None and read is None:
        read = await run_unit(
            engine, lambda conn: _read_turn(conn, chat_id, workspace_id, idempotency_key, cached_rows), write=False
        )
        read.base = cached
        return read
    if read is None:
        read = _Read(found.memo, unchecked=True) if isinstance(found, HeldOver) else _read_with_lock(found)
    read.base = cached
    start = None if read.chat is None or read.earlier else _history_from(read.chat, cached_rows)
    if start is not None and read.history_rows is None:  # the cache is behind: the history's rest
        read.history_from = start
        read.history_rows = await run_unit(engine, lambda conn: _read_history(conn, chat_id, start), write=False)
    return read


def _config_times(chat: Any) -> tuple[datetime, datetime]:
    return chat.agent_updated_at, chat.llm_updated_at


def _top_up(cached: _History | None, read: _Read) -> _History:
    """The chat's history: the cached one, with what ``read`` found added."""
    if read.history_rows is None:
        return cached or _History(0, [])
    history = cached if cached is not None and read.history_from == cached.rows else _History(0, [])
    for role, content, tool_calls in read.history_rows:
        history.messages.extend(tools.history_messages(role, content, tool_calls))
        history.rows += 1
    return history


@dataclass(slots=True)
class _TurnWrite:
    """What one turn writes: its messages, the chat's counters, what its tools
    changed (state, collected variables) and its idempotent answer."""

    messages: list[dict[str, Any]]
    after: dict[str, Any]
    tool_changes: dict[str, Any] | None = None
    idempotent: dict[str, Any] | None = None
    # PostgreSQL: (agent's, LLM's updated_at) the turn started from; written
    # only if both are still so (an unchecked read), else nothing is.
    guard: tuple[datetime, datetime] | None = None


class _Stale(Exception):  # a signal, not an error
    """A turn started from a memo whose configuration has changed since:
    nothing was written; it starts over from ``read`` (None: read it all)."""

    def __init__(self, read: _Read | None = None) -> None:
        super().__init__()
        self.read = read


def _write_turn(conn: Connection, turn: _TurnWrite) -> None:
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


def _write_turns(conn: Connection, turns: list[_TurnWrite]) -> set[str]:
    """PostgreSQL: the writes of several turns (of different chats) in one
    statement; the ids of the chats written (a turn whose guard failed, or
    whose chat is gone, wrote nothing)."""
    return {chat_id for (chat_id,) in conn.execute(*_turns_write(turns)).all()}


def _turns_write(turns: list[_TurnWrite]) -> tuple[Select[Any], dict[str, Any]]:
    """The statement and parameters of ``_write_turns``."""
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


class _TurnWrites:
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
        self._waiting: list[tuple[_TurnWrite, asyncio.Future[bool]]] = []
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

    async def write(self, turn: _TurnWrite) -> bool:
        """Whether the turn was written (see ``_write_turns``)."""
        if self.on_loop is not None and self.idle():
            # SQLite, nothing else writing in this process: right here, unless
            # another process holds the write lock.
            try:
                self.on_loop.run(lambda conn: _write_turn(conn, turn), write=True)
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

    async def _write(self, batch: list[tuple[_TurnWrite, asyncio.Future[bool]]]) -> None:
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

    async def _send(self, turns: list[_TurnWrite]) -> set[str]:
        if self.conn is None:  # SQLite: one transaction; a chat gone fails it (its messages' foreign key)
            await run_unit(self.engine, lambda conn: [_write_turn(conn, turn) for turn in turns], write=True)
            return {turn.after["b_chat_id"] for turn in turns}
        rows = await fetch(await self.conn.driver(), self.engine.dialect, *_turns_write(turns))
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


@dataclass(slots=True)
class _Reply:
    reply: ModelReply
    at: datetime
    tool_calls: list[dict[str, Any]] | None  # each with its result


class _ChatView:
    """The chat row as the tools left it: the prompt reads state and variables from here."""

    __slots__ = ("_row", "current_state", "collected_dynamic_variables")

    def __init__(self, row: Any, effects: tools.TurnEffects) -> None:
        self._row = row
        self.current_state = effects.state
        self.collected_dynamic_variables = effects.collected

    def __getattr__(self, name: str) -> Any:
        return getattr(self._row, name)


class Turns:
    """Runs turns for one process: its database, models, locks and history cache.

    The hot path speaks SQLAlchemy Core on a plain connection (no ORM unit of
    work): a turn is one read and one write around the model call. On
    PostgreSQL the read comes with the turn lock (``locks.ChatRead``) and the
    write goes out with other chats' turns (``_TurnWrites``), one statement each.
    On SQLite a turn in a quiet process (no write under way) reads and writes
    right on the event loop (``db.LoopConnection``: no thread switches, never
    a wait for a lock); under load it reads on the driver's thread, in order
    with the writes, which go out together: reading on the loop there too
    made more turns/s but a longer tail (p99 3-3.7x p50 at 64 chats against
    1.9x).
    """

    def __init__(
        self,
        engine: AsyncEngine,
        registry: Registry,
        locks: TurnLocks,
        *,
        http: httpx.AsyncClient | None = None,
        allow_private_networks: bool = False,
    ) -> None:
        self.engine = engine
        self.registry = registry
        self.locks = locks
        self.tools = tools.ToolRunner(http, allow_private_networks=allow_private_networks)
        path = engine.url.database if engine is not None and engine.dialect.name == "sqlite" else None
        self._on_loop = LoopConnection(path) if path and path != ":memory:" else None
        self._writes = _TurnWrites(engine, self._on_loop) if engine is not None else None
        # chat id -> the model-facing messages of its history. Checked against
        # the chat's message_count on every turn and topped up from the
        # database, so another process's writes are never missed, and a long
        # chat costs one small query per turn instead of a re-read.
        self._history: OrderedDict[str, _History] = OrderedDict()
        self._cached_messages = 0  # model-facing messages held in self._history

    async def aclose(self) -> None:
        """Wait for the writes still going out; give back the writes' connection."""
        if self._writes is not None:
            await self._writes.aclose()
        if self._on_loop is not None:
            self._on_loop.close()

    def _remember(self, chat_id: str, history: _History) -> None:
        """Keep ``history`` as the chat's, most recently used; let the least
        recently used go while the cache holds more messages than its budget
        (bounded by size, not by a number of chats: a long chat weighs more)."""
        earlier = self._history.pop(chat_id, None)
        if earlier is not None and earlier is not history:
            self._cached_messages -= earlier.counted
        self._history[chat_id] = history
        self._cached_messages += len(history.messages) - history.counted
        history.counted = len(history.messages)
        while self._cached_messages > HISTORY_CACHE_MESSAGES and len(self._history) > 1:
            _, evicted = self._history.popitem(last=False)
            self._cached_messages -= evicted.counted

    def forget(self, chat_id: str) -> None:
        forgotten = self._history.pop(chat_id, None)
        if forgotten is not None:
            self._cached_messages -= forgotten.counted

    async def run(
        self,
        *,
        workspace_id: int,
        chat_id: str,
        content: str,
        idempotency_key: str | None = None,
        on_delta: OnDelta | None = None,
    ) -> TurnAnswer:
        """One turn, under the chat's turn lock.

        On PostgreSQL a turn that takes the lock back (``HeldOver``: the
        process's last turn on the chat ended a moment ago and its release had
        not gone out) reads nothing: it starts from what that turn left
        (``keep``), the chat row as it wrote it, which nobody else can have
        changed since (everything that changes a chat row holds its lock),
        with one exception: a draft agent or LLM configuration is edited in
        place without the lock. So such a turn checks its configurations'
        ``updated_at`` before a tool runs (a read) or in the statement that
        writes it (a guard); if they changed, nothing was written and the
        turn starts over from a fresh read, still under its lock. Streaming
        turns (their text is already out) and turns with an Idempotency-Key
        (the stored answer is not in the memo) read as every turn does.
        """
        request_hash = hashlib.sha256(content.encode()).hexdigest()
        to_read = ChatRead(chat_id, workspace_id, idempotency_key) if self.locks.reads_with_lock else None
        async with self.locks.hold(chat_id, to_read) as found:
            # Reads under the turn lock need no transaction: nothing else can
            # change this chat's history until we let go.
            read: _Read | None = None
            while True:
                if read is None:
                    read = await _read(self.engine, found, chat_id, workspace_id, idempotency_key,
                                       self._history.get(chat_id), trust_memo=on_delta is None,
                                       reader=self._on_loop if self._writes.idle() else None)
                    found = None  # a second read (_Stale) reads it all
                try:
                    return await self._turn(
                        read, chat_id=chat_id, workspace_id=workspace_id, content=content,
                        request_hash=request_hash, idempotency_key=idempotency_key, on_delta=on_delta,
                    )
                except _Stale as stale:
                    read = stale.read

    async def _turn(
        self,
        read: _Read,
        *,
        chat_id: str,
        workspace_id: int,
        content: str,
        request_hash: str,
        idempotency_key: str | None,
        on_delta: OnDelta | None,
    ) -> TurnAnswer:
        row = read.chat
        if row is None:
            raise chat_not_found(chat_id)
        if read.earlier is not None:
            if read.earlier.request_hash != request_hash:
                raise Conflict(
                    "this Idempotency-Key was used for a different message on this chat",
                    code="idempotency_key_reused",
                )
            return TurnAnswer(body=read.earlier.response, replayed=True)
        if row.status != "ongoing":
            raise chat_ended(row)
        history = _top_up(read.base, read)
        self._remember(chat_id, history)

        async def confirm() -> None:
            """An unchecked read's configurations, checked now (before a tool runs)."""
            if read.unchecked:
                fresh = await _read(self.engine, None, chat_id, workspace_id, None, history)
                if fresh.chat is None or _config_times(fresh.chat) != _config_times(row):
                    raise _Stale(fresh)
                read.unchecked = False

        started = utcnow()
        versions = Versions(agent=row.agent_config, llm=row.llm_config)
        effects = tools.TurnEffects(state=row.current_state, collected=dict(row.collected_dynamic_variables or {}))
        asked = Message(role="user", content=content)
        replies = await self._converse(row, versions, history.messages, asked, effects, started, on_delta, confirm)

        seq = row.message_count
        user = {
            "id": new_id("msg"), "chat_id": chat_id, "seq": seq, "role": "user", "content": content,
            "name": None, "tool_calls": None, "model": None, "prompt_tokens": 0,
            "completion_tokens": 0, "created_at": started,
        }
        model = row.llm_config["model"]
        agents = [
            {
                "id": new_id("msg"), "chat_id": chat_id, "seq": seq + 1 + i, "role": "assistant",
                "content": r.reply.content, "name": None, "tool_calls": r.tool_calls, "model": model,
                "prompt_tokens": r.reply.prompt_tokens, "completion_tokens": r.reply.completion_tokens,
                "created_at": r.at,
            }
            for i, r in enumerate(replies)
        ]
        now = agents[-1]["created_at"]
        body = {"messages": [_message_json(agent) for agent in agents]}
        after = {"b_chat_id": chat_id, "b_count": seq + 1 + len(agents), "b_user_at": started, "b_agent_at": now}
        tool_changes = {"b_state": effects.state, "b_collected": effects.collected} if effects.changed else None
        idempotent = (
            {"chat_id": chat_id, "key": idempotency_key, "request_hash": request_hash,
             "response": body, "created_at": now}
            if idempotency_key else None
        )

        turn = _TurnWrite([user, *agents], after, tool_changes, idempotent)
        updated = ending = None
        if effects.end_chat or wants(row.agent_config, "transcript_updated"):
            await confirm()
            # Webhooks and the end of the chat go through the ORM, in the
            # same transaction as the messages.
            async with self.engine.begin() as conn:
                await conn.run_sync(lambda sync_conn: _write_turn(sync_conn, turn))
                updated = await _transcript_updated(conn, chat_id, row.agent_config)
                if effects.end_chat:
                    ending = await self._finish(conn, chat_id, now)
        else:  # with other chats' turns
            turn.guard = _config_times(row) if read.unchecked else None
            if not await self._writes.write(turn):
                if turn.guard is not None:
                    raise _Stale()
                raise chat_not_found(chat_id)  # gone meanwhile (deleted with its workspace)
        if updated is not None:
            jobs.committed(updated)
        if ending is not None:
            jobs.committed(ending)
            self.forget(chat_id)
            return TurnAnswer(body=body)
        history.messages.append(asked)
        for agent in agents:
            history.messages.extend(tools.history_messages("assistant", agent["content"], agent["tool_calls"]))
        history.rows += 1 + len(agents)
        self._remember(chat_id, history)
        if self.locks.reads_with_lock:  # the chat row as this turn left it, for the next turn (HeldOver)
            changes = {"current_state": effects.state, "collected_dynamic_variables": effects.collected}
            self.locks.keep(chat_id, row._replace(
                message_count=after["b_count"], last_user_message_at=started, last_agent_message_at=now,
                **(changes if effects.changed else {}),
            ))
        return TurnAnswer(body=body)

    async def _converse(
        self,
        row: Any,
        versions: Versions,
        history: list[dict[str, Any]],
        asked: Message,
        effects: tools.TurnEffects,
        started: datetime,
        on_delta: OnDelta | None,
        confirm: Callable[[], Awaitable[None]],
    ) -> list[_Reply]:
        """Call the model, run the tools it asks for, call it again: every
        reply, in order. ``confirm()`` comes before the first tool runs."""
        llm_config = versions.llm
        model = llm_config["model"]
        toolbox = tools.toolbox(llm_config, effects.state) if tools.has_tools(llm_config) else None
        system = _system_prompt(row, versions, now=started)
        conversation = [*history, asked]
        replies: list[_Reply] = []
        context: tools.ChatContext | None = None
        while True:
            rounds = len(replies)
            last_call = bool(replies) and (rounds >= MAX_TOOL_ROUNDS or effects.end_chat)
            request = ModelRequest(
                messages=[*([{"role": "system", "content": system}] if system else []), *conversation],
                temperature=llm_config.get("model_temperature", 0.0),
                tools=toolbox.definitions if toolbox else None,
                tool_choice="none" if toolbox and last_call else None,
            )
            reply = await self.registry.complete(model, request, on_delta)
            if not reply.tool_calls:
                replies.append(_Reply(reply, utcnow(), None))
                return replies
            if last_call:
                # A provider that ignored tool_choice: keep the calls visible,
                # unrun, each with a result so the history stays well formed.
                reason = "not run: the chat is ending" if effects.end_chat else (
                    f"not run: this turn reached its limit of {MAX_TOOL_ROUNDS} tool rounds"
                )
                replies.append(_Reply(reply, utcnow(), [tools.not_run(call, reason) for call in reply.tool_calls]))
                return replies
            if context is None:
                await confirm()
            if context is None or effects.changed:
                context = tools.ChatContext(
                    chat_id=row.id, agent_id=row.agent_id, webhook_key=row.webhook_key,
                    variables=chat_variables(_ChatView(row, effects), versions),
                )
            state_before = effects.state
            calls = []
            for call in reply.tool_calls:
                result = await self.tools.run(call, toolbox, effects, context)
                calls.append({**call, "result": result.as_json()})
            replies.append(_Reply(reply, utcnow(), calls))
            conversation.extend(tools.history_messages("assistant", reply.content, calls))
            if effects.state != state_before:
                toolbox = tools.toolbox(llm_config, effects.state)
            if effects.changed:  # the next call sees the new state's prompt and the collected values
                system = _system_prompt(_ChatView(row, effects), versions, now=started)

    async def _finish(self, conn: AsyncConnection, chat_id: str, now: datetime) -> AsyncSession:
        """End the chat (the end_chat tool) inside the turn's write transaction.

        ``finish_chat`` speaks ORM; a session bound to the turn's connection
        joins its transaction without committing it, so the end, its webhook
        and its analysis job commit or roll back with the turn's messages.
        """
        async with AsyncSession(bind=conn, expire_on_commit=False, autoflush=False) as session:
            chat = await session.get(Chat, chat_id)
            assert chat is not None  # read under the turn lock a moment ago
            await lifecycle.finish_chat(session, chat=chat, reason=END_REASON, now=now, registry=self.registry)
            await session.flush()
        return session


async def _transcript_updated(
    conn: AsyncConnection, chat_id: str, agent_config: dict[str, Any]
) -> AsyncSession | None:
    """Queue the ``transcript_updated`` webhook in the turn's own transaction, if
    the agent wants it: kept or dropped with the turn, and queued before the
    ``chat_ended`` of an ``end_chat`` tool. A turn nobody listens to costs nothing."""
    if not wants(agent_config, "transcript_updated"):
        return None
    async with AsyncSession(bind=conn, expire_on_commit=False, autoflush=False) as session:
        chat = await session.get(Chat, chat_id)
        assert chat is not None  # read under the turn lock a moment ago
        await lifecycle.emit(session, chat, "transcript_updated", agent_config)
        await session.flush()
    return session


def _system_prompt(chat: Any, versions: Versions, *, now: Any) -> str:
    llm = versions.llm
    parts = [llm.get("general_prompt") or ""]
    if chat.current_state:
        for state in llm.get("states") or []:
            if state["name"] == chat.current_state and state.get("state_prompt"):
                parts.append(state["state_prompt"])
    template = "\n\n".join(p for p in parts if p)
    return render(template, chat_variables(chat, versions), now=now, timezone=versions.agent["timezone"])
