"""Durable background work (the outbox pattern).

- ``enqueue`` writes a job with the caller's session, in the caller's
  transaction: a rollback drops it, a commit keeps it, a crash loses nothing.
- Workers claim jobs with a lease (``UPDATE … WHERE id IN (SELECT … FOR UPDATE
  SKIP LOCKED)`` on PostgreSQL; SQLite's single writer does the same job).
  A worker that dies keeps its jobs only until the lease runs out; then any
  worker takes them again. So a job runs at least once: handlers are
  written to be idempotent.
- A failed attempt is retried with exponential backoff; after the last one
  the job is parked as ``failed`` with its error, visible and re-runnable.
  A handler that knows retrying cannot help (a URL that may never be
  called) raises ``Permanent`` to be parked at once.
- Jobs that share an ``ordering_key`` (e.g. one chat's webhooks) run one at
  a time, oldest first.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import socket
import weakref
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import and_, bindparam, event, exists, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from sqlalchemy.orm import Session, aliased

from chatplane.db import insert_of, run_unit, transaction, utcnow
from chatplane.models import Job

log = logging.getLogger(__name__)

Handler = Callable[["JobContext", dict[str, Any]], Awaitable[None]]
HANDLERS: dict[str, Handler] = {}


def handler(kind: str) -> Callable[[Handler], Handler]:
    """Register the function that runs jobs of ``kind``."""

    def register(fn: Handler) -> Handler:
        HANDLERS[kind] = fn
        return fn

    return register


async def monitor(services: Any, one_pass: Callable[[Any], Awaitable[Any]], what: str) -> None:
    """Run ``one_pass(services)`` every ``jobs.monitor_s``, for ever: a
    monitor that queues jobs for what has come due (idle chats, URL sources
    to fetch again). Every process runs one; the jobs it queues are
    deduplicated, so they run once."""
    while True:
        try:
            await one_pass(services)
        except Exception:  # keep monitoring through a database hiccup
            log.exception("%s monitor pass failed", what)
        await asyncio.sleep(services.settings.jobs.monitor_s)


class RetryLater(Exception):
    """A handler asks to be run again later without it counting as an error."""

    def __init__(self, message: str, *, after_s: float | None = None) -> None:
        super().__init__(message)
        self.after_s = after_s


class Permanent(Exception):
    """A handler says this job can never succeed: it is parked as ``failed``
    with this message now, whatever attempts it has left."""


@dataclass
class JobContext:
    """What a handler gets besides its payload: the database and the app's services."""

    sessions: async_sessionmaker[AsyncSession]
    services: Any  # the app's state (settings, registry, turns, …)
    job_id: int
    attempt: int
    max_attempts: int

    @property
    def last_attempt(self) -> bool:
        return self.attempt >= self.max_attempts


async def enqueue(
    session: AsyncSession,
    kind: str,
    payload: dict[str, Any],
    *,
    run_at: datetime | None = None,
    ordering_key: str | None = None,
    dedupe_key: str | None = None,
    max_attempts: int = 5,
) -> None:
    """Add a job in the session's transaction. With ``dedupe_key``, a job of
    the same kind and key that already exists makes this a no-op."""
    values = {
        "kind": kind, "payload": payload, "status": "pending", "attempts": 0, "max_attempts": max_attempts,
        "run_at": run_at or utcnow(), "ordering_key": ordering_key, "dedupe_key": dedupe_key,
        "created_at": utcnow(),
    }
    insert = insert_of(session)
    statement = insert(Job).values(**values)
    if dedupe_key is not None:
        statement = statement.on_conflict_do_nothing(index_elements=["kind", "dedupe_key"])
    await session.execute(statement)
    session.info["jobs_enqueued"] = True


_LOCAL_WORKERS: weakref.WeakSet[Worker] = weakref.WeakSet()


