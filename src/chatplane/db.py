"""Engine, sessions and migrations.

The session owns the transaction: services only ``flush()``; the request (or
the job, the CLI command) commits once, or rolls back on any error.
"""

from __future__ import annotations

import collections
import functools
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

from alembic import command
from alembic.config import Config
from alembic.script import ScriptDirectory
from sqlalchemy import DateTime, event, select
from sqlalchemy.engine import Connection, Dialect
from sqlalchemy.exc import MultipleResultsFound, NoResultFound
from sqlalchemy.ext.asyncio import (
    AsyncConnection,
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.pool import NullPool
from sqlalchemy.types import TypeDecorator
from sqlalchemy.util import await_only, greenlet_spawn

from chatplane import text
from chatplane.db_sqlite import PooledConnection, begin_immediate
from chatplane.settings import Settings

MIGRATIONS_DIR = Path(__file__).parent / "migrations"
T = TypeVar("T")
# An execution option: SQLite's begin hook then starts no transaction (reads).


def utcnow() -> datetime:
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    """A timezone-aware UTC datetime on every backend (SQLite keeps no zone)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def create_engine(settings: Settings, *, pooled: bool = True) -> AsyncEngine:
    url = settings.resolved_database_url
    if not url.startswith("sqlite"):
        if not pooled:
            return create_async_engine(url, poolclass=NullPool, json_deserializer=text.loads)
        # Every connection is kept: the pool closes an overflow connection
        # when it is returned, and under load that meant a new connection
        # (and a new backend) every few turns.
        return create_async_engine(
            url, pool_size=settings.db_pool_size, max_overflow=0, pool_use_lifo=True, json_deserializer=text.loads
        )

    settings.data_dir.mkdir(parents=True, exist_ok=True)
    path = str(settings.sqlite_path)
    # One connection per process: several pooled SQLite connections in one
    # process busy-wait on each other's write locks (p99 near 1 s measured).
    # Opened (with its settings) by PooledConnection, for run_unit.
    engine = create_async_engine(
        url,
        async_creator=lambda: PooledConnection.open(path),
        pool_size=1,
        max_overflow=0,
        pool_timeout=60,
        # Every use of a connection ends its own transaction (context
        # managers commit or roll back), so the pool's extra ROLLBACK on
        # check-in is a wasted round trip to the driver thread.
        pool_reset_on_return=None,
        # A JSON column read back never carries a lone surrogate or NUL (rows
        # stored before the edge refused them): see chatplane.text.
        json_deserializer=text.loads,
    )
    event.listen(engine.sync_engine, "begin", begin_immediate)
    return engine


async def run_unit(
    engine: AsyncEngine, work: Callable[[Connection], T], *, write: bool, one_statement: bool = False
) -> T:
    """Run ``work(connection)``, sync SQLAlchemy, as one unit: inside one
    committed transaction when ``write``, else outside any (reads).

    ``one_statement``: on PostgreSQL the work is a single statement, which the
    server runs atomically by itself, so a write goes out in autocommit: no
    BEGIN and COMMIT round trips.

    On SQLite the whole unit runs in one go on the pooled connection's own
    thread (``PooledConnection.run``), not statement by statement through
    aiosqlite. On PostgreSQL a
    write of several statements is ``AsyncConnection.run_sync`` in a
    transaction; a read, or a write of one statement, gets a connection that
    sends its statements straight to asyncpg outside any transaction
    (``_Asyncpg``: ``execute(...)`` with ``one``, ``one_or_none``, ``all``,
    ``scalar``, and ``scalar(...)``; no expanding ``IN`` parameters; errors
    are asyncpg's own).
    """
    if engine.dialect.name != "sqlite":
        if write and not one_statement:
            async with engine.begin() as conn:
                return await conn.run_sync(work)
        # Outside a transaction (reads, and a write that is one statement):
        # straight to asyncpg, see _Asyncpg.
        async with engine.connect() as conn:
            driver = (await conn.get_raw_connection()).driver_connection
            try:
                return await greenlet_spawn(work, _Asyncpg(driver, engine.dialect))
            except BaseException:
                if driver.is_closed():  # SQLAlchemy did not see it die: keep it out of the pool
                    await conn.invalidate()
                raise

    async with engine.connect() as conn:
        pooled: PooledConnection = (await conn.get_raw_connection()).driver_connection
        return await pooled.run(work, write=write)


class _Asyncpg:
    """The part of a SQLAlchemy ``Connection`` a unit uses, straight on asyncpg.

    Reading a chat row through SQLAlchemy's execute cost ~220 us of CPU against
    ~100 us for the same SQL on asyncpg (and the autocommit set-up of the pooled
    connection ~35 us more): on PostgreSQL, where every statement is a round
    trip anyway, the statements of reads and one-statement writes are compiled
    by SQLAlchemy once and then sent as they are. Outside a transaction,
    asyncpg runs each on its own.
    Results come back as named tuples (asyncpg already decodes JSON and aware
    UTC timestamps on SQLAlchemy's pooled connections). Runs inside
    ``greenlet_spawn``, so the unit's code stays synchronous, as on SQLite.
    """

    def __init__(self, driver: Any, dialect: Dialect) -> None:
        self.driver = driver
        self.dialect = dialect

    def execute(self, statement: Any, params: dict[str, Any] | None = None) -> _Rows:
        return await_only(fetch(self.driver, self.dialect, statement, params))

    def scalar(self, statement: Any, params: dict[str, Any] | None = None) -> Any:
        return self.execute(statement, params).scalar()


class OwnConnection:
    """A PostgreSQL connection of the process's own, for statements sent
    straight to asyncpg outside any transaction: taken from the pool on first
    use and again once it has closed, with ``setup`` sent on each new one, and
    never given back (its session keeps advisory locks or settings of its
    own): ``discard`` closes it for good."""

    def __init__(self, engine: AsyncEngine, setup: str | None = None) -> None:
        self.engine = engine
        self.setup = setup
        self.generation = 0  # connections made so far: what was held on an earlier one is gone
        self._conn: AsyncConnection | None = None
        self.raw: Any = None  # the asyncpg connection, while there is one

    async def driver(self) -> Any:
        """The asyncpg connection; a new one if there is none or it has closed."""
        if self.raw is None or self.raw.is_closed():
            await self.discard()
            self._conn = await self.engine.connect()
            self.raw = (await self._conn.get_raw_connection()).driver_connection
            self.generation += 1
            if self.setup:
                await self.raw.execute(self.setup)
        return self.raw

    def is_open(self) -> bool:
        return self.raw is not None and not self.raw.is_closed()

    async def discard(self) -> None:
        conn, self._conn, self.raw = self._conn, None, None
        if conn is None:
            return
        try:
            await conn.invalidate()
            await conn.close()
        except Exception:  # noqa: BLE001 - already broken; closing is best effort
            pass


async def fetch(driver: Any, dialect: Dialect, statement: Any, params: dict[str, Any] | None = None) -> _Rows:
    """``statement`` (SQLAlchemy Core) sent straight to an asyncpg connection:
    compiled once, its parameters converted by their types, its rows as
    named tuples."""
    compiled, processors = _compiled(statement, dialect)
    values = compiled.construct_params(params or {})
    args = [
        processors[name](values[name]) if name in processors else values[name]
        for name in compiled.positiontup or ()
    ]
    records = await driver.fetch(compiled.string, *args)
    if not records:
        return _Rows()
    row = _row_type(tuple(records[0].keys()))
    return _Rows(row._make(record.values()) for record in records)


# id(statement) -> (statement, compiled, its parameters' bind conversions)
_compiled_statements: dict[int, tuple[Any, Any, dict[str, Callable[[Any], Any]]]] = {}


def _compiled(statement: Any, dialect: Dialect) -> tuple[Any, dict[str, Callable[[Any], Any]]]:
    """The statement compiled for ``dialect``, and the conversion of each
    parameter its type asks for on this dialect (``TypeEngine.bind_processor``),
    once (the hot path's statements are built once, at import)."""
    found = _compiled_statements.get(id(statement))
    if found is not None and found[0] is statement:
        return found[1], found[2]
    compiled = statement.compile(dialect=dialect)
    if any(bind.expanding for bind in compiled.binds.values()) or compiled.literal_execute_params:
        raise NotImplementedError("a unit on asyncpg takes no expanding parameters")
    processors = {
        name: processor for name, bind in compiled.binds.items()
        if (processor := bind.type.dialect_impl(dialect).bind_processor(dialect)) is not None
    }
    if len(_compiled_statements) >= 256:  # statements built on the fly (tests, tools): keep it bounded
        _compiled_statements.clear()
    _compiled_statements[id(statement)] = (statement, compiled, processors)
    return compiled, processors


@functools.lru_cache(maxsize=256)
def _row_type(keys: tuple[str, ...]) -> Any:
    return collections.namedtuple("Row", keys, rename=True)


class _Rows(list[Any]):
    """What a unit asks of a result."""

    def one_or_none(self) -> Any:
        if len(self) > 1:
            raise MultipleResultsFound("more than one row")
        return self[0] if self else None

    def one(self) -> Any:
        if len(self) != 1:
            raise NoResultFound("no row") if not self else MultipleResultsFound("more than one row")
        return self[0]

    def all(self) -> list[Any]:
        return list(self)

    def scalar(self) -> Any:
        return self[0][0] if self else None


def create_sessionmaker(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    return async_sessionmaker(engine, expire_on_commit=False, autoflush=False)


@asynccontextmanager
async def transaction(sessions: async_sessionmaker[AsyncSession]) -> AsyncIterator[AsyncSession]:
    """A session whose work is committed on success and rolled back on error
    (a commit that queued jobs wakes the process's workers: ``jobs.committed``)."""
    async with sessions() as session:
        try:
            yield session
            await session.commit()
        except BaseException:
            await session.rollback()
            raise


def insert_of(session: AsyncSession) -> Any:
    """``insert`` of the session's database, the one with ``on_conflict_do_*``
    (PostgreSQL's and SQLite's have the same methods)."""
    bind = session.bind
    return pg_insert if bind is not None and bind.dialect.name == "postgresql" else sqlite_insert


async def get_scoped(
    session: AsyncSession,
    key: Any,
    value: Any,
    *,
    workspace_id: int,
    missing: Callable[[], Exception],
    for_update: bool = False,
) -> Any:
    """The row of ``key``'s table whose ``key`` is ``value`` in this workspace.

    Another workspace's row raises ``missing()`` exactly like no row at all.
    """
    model = key.class_
    query = select(model).where(key == value, model.workspace_id == workspace_id)
    if for_update:
        query = query.with_for_update()
    row = await session.scalar(query)
    if row is None:
        raise missing()
    return row


def alembic_config(settings: Settings) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.attributes["settings"] = settings
    return config


def schema_head() -> str:
    """The schema revision ``migrate`` brings a database to."""
    return ScriptDirectory(str(MIGRATIONS_DIR)).get_current_head()


def migrate(settings: Settings, revision: str = "head") -> None:
    """Bring the database schema to ``revision`` (synchronous; runs its own loop)."""
    if settings.is_sqlite:
        settings.data_dir.mkdir(parents=True, exist_ok=True)
    command.upgrade(alembic_config(settings), revision)
