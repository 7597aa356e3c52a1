"""Platform overhead and throughput of chat completions.

    .venv/bin/python bench/chats.py [--db sqlite|postgresql] [--workers N] [--levels 1,16,64,256]

Starts a zero-latency OpenAI-protocol stub (``python -m chatplane.testing``)
and ``chatplane serve --workers N`` (as in production: several processes) as
separate processes on loopback, then measures:

- the stub alone (p50/p99 of a direct call): the model's share of a turn;
- each concurrency level (1, 16, 64, 256 chats by default): that many users,
  each on its own connection, sending its next message as soon as the last
  answer arrives; a chat ends after ``--turns-per-chat`` turns and the user
  goes on with a fresh one. Completions/s, p50/p99 latency, CPU per server
  process (``uvicorn --workers`` does not always spread connections evenly);
- at concurrency 1, overhead = end-to-end - the stub's own time;
- growth: one chat for ``--growth-turns`` turns, overhead at turn 1, 100 and
  the last (each the median of a window of 20 turns, less the stub's time for
  a request with that much history), against short chats' turns taken in
  between (the same moments, so the machine's drift cancels in the ratio).

Prints its figures; asserts nothing. ``peers.py`` runs the same levels
against a bare endpoint and LangGraph's API server for comparison.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
from harness import (
    DEFAULT_PG_URL,
    MODEL,
    ROOT,
    Conn,
    Stub,
    Target,
    free_port,
    fresh_database,
    level_line,
    ms,
    pct,
    run_levels,
    server_env,
    start,
    stop,
    stub,
    wait_up,
)

KEY = "bench-key-0123456789abcdef"


@asynccontextmanager
async def chatplane(model: Stub, *, db: str, tmp: Path, pg_url: str, workers: int,
                    jobs: bool = True) -> AsyncIterator[Target]:
    """``chatplane serve`` on a fresh database, with an LLM and an agent on the stub."""
    async with fresh_database(db, tmp, pg_url, "chatplane_bench") as url:
        env = server_env(model.url, data_dir=tmp / "chatplane", key=KEY,
                         database_url=url if db == "postgresql" else None)
        if not jobs:
            env["CHATPLANE_JOBS__IN_SERVER"] = "false"
        port = free_port()
        server = start([sys.executable, "-m", "chatplane.cli", "serve", "--port", str(port),
                        "--workers", str(workers), "--log-level", "warning"], env=env)
        try:
            await wait_up(f"http://127.0.0.1:{port}/healthz", server)
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=60,
                                         headers={"Authorization": f"Bearer {KEY}"}) as client:
                llm = (await client.post("/api/llms", json={
                    "workspaceId": 1, "display_name": "b", "model": MODEL,
                    "general_prompt": "You are {{name}}.", "default_dynamic_variables": {"name": "Ava"},
                })).json()
                agent = (await client.post("/api/chat-agents", json={
                    "workspaceId": 1, "agent_name": "b",
                    "response_engine": {"type": "uponai-llm", "llm_id": llm["llm_id"]},
                })).json()

                async def new_chat() -> str:
                    r = await client.post("/api/chats", json={"workspaceId": 1, "agent_id": agent["agent_id"]})
                    r.raise_for_status()
                    return r.json()["chatId"]

                def message(chat: str, i: int) -> tuple[str, dict]:
                    return f"/api/chats/{chat}/completions", {"workspaceId": 1, "content": f"m{i}"}

                yield Target(f"chatplane ({workers} processes)", server, port, new_chat, message, 201,
                             headers=f"authorization: Bearer {KEY}\r\n",
                             database=url.rsplit("/", 1)[1] if db == "postgresql" else None)
        finally:
            stop(server)


async def growth(target: Target, model: Stub, turns: int, window: int = 20) -> str:
    """Overhead at turn 1, 100 and ``turns`` of one chat.

    Each turn of the long chat is followed by a turn on a short chat (fresh
    every 10 turns), so every window of the long chat has a reference taken
    at the same moments: on a shared machine the load drifts more in a minute
    than a long history costs, and the ratio to the reference cancels that.
    """
    chat = await target.new_chat()
    short = [await target.new_chat() for _ in range(turns // 10 + 1)]
    conn = Conn(target.port, target.headers)
    long_lat: list[float] = []
    ref_lat: list[float] = []
    for i in range(turns):
        for lat, path_body in ((long_lat, target.message(chat, i)), (ref_lat, target.message(short[i // 10], i % 10))):
            t = time.perf_counter()
            status, answer = await conn.request(*path_body)
            lat.append(time.perf_counter() - t)
            if status != target.ok:
                raise RuntimeError(answer)
    conn.close()
    # The stub's own time grows with the history it is sent: measured with
    # requests of each size and subtracted, so growth counts only ours.
    ref_stub = statistics.median(await model.time(9, n=100))  # a short chat's turn 5: 9 messages
    marks = []
    for turn in sorted({1, 100, turns} & set(range(1, turns + 1))):
        first = max(1, turn - window + 1) if turn > 1 else 1
        last = max(window, turn)
        # Turn k sends the model the system prompt and 2k-1 messages.
        stub_s = statistics.median(await model.time(2 * ((first + last) // 2) - 1, n=50))
        overhead = statistics.median(long_lat[first - 1:last]) - stub_s
        reference = statistics.median(ref_lat[first - 1:last]) - ref_stub
        marks.append((turn, first, last, overhead, overhead / reference))
    base = marks[0][4]
    raw = "   ".join(f"turn {t} ({a}-{b}) {ms(o).strip()}" for t, a, b, o, _ in marks)
    relative = "   ".join(f"turn {t} {r / base:.2f}x" for t, _, _, _, r in marks[1:])
    return f"{raw}\n       against short chats at the same moments, relative to turn 1:   {relative}"


def describe_build() -> str:
    """The commit, and a fingerprint of uncommitted changes under src/ (figures move with them)."""
    def git(*args: str) -> str:
        try:
            return subprocess.run(["git", "-C", str(ROOT), *args], capture_output=True, text=True,
                                  check=False).stdout.strip()
        except OSError:
            return ""

    build = git("rev-parse", "--short", "HEAD") or "?"
    diff = git("diff", "HEAD", "--", "src")
    if diff:
        build += f" + uncommitted src/ changes {hashlib.sha1(diff.encode()).hexdigest()[:8]}"
    return f"chatplane {build}, {time.strftime('%Y-%m-%d %H:%M')}, {os.cpu_count()} cores"


def add_common_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--db", choices=["sqlite", "postgresql"], default="sqlite")
    parser.add_argument("--pg-url", default=DEFAULT_PG_URL, help="a PostgreSQL cluster to make fresh databases in")
    parser.add_argument("--workers", type=int, default=2, help="server processes (default 2)")
    parser.add_argument("--levels", default="1,16,64,256", help="concurrent chats, comma-separated")
    parser.add_argument("--seconds", type=float, default=10.0, help="per concurrency level")
    parser.add_argument("--turns-per-chat", type=int, default=10,
                        help="messages a chat gets in the concurrency levels before its user moves to a fresh one")


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_arguments(parser)
    parser.add_argument("--growth-turns", type=int, default=500)
    parser.add_argument("--no-jobs", action="store_true", help="serve without the in-process job worker")
    args = parser.parse_args()
    levels = [int(c) for c in args.levels.split(",")]

    print(describe_build())
    print(f"database={args.db} workers={args.workers} jobs={'off' if args.no_jobs else 'in server'} "
          f"levels={args.levels} seconds={args.seconds:g} turns/chat={args.turns_per_chat}")
    tmp = Path(tempfile.mkdtemp(prefix="chatplane-bench-"))
    async with stub() as model:
        # A request the size of a mid-chat turn (chats run turns_per_chat turns).
        stub_lat = await model.time(args.turns_per_chat, n=300)
        stub_p50 = pct(stub_lat, 0.5)
        print(f"stub alone            p50 {ms(stub_p50)}  p99 {ms(pct(stub_lat, 0.99))}")
        async with chatplane(model, db=args.db, tmp=tmp, pg_url=args.pg_url, workers=args.workers,
                             jobs=not args.no_jobs) as target:

            def report(level) -> None:  # type: ignore[no-untyped-def]
                print(level_line(level), flush=True)
                if level.concurrency == 1:
                    over = [x - stub_p50 for x in level.latencies]
                    print(f"       overhead per completion at c=1: p50 {ms(pct(over, .5))}  p99 {ms(pct(over, .99))}",
                          flush=True)

            await run_levels(target, levels, seconds=args.seconds, turns_per_chat=args.turns_per_chat,
                             stub_pid=model.process.pid,
                             report=report)
            if args.growth_turns:
                print(f"growth: overhead of one chat   {await growth(target, model, args.growth_turns)}")


if __name__ == "__main__":
    asyncio.run(main())
