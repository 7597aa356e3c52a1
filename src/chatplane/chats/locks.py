"""One turn at a time per chat, in arrival order, across processes.

Two layers. In a process, an ``asyncio.Lock`` per chat queues requests in the
order they reach it (asyncio locks are FIFO), so only the head of each chat's
queue ever touches the cross-process layer. Across processes:

- PostgreSQL: a session-level advisory lock per chat, taken with
  ``pg_try_advisory_lock`` on one dedicated connection per process, in the
  same round trip that reads the chat under it (``chatplane_turn_locks``,
  batched: see ``AdvisoryLocks``). Nothing waits on the database (no
  connection is held per waiting request); if the process dies, its
  connection closes and its locks go with it.
- SQLite: a POSIX byte-range lock per chat on a lock file beside the
  database, which the kernel drops when the process dies.

The head of a queue polls the cross-process lock with a short backoff; that
only happens when two processes serve the same chat at the same moment.
An advisory lock is let go after the turn has answered (its round trip is
not the client's to wait for, nor the process's next turn's on the chat:
PostgreSQL counts a session's holds of one key). A turn that comes for the
chat while its release is still waiting to go out takes the lock back
without a round trip (``HeldOver``), with what the last holder left for it.
"""

from __future__ import annotations

import asyncio
import fcntl
import hashlib
import logging
import os
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy.ext.asyncio import AsyncEngine

from chatplane.batching import Batcher
from chatplane.chats.turn.statements import lock_reads
from chatplane.db import OwnConnection

_MAX_WAIT_S = 0.02
# PostgreSQL: how long a release waits for a lock statement to go out with.
# Another process wanting the same chat waits that much longer, at most.
RELEASE_WAIT_S = 0.002
# PostgreSQL: a lock is taken back without a round trip (``HeldOver``) only
# within this long of the round trip that took it.
HOLD_OVER_S = 0.25
logger = logging.getLogger(__name__)


def lock_key(chat_id: str) -> int:
    """A signed 63-bit key (fits PostgreSQL's bigint and a file offset)."""
    return int.from_bytes(hashlib.blake2b(chat_id.encode(), digest_size=8).digest(), "big") >> 1


@dataclass(frozen=True, slots=True)
class ChatRead:
    """What a turn reads in the round trip that takes its lock (PostgreSQL)."""

    chat_id: str
    workspace_id: int
    idempotency_key: str | None


@dataclass(frozen=True, slots=True)
class HeldOver:
    """What ``hold`` yields for a lock taken back before its release went out
    (PostgreSQL): the lock was never let go, so nobody else held it since,
    and ``memo`` is what its last holder left (``TurnLocks.keep``), or None."""

    memo: Any
    since: float  # time.monotonic() of the round trip that took the lock


@dataclass(frozen=True, slots=True)
class _Release:
    key: int
    chat_id: str
    memo: Any
    since: float
    connection: int  # OwnConnection.generation when the lock was taken (-1: not known)


@dataclass(frozen=True, slots=True)
class _Asked:
    key: int
    read: ChatRead | None


# Migration 0007: lets go of the first array's locks, tries the second's, and
# for each lock got (and chat asked for) reads the chat under it.
_TURN_LOCKS = "SELECT got, chat, earlier FROM chatplane_turn_locks($1, $2, $3, $4, $5)"


