"""Server memory: at idle after start-up, and after each round of completions.

    .venv/bin/python bench/memory.py [--db sqlite|postgresql] [--completions 10000] [--rounds 2]

Starts the zero-latency OpenAI-protocol stub (``python -m chatplane.testing``)
and ``chatplane serve`` as separate processes on loopback (``harness.py``),
reads the server's resident memory (summed over its processes, from
``/proc``) once it is up and idle, then after each round of ``--completions``
completions: ``--concurrency`` users, each on a fresh chat of
``--turns-per-chat`` turns, then the next. A second round shows whether the
memory keeps growing or settles. Each reading is taken after the server has
had ``--settle`` seconds of quiet. Prints its figures; asserts nothing.

RSS is what the kernel charges the processes; ``anon`` is the part that is
not a mapped file (the Python heap, allocator arenas), the part a leak grows.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import httpx
from harness import (
    DEFAULT_PG_URL,
    MODEL,
    SYSTEM,
    Conn,
    clean_env,
    free_port,
    fresh_database,
    start,
    stop,
    stub,
    wait_up,
)

KEY = "bench-key-0123456789abcdef"


def server_pids(pid: int) -> list[int]:
    """The process and all its descendants (uvicorn's workers)."""
    found, todo = [], [pid]
    while todo:
        p = todo.pop()
        found.append(p)
        for task in Path(f"/proc/{p}/task").glob("*"):
            try:
                todo += [int(c) for c in (task / "children").read_text().split()]
            except OSError:
                pass
    return found


def memory(pid: int) -> tuple[float, float, int]:
    """RSS and anonymous RSS in MiB, summed over the server's processes, and how many processes."""
    rss = anon = 0
    pids = server_pids(pid)
    for p in pids:
        try:
            fields = dict(line.split(":", 1) for line in Path(f"/proc/{p}/status").read_text().splitlines())
        except OSError:
            continue
        rss += int(fields["VmRSS"].split()[0])
        anon += int(fields["RssAnon"].split()[0])
    return rss / 1024, anon / 1024, len(pids)


def line(label: str, pid: int, base: tuple[float, float, int] | None = None) -> tuple[float, float, int]:
    now = memory(pid)
    growth = ""
    if base is not None:
        growth = f"   since idle: {now[0] - base[0]:+7.1f} MiB ({(now[0] / base[0] - 1) * 100:+5.1f}%)"
    print(f"{label:<28} RSS {now[0]:7.1f} MiB   anon {now[1]:7.1f} MiB   ({now[2]} process"
          f"{'es' if now[2] != 1 else ''}){growth}", flush=True)
    return now


async def completions(port: int, new_chat, n: int, concurrency: int, turns_per_chat: int) -> None:  # type: ignore[no-untyped-def]
    """``n`` completions from ``concurrency`` users, each on fresh chats of ``turns_per_chat`` turns."""
    left = [n]

    async def user() -> None:
        conn = Conn(port, f"authorization: Bearer {KEY}\r\n")
        try:
            while left[0] > 0:
                chat = await new_chat()
                for i in range(turns_per_chat):
                    if left[0] <= 0:
                        break
                    left[0] -= 1
                    status, body = await conn.request(f"/api/chats/{chat}/completions",
                                                      {"workspaceId": 1, "content": f"message {i}"})
                    if status != 201:
                        raise RuntimeError(f"completion answered {status}: {body[:500]!r}")
        finally:
            conn.close()

    await asyncio.gather(*(user() for _ in range(concurrency)))


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--db", choices=["sqlite", "postgresql"], default="sqlite")
    parser.add_argument("--pg-url", default=DEFAULT_PG_URL)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--completions", type=int, default=10_000, help="per round")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--turns-per-chat", type=int, default=10)
    parser.add_argument("--step", type=int, default=2_500, help="also read (without settling) every this many")
    parser.add_argument("--settle", type=float, default=3.0, help="quiet seconds before each round's reading")
    args = parser.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="chatplane-bench-"))
    try:
        await measure(args, tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


async def measure(args: argparse.Namespace, tmp: Path) -> None:
    async with stub() as model, fresh_database(args.db, tmp, args.pg_url, "chatplane_memory") as db_url:
        env = clean_env()
        env.update(
            CHATPLANE_DATA_DIR=str(tmp),
            CHATPLANE_DATABASE_URL=db_url,
            CHATPLANE_BOOTSTRAP_API_KEY=KEY,
            CHATPLANE_PROVIDERS=json.dumps([{"name": "stub", "base_url": model.url, "models": [{"name": MODEL}]}]),
        )
        port = free_port()
        server = start([sys.executable, "-m", "chatplane.cli", "serve", "--port", str(port),
                        "--workers", str(args.workers), "--log-level", "warning"], env=env)
        try:
            base = f"http://127.0.0.1:{port}"
            await wait_up(base + "/healthz", server)
            await asyncio.sleep(args.settle)
            print(f"database={args.db} workers={args.workers} concurrency={args.concurrency} "
                  f"turns per chat={args.turns_per_chat}")
            idle = line("idle after start-up", server.pid)
            async with httpx.AsyncClient(base_url=base, headers={"Authorization": f"Bearer {KEY}"},
                                         timeout=60) as client:
                llm = (await client.post("/api/llms", json={
                    "workspaceId": 1, "display_name": "m", "model": MODEL, "general_prompt": SYSTEM,
                })).json()
                agent = (await client.post("/api/chat-agents", json={
                    "workspaceId": 1, "agent_name": "m",
                    "response_engine": {"type": "uponai-llm", "llm_id": llm["llm_id"]},
                })).json()

                async def new_chat() -> str:
                    response = await client.post("/api/chats", json={"workspaceId": 1, "agent_id": agent["agent_id"]})
                    if response.status_code != 201:
                        raise RuntimeError(response.text)
                    return response.json()["chatId"]

                total = 0
                for _ in range(args.rounds):
                    done = 0
                    started = time.perf_counter()
                    while done < args.completions:
                        step = min(args.step, args.completions - done)
                        await completions(port, new_chat, step, args.concurrency, args.turns_per_chat)
                        done += step
                        if done < args.completions:
                            line(f"  ... {total + done:,} (busy)", server.pid, idle)
                    rate = args.completions / (time.perf_counter() - started)
                    total += done
                    await asyncio.sleep(args.settle)
                    line(f"after {total:,} completions", server.pid, idle)
                    print(f"{'':28} ({rate:.0f} completions/s)", flush=True)
        finally:
            stop(server)


if __name__ == "__main__":
    asyncio.run(main())