def committed(session: AsyncSession | Session) -> None:
    """After a commit: if it enqueued jobs, this process's workers look now
    instead of at their next poll (other processes find them by polling).
    Every session's commit calls it (the ``after_commit`` event below); call
    it by hand for a session that joined a transaction it did not commit (a
    session bound to a connection, the connection committed)."""
    if session.info.pop("jobs_enqueued", False):
        for worker in _LOCAL_WORKERS:
            worker.poke()


event.listen(Session, "after_commit", committed)


def backoff_s(attempt: int, *, base_s: float, cap_s: float) -> float:
    """Exponential backoff with full jitter on the upper half."""
    ceiling = min(cap_s, base_s * 2 ** (attempt - 1))
    return ceiling / 2 + random.random() * ceiling / 2


# Built once: the idle poll runs twice a second in every process.
ANYTHING_DUE = (
    select(Job.id)
    .where(
        or_(
            and_(Job.status == "pending", Job.run_at <= bindparam("now", type_=Job.run_at.type)),
            and_(Job.status == "running", Job.lease_until < bindparam("now", type_=Job.run_at.type)),
        )
    )
    .limit(1)
)


class Worker:
    """Claims due jobs and runs them; one per process, run as an asyncio task."""

    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        services: Any,
        *,
        concurrency: int = 8,
        lease_s: float = 60.0,
        poll_s: float = 0.5,
        backoff_base_s: float = 2.0,
        backoff_cap_s: float = 1800.0,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self.sessions = sessions
        self.services = services
        self.concurrency = concurrency
        self.lease_s = lease_s
        self.poll_s = poll_s
        self.backoff_base_s = backoff_base_s
        self.backoff_cap_s = backoff_cap_s
        self.clock = clock
        self.name = f"{socket.gethostname()}:{os.getpid()}:{id(self):x}"[:64]
        self.wakeup = asyncio.Event()
        self._running: set[asyncio.Task[None]] = set()
        self._stopping = False
        _LOCAL_WORKERS.add(self)

    def poke(self) -> None:
        """Look for work now (a job was just committed in this process)."""
        self.wakeup.set()

    async def _anything_due(self, now: datetime) -> bool:
        """A plain read first: an idle worker's poll must not take the write
        lock (on SQLite, the whole database's) just to find nothing, nor hold
        the process's one SQLite connection longer than one hop."""
        engine = self.sessions.kw["bind"]
        found = await run_unit(engine, lambda conn: conn.scalar(ANYTHING_DUE, {"now": now}), write=False)
        return found is not None

    async def claim(self, limit: int) -> list[Job]:
        now = self.clock()
        if not await self._anything_due(now):
            return []
        earlier = aliased(Job)
        blocked = exists().where(
            earlier.ordering_key == Job.ordering_key,
            earlier.id < Job.id,
            earlier.status.in_(("pending", "running")),
        )
        due = (
            select(Job.id)
            .where(
                or_(
                    and_(Job.status == "pending", Job.run_at <= now),
                    and_(Job.status == "running", Job.lease_until < now),
                ),
                or_(Job.ordering_key.is_(None), ~blocked),
            )
            .order_by(Job.id)
            .limit(limit)
            .with_for_update(skip_locked=True)
        )
        async with transaction(self.sessions) as session:
            rows = (
                await session.execute(
                    update(Job)
                    .where(Job.id.in_(due.scalar_subquery()))
                    .values(
                        status="running",
                        attempts=Job.attempts + 1,
                        lease_until=now + timedelta(seconds=self.lease_s),
                        locked_by=self.name,
                    )
                    .returning(Job.id, Job.kind, Job.payload, Job.attempts, Job.max_attempts)
                    .execution_options(synchronize_session=False)
                )
            ).all()
        return [Job(id=r[0], kind=r[1], payload=r[2], attempts=r[3], max_attempts=r[4]) for r in rows]

    async def run_one(self, job: Job) -> None:
        fn = HANDLERS.get(job.kind)
        context = JobContext(self.sessions, self.services, job.id, job.attempts, job.max_attempts)
        renewing = asyncio.create_task(self._keep_lease(job))
        try:
            if fn is None:
                raise LookupError(f"no handler for job kind {job.kind!r}")
            await fn(context, job.payload)
        except RetryLater as exc:
            await self._finish(job, error=str(exc), retry_after=exc.after_s, counts=False)
        except Permanent as exc:
            log.warning("job %s (%s) failed for good: %s", job.id, job.kind, exc)
            await self._finish(job, error=str(exc)[:2000], final=True)
        except Exception as exc:  # a handler's failure is data: recorded, retried, parked
            log.warning("job %s (%s) attempt %s failed: %s", job.id, job.kind, job.attempts, exc)
            await self._finish(job, error=f"{type(exc).__name__}: {exc}"[:2000])
        else:
            await self._finish(job)
        finally:
            renewing.cancel()

    async def _keep_lease(self, job: Job) -> None:
        """While the handler runs, the lease is renewed every third of it: a
        job longer than the lease (a long PDF, embedding many chunks) stays
        this worker's. A worker that dies stops renewing, and its jobs are
        taken over when their leases run out, as before."""
        while True:
            await asyncio.sleep(self.lease_s / 3)
            try:
                async with transaction(self.sessions) as session:
                    await session.execute(
                        update(Job).where(Job.id == job.id, Job.locked_by == self.name, Job.status == "running")
                        .values(lease_until=self.clock() + timedelta(seconds=self.lease_s))
                    )
            except Exception:  # noqa: BLE001 - the next renewal may get through
                log.warning("could not renew the lease of job %s", job.id, exc_info=True)

    async def _finish(
        self, job: Job, *, error: str | None = None, retry_after: float | None = None, counts: bool = True,
        final: bool = False,
    ) -> None:
        now = self.clock()
        values: dict[str, Any]
        if error is None:
            values = {"status": "done", "finished_at": now, "lease_until": None, "last_error": None}
        elif final or (counts and job.attempts >= job.max_attempts):
            values = {"status": "failed", "finished_at": now, "lease_until": None, "last_error": error}
        else:
            delay = retry_after if retry_after is not None else backoff_s(
                job.attempts, base_s=self.backoff_base_s, cap_s=self.backoff_cap_s
            )
            values = {
                "status": "pending", "run_at": now + timedelta(seconds=delay), "lease_until": None,
                "last_error": error,
            }
            if not counts:
                values["attempts"] = Job.attempts - 1
        async with transaction(self.sessions) as session:
            # Only if we still hold it: a job whose lease we lost belongs to
            # whichever worker took it over.
            await session.execute(
                update(Job).where(Job.id == job.id, Job.locked_by == self.name).values(**values)
            )

    async def run_once(self) -> int:
        """Claim what is due (up to the free slots) and start it; returns how many."""
        free = self.concurrency - len(self._running)
        if free <= 0:
            return 0
        jobs = await self.claim(free)
        for job in jobs:
            task = asyncio.create_task(self.run_one(job))
            self._running.add(task)
            task.add_done_callback(self._running.discard)
            task.add_done_callback(lambda _: self.wakeup.set())
        return len(jobs)

    async def drain(self, *, timeout_s: float = 30.0) -> None:
        """Run until nothing is due and nothing is running (tests, ``worker --once``)."""
        deadline = asyncio.get_running_loop().time() + timeout_s
        while asyncio.get_running_loop().time() < deadline:
            started = await self.run_once()
            if self._running:
                await asyncio.wait(self._running, return_when=asyncio.FIRST_COMPLETED)
            elif not started:
                return

    async def run_forever(self) -> None:
        while not self._stopping:
            try:
                await self.run_once()
            except Exception:  # the database went away: keep the worker alive
                log.exception("job worker could not claim jobs; retrying")
            self.wakeup.clear()
            try:
                await asyncio.wait_for(self.wakeup.wait(), timeout=self.poll_s)
            except TimeoutError:
                pass

    async def stop(self, *, grace_s: float = 10.0) -> None:
        self._stopping = True
        self.wakeup.set()
        if self._running:
            await asyncio.wait(self._running, timeout=grace_s)
