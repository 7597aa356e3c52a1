"""One turn at a time per chat, in arrival order, across processes.

Two layers. In a process, an ``asyncio.Lock`` per chat queues requests in the
order they reach it (asyncio locks are FIFO), so only the head of each chat's
queue ever touches the cross-process layer. Across processes:

- PostgreSQL: a session-level advisory lock per chat, taken with
  ``pg_try_advisory_lock`` on one dedicated connection per process. Nothing
  waits on the database (no connection is held per waiting request); if the
  process dies, its connection closes and its locks go with it.
- SQLite: a POSIX byte-range lock per chat on a lock file beside the
  database, which the kernel drops when the process dies.

The head of a queue polls the cross-process lock with a short backoff; that
only happens when two processes serve the same chat at the same moment.
An advisory lock is let go after the turn has answered (its round trip is
not the client's to wait for); the process's next turn on the chat waits.
"""

from __future__ import annotations

import asyncio
import fcntl
import hashlib
import logging
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

_MAX_WAIT_S = 0.02
logger = logging.getLogger(__name__)


def lock_key(chat_id: str) -> int:
    """A signed 63-bit key (fits PostgreSQL's bigint and a file offset)."""
    return int.from_bytes(hashlib.blake2b(chat_id.encode(), digest_size=8).digest(), "big") >> 1


class _PgAdvisory:
    # Letting go is a round trip to PostgreSQL: it happens after the turn's
    # answer has gone out, not before.
    release_later = True

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        self.conn: AsyncConnection | None = None
        self.raw: Any = None
        self.mutex = asyncio.Lock()

    async def _execute(self, sql: str, key: int) -> bool:
        async with self.mutex:
            if self.conn is None or self.conn.closed:
                self.conn = await self.engine.connect()
                await self.conn.execution_options(isolation_level="AUTOCOMMIT")
                # Two tiny statements per turn: straight to asyncpg, which
                # costs a fifth of going through SQLAlchemy's execute.
                self.raw = (await self.conn.get_raw_connection()).driver_connection
            try:
                return bool(await self.raw.fetchval(sql, key))
            except Exception:
                # A broken connection lost its locks with it; start afresh.
                await self._reset()
                raise

    async def try_acquire(self, key: int) -> bool:
        return await self._execute("SELECT pg_try_advisory_lock($1)", key)

    async def release(self, key: int) -> None:
        await self._execute("SELECT pg_advisory_unlock($1)", key)

    async def _reset(self) -> None:
        if self.conn is not None:
            try:
                await self.conn.close()
            except Exception:  # noqa: BLE001 - already broken; closing is best effort
                pass
        self.conn = None
        self.raw = None

    async def aclose(self) -> None:
        async with self.mutex:
            await self._reset()


class _FileLocks:
    release_later = False  # one system call

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)

    async def try_acquire(self, key: int) -> bool:
        try:
            fcntl.lockf(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB, 1, key)
        except (BlockingIOError, PermissionError):
            return False
        return True

    async def release(self, key: int) -> None:
        fcntl.lockf(self.fd, fcntl.LOCK_UN, 1, key)

    async def aclose(self) -> None:
        os.close(self.fd)


class TurnLocks:
    def __init__(self, engine: AsyncEngine, *, lock_file: Path | None) -> None:
        self._local: dict[str, tuple[asyncio.Lock, int]] = {}
        self._shared = _FileLocks(lock_file) if lock_file else _PgAdvisory(engine)
        self._releasing: set[asyncio.Task[None]] = set()

    @asynccontextmanager
    async def hold(self, chat_id: str) -> AsyncIterator[None]:
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
            while not await self._shared.try_acquire(key):
                await asyncio.sleep(wait)
                wait = min(wait * 2, _MAX_WAIT_S)
        except BaseException:
            self._let_go(chat_id, lock)
            raise
        try:
            yield
        finally:
            if self._shared.release_later:
                # The process's next turn on this chat still waits for the
                # release (it needs the local lock, let go only afterwards);
                # only this turn's answer no longer does.
                task = asyncio.create_task(self._release(chat_id, lock, key))
                self._releasing.add(task)
                task.add_done_callback(self._releasing.discard)
            else:
                await self._release(chat_id, lock, key)

    async def _release(self, chat_id: str, lock: asyncio.Lock, key: int) -> None:
        try:
            await self._shared.release(key)
        except Exception:
            if not self._shared.release_later:
                raise
            # Nobody awaits this one. The connection that failed was closed,
            # and its advisory locks went with it.
            logger.warning("letting go of the turn lock of %s failed", chat_id, exc_info=True)
        finally:
            self._let_go(chat_id, lock)

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
        while self._releasing:
            await asyncio.gather(*self._releasing, return_exceptions=True)

    async def aclose(self) -> None:
        await self.settled()
        await self._shared.aclose()
