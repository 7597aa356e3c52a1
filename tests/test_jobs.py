"""Durable jobs on a real database: transactions, retries, leases, ordering,
several workers, and a worker killed with SIGKILL while it holds jobs."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import func, select

import tests.job_handlers  # noqa: F401  (registers the test handlers here too)
from chatplane import jobs
from chatplane.db import create_engine, create_sessionmaker, migrate, transaction, utcnow
from chatplane.models import Job
from chatplane.settings import JobSettings
from tests.conftest import BACKENDS, dispose_settings, fresh_settings

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(params=BACKENDS)
def db(request: pytest.FixtureRequest, tmp_path: Path):
    settings = fresh_settings(request.param, tmp_path, jobs=JobSettings(lease_s=2, poll_s=0.05))
    migrate(settings)
    yield settings
    dispose_settings(settings)


def run(settings, work):
    async def main():
        engine = create_engine(settings)
        try:
            return await work(create_sessionmaker(engine))
        finally:
            await engine.dispose()

    return asyncio.run(main())


async def all_jobs(sessions) -> list[Job]:
    async with sessions() as session:
        return list((await session.scalars(select(Job).order_by(Job.id))).all())


def test_a_job_lives_and_dies_with_its_transaction(db) -> None:
    async def work(sessions):
        async with transaction(sessions) as session:
            await jobs.enqueue(session, "test.record", {"n": 1})
        with pytest.raises(RuntimeError):
            async with transaction(sessions) as session:
                await jobs.enqueue(session, "test.record", {"n": 2})
                raise RuntimeError("the change that caused the job failed")
        return await all_jobs(sessions)

    [job] = run(db, work)
    assert job.payload == {"n": 1} and job.status == "pending"


def test_dedupe_key_makes_a_second_enqueue_a_no_op(db) -> None:
    async def work(sessions):
        for _ in range(3):
            async with transaction(sessions) as session:
                await jobs.enqueue(session, "test.record", {"n": 1}, dedupe_key="once")
        async with transaction(sessions) as session:
            await jobs.enqueue(session, "test.sleep", {"seconds": 0}, dedupe_key="once")  # another kind
        return await all_jobs(sessions)

    assert [j.kind for j in run(db, work)] == ["test.record", "test.sleep"]


def test_failures_retry_with_backoff_then_park(db, tmp_path: Path) -> None:
    log = tmp_path / "log"

    async def work(sessions):
        clock = [utcnow() + timedelta(seconds=1)]  # just after the enqueues below
        worker = jobs.Worker(sessions, None, backoff_base_s=10, clock=lambda: clock[0])
        async with transaction(sessions) as session:
            await jobs.enqueue(session, "test.record", {"n": 1, "log": str(log), "fail_times": 1}, max_attempts=3)
            await jobs.enqueue(session, "test.record", {"n": 2, "log": str(log), "fail_times": 9}, max_attempts=2)
        await worker.drain()
        first = await all_jobs(sessions)
        # Not due yet: backoff holds them back until the clock moves on.
        await worker.drain()
        assert log.read_text().count("attempt") == 2
        clock[0] += timedelta(seconds=11)
        await worker.drain()
        clock[0] += timedelta(seconds=30)
        await worker.drain()
        return first, await all_jobs(sessions)

    first, last = run(db, work)
    assert [(j.status, j.attempts) for j in first] == [("pending", 1), ("pending", 1)]
    assert all(5 <= (j.run_at - utcnow()).total_seconds() <= 12 for j in first)
    assert "failing on purpose (1)" in first[0].last_error
    assert [(j.status, j.attempts) for j in last] == [("done", 2), ("failed", 2)]
    assert last[1].last_error == "RuntimeError: failing on purpose (2)"
    assert log.read_text().splitlines() == ["1 attempt 1", "2 attempt 1", "1 attempt 2", "2 attempt 2"]


def test_retry_later_does_not_use_up_attempts(db, tmp_path: Path) -> None:
    async def work(sessions):
        async with transaction(sessions) as session:
            await jobs.enqueue(session, "test.later", {"flag": str(tmp_path / "flag")}, max_attempts=1)
        await jobs.Worker(sessions, None).drain()
        return await all_jobs(sessions)

    [job] = run(db, work)
    assert (job.status, job.attempts) == ("done", 1)


def test_jobs_sharing_an_ordering_key_run_one_at_a_time_in_order(db, tmp_path: Path) -> None:
    log = tmp_path / "log"

    async def work(sessions):
        clock = [utcnow() + timedelta(seconds=1)]  # just after the enqueues below
        worker = jobs.Worker(sessions, None, concurrency=8, backoff_base_s=10, clock=lambda: clock[0])
        async with transaction(sessions) as session:
            await jobs.enqueue(session, "test.record", {"n": 1, "log": str(log), "fail_times": 1}, ordering_key="c")
            await jobs.enqueue(session, "test.record", {"n": 2, "log": str(log)}, ordering_key="c")
            await jobs.enqueue(session, "test.record", {"n": 3, "log": str(log)}, ordering_key="other")
        await worker.drain()
        # Job 1 failed and waits for its retry; job 2 must wait behind it.
        blocked = log.read_text().splitlines()
        clock[0] += timedelta(seconds=11)
        await worker.drain()
        return blocked, log.read_text().splitlines()

    blocked, final = run(db, work)
    assert sorted(blocked) == ["1 attempt 1", "3 attempt 1"]
    assert final[2:] == ["1 attempt 2", "2 attempt 1"]


def test_an_expired_lease_lets_another_worker_take_the_job(db, tmp_path: Path) -> None:
    async def work(sessions):
        clock = [utcnow() + timedelta(seconds=1)]  # just after the enqueues below
        first = jobs.Worker(sessions, None, lease_s=5, clock=lambda: clock[0])
        second = jobs.Worker(sessions, None, lease_s=5, clock=lambda: clock[0])
        async with transaction(sessions) as session:
            await jobs.enqueue(session, "test.record", {"n": 1, "log": str(tmp_path / "log")})
        [claimed] = await first.claim(10)  # ...and then the first worker "dies"
        assert await second.claim(10) == []  # still leased
        clock[0] += timedelta(seconds=6)
        [again] = await second.claim(10)
        await second.run_one(again)
        # The first worker's late report changes nothing: it no longer holds the job.
        await first._finish(claimed, error="too late")
        return claimed, again, await all_jobs(sessions)

    claimed, again, [job] = run(db, work)
    assert claimed.id == again.id and again.attempts == 2
    assert job.status == "done" and job.last_error is None


def test_a_job_longer_than_its_lease_keeps_it_while_its_worker_lives(db, tmp_path: Path) -> None:
    log = tmp_path / "log"

    async def work(sessions):
        async with transaction(sessions) as session:
            await jobs.enqueue(session, "test.sleep", {"seconds": 2.0, "n": 1, "log": str(log)})
        first = jobs.Worker(sessions, None, lease_s=0.6, poll_s=0.05)
        second = jobs.Worker(sessions, None, lease_s=0.6, poll_s=0.05)
        assert await first.run_once() == 1
        # Three leases' time: without renewal the second worker would take it over.
        deadline = time.monotonic() + 2.5
        taken = 0
        while time.monotonic() < deadline:
            taken += await second.run_once()
            await asyncio.sleep(0.05)
        await first.drain()
        await second.drain()
        return taken, await all_jobs(sessions)

    taken, [job] = run(db, work)
    assert taken == 0 and job.attempts == 1 and job.status == "done"
    assert log.read_text().splitlines() == ["1"]


def test_two_workers_run_each_of_200_jobs_exactly_once(db, tmp_path: Path) -> None:
    log = tmp_path / "log"

    async def work(sessions):
        async with transaction(sessions) as session:
            for n in range(200):
                await jobs.enqueue(session, "test.record", {"n": n, "log": str(log)})
        workers = [jobs.Worker(sessions, None, concurrency=16) for _ in range(2)]
        await asyncio.gather(*(w.drain() for w in workers))
        async with sessions() as session:
            return await session.scalar(select(func.count()).where(Job.status == "done"))

    assert run(db, work) == 200
    lines = log.read_text().splitlines()
    assert sorted(lines) == sorted(f"{n} attempt 1" for n in range(200))


def _worker_process(settings, tmp_path: Path) -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHATPLANE_")}
    env.update(
        CHATPLANE_DATA_DIR=str(settings.data_dir),
        CHATPLANE_JOBS__LEASE_S="2",
        CHATPLANE_JOBS__POLL_S="0.05",
        CHATPLANE_JOBS__EXTRA_MODULES='["tests.job_handlers"]',
        PYTHONPATH=str(ROOT),
    )
    if not settings.is_sqlite:
        env["CHATPLANE_DATABASE_URL"] = settings.resolved_database_url
    return subprocess.Popen([sys.executable, "-m", "chatplane.cli", "worker"], env=env, cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def test_sigkilled_worker_jobs_are_finished_by_another(db, tmp_path: Path) -> None:
    log = tmp_path / "log"

    async def enqueue(sessions):
        async with transaction(sessions) as session:
            for n in range(5):
                await jobs.enqueue(session, "test.sleep", {"seconds": 1.5, "n": n, "log": str(log)})

    async def states(sessions):
        return [(j.status, j.locked_by, j.attempts) for j in await all_jobs(sessions)]

    run(db, enqueue)
    doomed = _worker_process(db, tmp_path)
    try:
        deadline = time.monotonic() + 30
        while not all(s == "running" for s, _, _ in run(db, states)):
            assert time.monotonic() < deadline, run(db, states)
            time.sleep(0.05)
        doomed_name = run(db, states)[0][1]
        doomed.send_signal(signal.SIGKILL)  # mid-job: every job is held and unfinished
        doomed.wait(10)
    finally:
        doomed.kill()
    assert not log.exists()
    rescuer = _worker_process(db, tmp_path)
    try:
        deadline = time.monotonic() + 30
        while not all(s == "done" for s, _, _ in run(db, states)):
            assert time.monotonic() < deadline, run(db, states)
            time.sleep(0.1)
    finally:
        rescuer.send_signal(signal.SIGTERM)
        rescuer.wait(20)
    final = run(db, states)
    assert all(attempts == 2 and name != doomed_name for _, name, attempts in final)
    assert sorted(log.read_text().split()) == [str(n) for n in range(5)]
