"""Job handlers the job tests use (imported by test workers via jobs.extra_modules)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from chatplane import jobs


@jobs.handler("test.sleep")
async def sleep(context: jobs.JobContext, payload: dict[str, Any]) -> None:
    await asyncio.sleep(payload["seconds"])
    if payload.get("log"):
        with Path(payload["log"]).open("a") as log:
            log.write(f"{payload['n']}\n")


@jobs.handler("test.record")
async def record(context: jobs.JobContext, payload: dict[str, Any]) -> None:
    with Path(payload["log"]).open("a") as log:
        log.write(f"{payload['n']} attempt {context.attempt}\n")
    if context.attempt <= payload.get("fail_times", 0):
        raise RuntimeError(f"failing on purpose ({context.attempt})")


@jobs.handler("test.later")
async def later(context: jobs.JobContext, payload: dict[str, Any]) -> None:
    if context.attempt < 3 and not Path(payload["flag"]).exists():
        Path(payload["flag"]).write_text("x")
        raise jobs.RetryLater("not yet", after_s=0)
