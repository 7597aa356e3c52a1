"""SQLite's side of ``db``: each connection's settings, ``BEGIN IMMEDIATE``,
the pool's connection (``PooledConnection``: aiosqlite over a sqlite3
connection of our own, and the thread ``db.run_unit`` runs a unit on), the
loop's own connection (``LoopConnection``) and the checkpoints of the
write-ahead log (``checkpoint_loop``).
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from collections.abc import Callable
from queue import SimpleQueue
from typing import Any, TypeVar

import aiosqlite
from sqlalchemy import create_engine as create_sync_engine
from sqlalchemy import event
from sqlalchemy.engine import Connection
from sqlalchemy.exc import OperationalError
from sqlalchemy.pool import StaticPool

from chatplane import text
from chatplane.settings import Settings

T = TypeVar("T")
# An execution option: this connection's work runs outside any transaction (reads).
NO_TRANSACTION = "chatplane_no_transaction"


def sqlite_pragmas(*, busy_timeout_ms: int) -> tuple[str, ...]:
    """Each SQLite connection's own settings. Checkpoints (the ones that
    fsync) run beside the requests, not in the commit that happens to cross
    the threshold: see checkpoint_loop."""
    return ("synchronous=NORMAL", "foreign_keys=ON", f"busy_timeout={busy_timeout_ms}", "wal_autocheckpoint=0")


def begin_immediate(conn: Connection) -> None:
    # A deferred transaction that later writes can fail at once with
    # SQLITE_BUSY when another process holds the lock; IMMEDIATE takes the
    # write lock up front and so honours busy_timeout instead. A connection
    # asked to autocommit (single reads) takes no lock.
    options = conn.get_execution_options()
    if options.get("isolation_level") != "AUTOCOMMIT" and not options.get(NO_TRANSACTION):
        conn.exec_driver_sql("BEGIN IMMEDIATE")


class LoopConnection:
    """SQLite: small units run right on the event loop, on a connection of
    their own, instead of on aiosqlite's thread.

    A unit there costs two thread switches and waits behind whatever the
    process's one connection is doing: ~500 us of wall time to read a chat
    row, ~600 us to write a turn, measured under ``bench/peers.py`` at one
    chat, against tens of microseconds for the same statements here (a
    commit does not fsync: WAL with ``synchronous=NORMAL``). The loop is
    blocked meanwhile, so only for a few rows found by key, and never to
    wait for a lock: ``run`` raises ``Busy`` at once if SQLite cannot take
    the one it needs (a write lock another connection holds; for a read in
    WAL mode only rare ones, such as recovery after a crash), and the caller
    then does the unit the usual way, on the driver's thread, which waits.
    A read takes no lock a writer waits for and reads the last committed
    state (autocommit: no transaction is left open to pin an old snapshot or
    hold back a checkpoint); a write is ``BEGIN IMMEDIATE`` .. ``COMMIT`` in
    one call, which nothing else on the loop can interleave with.
    """

    class Busy(Exception):
        pass

    def __init__(self, path: str) -> None:
        def connect() -> sqlite3.Connection:
            connection = sqlite3.connect(path, timeout=0, isolation_level=None, check_same_thread=False)
            for pragma in sqlite_pragmas(busy_timeout_ms=0):  # as create_engine's, but never waiting
                connection.execute(f"PRAGMA {pragma}")
            return connection

        self.engine = create_sync_engine(
            "sqlite://", creator=connect, poolclass=StaticPool, pool_reset_on_return=None, json_deserializer=text.loads
        )
        event.listen(self.engine, "begin", begin_immediate)

    def run(self, work: Callable[[Connection], T], *, write: bool = False) -> T:
        try:
            if write:
                with self.engine.begin() as conn:
                    return work(conn)
            with self.engine.connect() as conn:
                return work(conn.execution_options(**{NO_TRANSACTION: True}))
        except OperationalError as exc:
            code = getattr(exc.orig, "sqlite_errorcode", None)
            if code is not None and code & 0xFF in _BUSY:  # the primary code, whatever the extended one
                raise LoopConnection.Busy from exc
            raise

    def close(self) -> None:
        self.engine.dispose()


_BUSY = (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED)


class UnitThread:
    """A thread that runs the functions handed to it one at a time, in order.

    aiosqlite's own way (a queue, and ``call_soon_threadsafe`` back to the
    loop), with public parts. A ``ThreadPoolExecutor`` of one does the same
    with more around each call: ~10 % more wall time per unit at 16 at once
    (502 -> 557 us, measured against aiosqlite's thread; issue 14's note).
    """

    def __init__(self) -> None:
        self._queue: SimpleQueue[tuple[asyncio.Future[Any], Callable[[], Any]] | None] = SimpleQueue()
        self._thread = threading.Thread(target=self._serve, name="chatplane-sqlite-unit", daemon=True)
        self._thread.start()

    async def run(self, fn: Callable[[], T]) -> T:
        future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._queue.put((future, fn))
        return await future

    def stop(self) -> None:
        self._queue.put(None)

    def _serve(self) -> None:
        while (job := self._queue.get()) is not None:
            future, fn = job
            try:
                result = fn()
            except BaseException as exc:  # noqa: BLE001 - handed to the caller
                future.get_loop().call_soon_threadsafe(_settle, future, None, exc)
            else:
                future.get_loop().call_soon_threadsafe(_settle, future, result, None)


def _settle(future: asyncio.Future[Any], result: Any, error: BaseException | None) -> None:
    if future.done():  # its caller was cancelled; the unit ran all the same
        return
    if error is None:
        future.set_result(result)
    else:
        future.set_exception(error)


class PooledConnection(aiosqlite.Connection):
    """The pool's connection (one per process): aiosqlite, as SQLAlchemy's
    dialect wants it, over a sqlite3 connection opened here, so that
    ``run_unit`` can run a whole unit on that connection in one thread hop.

    Statement by statement, aiosqlite crosses threads three or four times each
    (~300 us of wall time per statement measured here, most of a chat turn's
    overhead): ``run`` instead runs ``work`` on a thread of this connection's
    own, with a sync engine over the same sqlite3 connection. The caller holds
    the pooled connection meanwhile (a checked-out ``AsyncConnection``), so
    aiosqlite's thread is idle and nothing else uses it. Public APIs only:
    aiosqlite's ``Connection(connector, iter_chunk_size)``, sqlite3's
    ``check_same_thread=False`` (this build is serialized: ``threadsafety`` 3).
    """

    def __init__(self, path: str) -> None:
        # (names of our own, beside aiosqlite's)
        self.database_path = path
        self.sqlite_connection: sqlite3.Connection | None = None
        super().__init__(self._open_sqlite, iter_chunk_size=64)  # opened on aiosqlite's thread
        self.unit_thread = UnitThread()
        self.unit_engine = create_sync_engine(
            "sqlite://", creator=lambda: self.sqlite_connection, poolclass=StaticPool, pool_reset_on_return=None,
            json_deserializer=text.loads,
        )
        event.listen(self.unit_engine, "begin", begin_immediate)

    def _open_sqlite(self) -> sqlite3.Connection:
        # isolation_level=None: chatplane, not the driver, starts transactions
        # (BEGIN IMMEDIATE: begin_immediate).
        raw = sqlite3.connect(self.database_path, timeout=30, isolation_level=None, check_same_thread=False)
        raw.execute("PRAGMA journal_mode=WAL")  # the database's own (kept in the file)
        for pragma in sqlite_pragmas(busy_timeout_ms=30000):
            raw.execute(f"PRAGMA {pragma}")
        self.sqlite_connection = raw
        return raw

    @classmethod
    async def open(cls, path: str) -> PooledConnection:
        return await cls(path)

    async def run(self, work: Callable[[Connection], T], *, write: bool) -> T:
        """``work`` on this connection, in one go: one committed transaction
        when ``write``, else outside any."""
        def unit() -> T:
            if write:
                with self.unit_engine.begin() as conn:
                    return work(conn)
            with self.unit_engine.connect() as conn:
                return work(conn.execution_options(**{NO_TRANSACTION: True}))

        return await self.unit_thread.run(unit)

    async def close(self) -> None:
        try:
            await super().close()
        finally:
            self.unit_thread.stop()
            self.unit_engine.dispose()


async def checkpoint_loop(settings: Settings, *, every_s: float = 2.0) -> None:
    """Fold SQLite's write-ahead log back into the database, off the request path.

    On its own connection in a thread: a PASSIVE checkpoint never blocks
    writers, and its fsyncs then cost no request any latency.
    """
    def checkpoint() -> None:
        connection = sqlite3.connect(settings.sqlite_path, timeout=30)
        try:
            connection.execute("PRAGMA wal_checkpoint(PASSIVE)")
        finally:
            connection.close()

    while True:
        await asyncio.sleep(every_s)
        try:
            await asyncio.to_thread(checkpoint)
        except sqlite3.Error:  # busy or locked: the next round will do
            pass