class AdvisoryLocks:
    """Session-level advisory locks on one connection of the process's own,
    asked for in batches: whatever releases and acquisitions are waiting when
    the connection is free go out as one statement (``chatplane_turn_locks``),
    and a turn's chat is read in that same round trip, under its lock.

    Letting go is queued, not awaited: the turn's answer
    does not wait for it, and the process's next turn on the chat need not
    either, because PostgreSQL counts a session's locks on one key (taken
    twice, let go twice). A release waits up to ``RELEASE_WAIT_S`` for the
    next acquisition to go out with (any other chat's turn under load), then
    goes alone. A turn on the same chat that comes meanwhile (a client's
    next message) takes the lock back instead: the release is dropped, no
    round trip, and the turn gets ``HeldOver`` with the memo the last holder
    left. Only within ``HOLD_OVER_S`` of the round trip that took the lock,
    and only while the connection that took it is open.
    """

    reads_with_lock = True
    release_wait_s = RELEASE_WAIT_S

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        # The reads chatplane_turn_locks runs under the lock, prepared on this
        # connection from the statements every other read of a turn uses.
        self.conn = OwnConnection(engine, lock_reads())
        # Releases (put: nobody waits) and acquisitions (asked), sent together.
        self._batches: Batcher[_Release | _Asked, Any] = Batcher(self._batch, unclaimed=self._unclaimed)
        # On which connection (OwnConnection.generation) each lock held now
        # was taken: one taken on a connection since replaced is gone, and is
        # never taken back.
        self._taken_on: dict[int, int] = {}

    async def try_acquire(self, key: int, read: ChatRead | None = None) -> tuple[bool, Any]:
        taken = self._take_back(key)
        if taken is not None:
            return True, taken
        row = await self._batches.ask(_Asked(key, read))
        return row["got"], row

    def _take_back(self, key: int) -> HeldOver | None:
        for release in self._batches.waiting():
            if isinstance(release, _Release) and release.key == key:
                if (
                    time.monotonic() - release.since >= HOLD_OVER_S
                    or release.connection != self.conn.generation
                    or not self.conn.is_open()
                ):
                    return None  # the acquisition goes out with the release, as any other
                self._batches.withdraw(lambda one: one is release)
                self._taken_on[key] = release.connection
                return HeldOver(release.memo, release.since)
        return None

    async def release(self, key: int, chat_id: str, memo: Any = None, since: float = 0.0) -> None:
        # Waits a moment for a statement to ride along with: a client's next
        # message on this chat (or any lock asked for meanwhile).
        release = _Release(key, chat_id, memo, since, self._taken_on.pop(key, -1))
        self._batches.put(release, within=self.release_wait_s)

    async def _batch(self, batch: list[_Release | _Asked]) -> list[Any]:
        releases = [one for one in batch if isinstance(one, _Release)]
        asked = [one for one in batch if isinstance(one, _Asked)]
        try:
            rows = await self.round_trip(releases, asked)
        except Exception as exc:  # noqa: BLE001 - logged; the acquisitions are tried once more
            # A broken connection lost its locks with it: the releases are
            # moot, and the acquisitions are tried once more on a new connection.
            await self._reset()
            for release in releases:
                logger.warning("letting go of the turn lock of %s failed", release.chat_id, exc_info=exc)
            rows = await self.round_trip([], asked) if asked else []
        connection = self.conn.generation
        found = iter(rows)
        outcomes: list[Any] = []
        for one in batch:
            row = next(found) if isinstance(one, _Asked) else None
            if row is not None and row["got"]:
                self._taken_on[one.key] = connection
            outcomes.append(row)
        return outcomes

    def _unclaimed(self, one: _Release | _Asked, row: Any) -> None:
        # Its turn was cancelled while it waited: nobody holds this lock.
        if isinstance(one, _Asked) and row["got"]:
            chat_id = one.read.chat_id if one.read else ""
            self._batches.put(_Release(one.key, chat_id, None, 0.0, self._taken_on.pop(one.key, -1)))

    async def round_trip(self, releases: list[_Release], asked: list[_Asked]) -> list[Any]:
        """One statement: let go of ``releases``, try ``asked`` (and read their chats)."""
        reads = [one.read for one in asked]
        driver = await self.conn.driver()  # a new connection if the last one was seen closed
        # A lock taken on a connection since replaced died with it: there is
        # nothing to let go (and the new connection may hold the key anew).
        keys = []
        for release in releases:
            if release.connection in (self.conn.generation, -1):
                keys.append(release.key)
            else:
                logger.warning("letting go of the turn lock of %s failed: its connection was lost", release.chat_id)
        # Straight to asyncpg: one small statement per batch.
        return await driver.fetch(
            _TURN_LOCKS,
            keys,
            [one.key for one in asked],
            [read.chat_id if read else None for read in reads],
            [read.workspace_id if read else None for read in reads],
            [read.idempotency_key if read else None for read in reads],
        )

    async def _reset(self) -> None:
        # The connection is closed, not given back to the pool: its session's
        # locks go with it (a statement that failed on a live connection would
        # otherwise leave them held in the pool). So none may be taken back.
        self._batches.withdraw(lambda one: isinstance(one, _Release))
        await self.conn.discard()

    async def settled(self) -> None:
        await self._batches.settled()

    async def aclose(self) -> None:
        await self.settled()
        await self._reset()


