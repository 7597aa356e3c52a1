"""What a turn reads under its chat's lock: the chat row (with its agent's and
LLM's configurations), the answer stored under an Idempotency-Key, and the
part of the history the process's cache lacks.

The chat row a turn reads is ``READ_CHAT`` (``statements.py``); how each
database reads it fast is its store's (``postgres.py``, ``sqlite.py``).
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncEngine

from chatplane.chats import tools
from chatplane.chats.turn.statements import READ_CHAT, READ_HISTORY, READ_IDEMPOTENT
from chatplane.db import run_unit

# The per-process history cache holds at most this many model-facing
# messages in all (~300 bytes each: ~30 MiB), of the chats used last.
HISTORY_CACHE_MESSAGES = 100_000



@dataclass(slots=True)
class History:
    """The model-facing messages of a chat's first ``rows`` stored messages."""

    rows: int
    messages: list[dict[str, Any]]
    counted: int = 0  # of these messages, how many the cache's total counts


class HistoryCache:
    """Per process: chat id -> the model-facing messages of its history.

    Checked against the chat's ``message_count`` on every turn and topped up
    from the database (``top_up``), so another process's writes are never
    missed, and a long chat costs one small query per turn instead of a
    re-read. Bounded by size, not by a number of chats: while it holds more
    than ``HISTORY_CACHE_MESSAGES`` messages, the least recently used chats go
    (a long chat weighs more; the last one stays, however long).
    """

    def __init__(self) -> None:
        self._chats: OrderedDict[str, History] = OrderedDict()
        self.messages = 0  # model-facing messages held

    def get(self, chat_id: str) -> History | None:
        return self._chats.get(chat_id)

    def chats(self) -> list[str]:
        """The chats held, least recently used first."""
        return list(self._chats)

    def remember(self, chat_id: str, history: History) -> None:
        """Keep ``history`` as the chat's, most recently used."""
        earlier = self._chats.pop(chat_id, None)
        if earlier is not None and earlier is not history:
            self.messages -= earlier.counted
        self._chats[chat_id] = history
        self.messages += len(history.messages) - history.counted
        history.counted = len(history.messages)
        while self.messages > HISTORY_CACHE_MESSAGES and len(self._chats) > 1:
            _, evicted = self._chats.popitem(last=False)
            self.messages -= evicted.counted

    def forget(self, chat_id: str) -> None:
        forgotten = self._chats.pop(chat_id, None)
        if forgotten is not None:
            self.messages -= forgotten.counted


@dataclass(slots=True)
class Read:
    """What a turn reads before calling the model."""

    chat: Any  # the READ_CHAT row, or None
    earlier: Any = None  # the answer stored under this Idempotency-Key
    history_from: int = 0  # the stored messages in history_rows start at this seq
    history_rows: list[Any] | None = None  # None: the cache is up to date
    # The chat is the memo the lock's last holder left (HeldOver), not read:
    # its configurations are checked before a tool runs or the turn is written.
    unchecked: bool = False
    # The cached history this read tops up (the cache may let go of it meanwhile).
    base: History | None = None


def read_unit(
    conn: Connection,
    chat_id: str,
    workspace_id: int,
    idempotency_key: str | None,
    cached_rows: int,
    rows_at_most: int | None = None,
) -> Read:
    """The chat, the answer stored under the Idempotency-Key, and the history
    the cache lacks; not the history if that is more than ``rows_at_most``
    rows (``with_history`` then reads it apart)."""
    chat = conn.execute(READ_CHAT, {"chat_id": chat_id, "workspace_id": workspace_id}).one_or_none()
    if chat is None:
        return Read(None)
    if idempotency_key:
        earlier = conn.execute(READ_IDEMPOTENT, {"chat_id": chat_id, "key": idempotency_key}).one_or_none()
        if earlier is not None:
            return Read(chat, earlier)
    start = _history_from(chat, cached_rows)
    if start is None or (rows_at_most is not None and chat.message_count - start > rows_at_most):
        return Read(chat)
    return Read(chat, history_from=start, history_rows=_read_history(conn, chat_id, start))


def _history_from(chat: Any, cached_rows: int) -> int | None:
    """The seq from which to read the history to bring the cache up to date,
    or None when it is (or the chat takes no more turns)."""
    if chat.status != "ongoing" or cached_rows == chat.message_count:
        return None
    # Another process wrote to this chat since (or the cache is cold): top up.
    return cached_rows if cached_rows < chat.message_count else 0


def _read_history(conn: Connection, chat_id: str, start: int) -> list[Any]:
    return conn.execute(READ_HISTORY, {"chat_id": chat_id, "from_seq": start}).all()


async def read_now(
    engine: AsyncEngine, chat_id: str, workspace_id: int, idempotency_key: str | None, cached: History | None
) -> Read:
    """All a turn reads, now, in one unit on the driver's way (``db.run_unit``)."""
    cached_rows = cached.rows if cached else 0
    read = await run_unit(
        engine, lambda conn: read_unit(conn, chat_id, workspace_id, idempotency_key, cached_rows), write=False
    )
    read.base = cached
    return read


async def with_history(engine: AsyncEngine, read: Read, chat_id: str, cached: History | None) -> Read:
    """``read`` (the chat found another way: by the lock, from a memo, on the
    event loop) with the history the cache lacks, if it is not in it yet."""
    read.base = cached
    start = None if read.chat is None or read.earlier else _history_from(read.chat, cached.rows if cached else 0)
    if start is not None and read.history_rows is None:
        read.history_from = start
        read.history_rows = await run_unit(engine, lambda conn: _read_history(conn, chat_id, start), write=False)
    return read


def config_times(chat: Any) -> tuple[datetime, datetime]:
    return chat.agent_updated_at, chat.llm_updated_at


def top_up(cached: History | None, read: Read) -> History:
    """The chat's history: the cached one, with what ``read`` found added."""
    if read.history_rows is None:
        return cached or History(0, [])
    history = cached if cached is not None and read.history_from == cached.rows else History(0, [])
    for role, content, tool_calls in read.history_rows:
        history.messages.extend(tools.history_messages(role, content, tool_calls))
        history.rows += 1
    return history