class FileLocks:
    reads_with_lock = False  # a system call; the turn reads after it

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)

    async def try_acquire(self, key: int, read: ChatRead | None = None) -> tuple[bool, None]:
        try:
            fcntl.lockf(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB, 1, key)
        except (BlockingIOError, PermissionError):
            return False, None
        return True, None  # reads nothing: the turn reads after

    async def release(self, key: int, chat_id: str, memo: Any = None, since: float = 0.0) -> None:
        fcntl.lockf(self.fd, fcntl.LOCK_UN, 1, key)

    async def settled(self) -> None:
        pass

    async def aclose(self) -> None:
        os.close(self.fd)


class TurnLocks:
    def __init__(self, engine: AsyncEngine, *, lock_file: Path | None) -> None:
        self._local: dict[str, tuple[asyncio.Lock, int]] = {}
        self._memos: dict[str, Any] = {}  # chat id -> what its holder leaves to the next (keep)
        # The cross-process layer: PostgreSQL's advisory locks or a lock file.
        self.shared: AdvisoryLocks | FileLocks = FileLocks(lock_file) if lock_file else AdvisoryLocks(engine)

    @property
    def reads_with_lock(self) -> bool:
        """Whether ``hold(chat_id, read)`` reads the chat in the lock's round trip."""
        return self.shared.reads_with_lock

    @asynccontextmanager
    async def hold(self, chat_id: str, read: ChatRead | None = None) -> AsyncIterator[Any]:
        """Hold the chat's turn lock; yields what ``read`` found under it (a row
        of ``got, chat, earlier``) where ``reads_with_lock``, ``HeldOver`` for
        a lock taken back (nothing read), else None."""
        lock, users = self._local.get(chat_id, (None, 0))
        if lock is None:
            lock = asyncio.Lock()
        self._local[chat_id] = (lock, users + 1)
        try:
            await lock.acquire()
        except BaseException:
            self._leave(chat_id)
            raise
        try:
            key = lock_key(chat_id)
            wait = 0.001
            while True:
                got, found = await self.shared.try_acquire(key, read)
                if got:
                    break
                await asyncio.sleep(wait)
                wait = min(wait * 2, _MAX_WAIT_S)
        except BaseException:
            self._let_go(chat_id, lock)
            raise
        since = found.since if isinstance(found, HeldOver) else time.monotonic()
        try:
            yield found
        finally:
            try:
                # PostgreSQL: queued, sent after the answer has gone out.
                await self.shared.release(key, chat_id, self._memos.pop(chat_id, None), since)
            finally:
                self._let_go(chat_id, lock)

    def busy_chats(self) -> list[str]:
        """The chats with a turn holding or waiting for their lock in this process."""
        return list(self._local)

    def keep(self, chat_id: str, memo: Any) -> None:
        """Leave ``memo`` to the next holder of the chat's lock if it takes the
        lock back (``HeldOver``). Only the holder may call this; a holder that
        does not leaves nothing."""
        self._memos[chat_id] = memo

    def _let_go(self, chat_id: str, lock: asyncio.Lock) -> None:
        lock.release()
        self._leave(chat_id)

    def _leave(self, chat_id: str) -> None:
        lock, users = self._local[chat_id]
        if users == 1:
            del self._local[chat_id]
        else:
            self._local[chat_id] = (lock, users - 1)

    async def settled(self) -> None:
        """Wait for the releases still going out."""
        await self.shared.settled()

    async def aclose(self) -> None:
        await self.settled()
        await self.shared.aclose()
