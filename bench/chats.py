"""Platform overhead and throughput of chat completions.

    .venv/bin/python bench/chats.py [--db sqlite|postgresql] [--workers N]

Starts a zero-latency OpenAI-protocol stub (``python -m chatplane.testing``)
and ``chatplane serve`` as separate processes on loopback, then measures:

- the stub alone (p50/p99 of a direct call): the model's share of a turn;
- concurrency 1: end-to-end completion latency, and overhead = e2e - stub;
- 16 and 64 concurrent chats: completions/s and p50/p99 latency;
- growth: overhead at turn 1 and turn 500 of one chat.

Prints its figures; asserts nothing. Per-process CPU is printed too, because
``uvicorn --workers`` does not always spread connections evenly.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
KEY = "bench-key-0123456789abcdef"
MODEL = "stub"


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def ms(x: float) -> str:
    return f"{x * 1000:7.2f} ms"


def cpu_seconds(pid: int) -> float:
    """User+system CPU of a process and its children (uvicorn workers)."""
    total = 0.0
    pids = [pid]
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        pids += [int(c) for c in children]
    except OSError:
        pass
    for p in pids:
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        except OSError:
            pass
    return total


def per_process_cpu(pid: int) -> dict[int, float]:
    out = {}
    pids = [pid]
    try:
        pids += [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        pass
    for p in pids:
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
            out[p] = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        except OSError:
            pass
    return out


async def wait_up(url: str) -> None:
    async with httpx.AsyncClient() as client:
        for _ in range(600):
            try:
                await client.get(url)
                return
            except httpx.TransportError:
                await asyncio.sleep(0.05)
    raise RuntimeError(f"{url} did not come up")


class Conn:
    """A minimal keep-alive HTTP/1.1 client for the measured requests.

    httpx's pool costs the load generator more CPU than the server spends on
    a turn, and on a 2-core machine that CPU comes out of the server's share;
    this costs a few microseconds a request.
    """

    def __init__(self, port: int) -> None:
        self.port = port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def post(self, path: str, body: dict) -> tuple[int, bytes]:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection("127.0.0.1", self.port)
        data = json.dumps(body).encode()
        self.writer.write(
            f"POST {path} HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {KEY}\r\n"
            f"content-type: application/json\r\ncontent-length: {len(data)}\r\n\r\n".encode() + data
        )
        head = await self.reader.readuntil(b"\r\n\r\n")  # type: ignore[union-attr]
        status = int(head.split(b" ", 2)[1])
        length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
        return status, await self.reader.readexactly(length)  # type: ignore[union-attr]


async def completion_loop(conn: Conn, chat_id: str, n: int, latencies: list[float]) -> None:
    for i in range(n):
        started = time.perf_counter()
        status, body = await conn.post(f"/api/chats/{chat_id}/completions", {"workspaceId": 1, "content": f"m{i}"})
        latencies.append(time.perf_counter() - started)
        if status != 201:
            raise RuntimeError(body)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--db", choices=["sqlite", "postgresql"], default="sqlite")
    parser.add_argument("--pg-url", default="postgresql://postgres@127.0.0.1:5432/test")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--seconds", type=float, default=10.0, help="per concurrency level")
    parser.add_argument("--growth-turns", type=int, default=500)
    parser.add_argument("--no-jobs", action="store_true", help="serve without the in-process job worker")
    args = parser.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="chatplane-bench-"))
    stub = subprocess.Popen([sys.executable, "-m", "chatplane.testing"], stdout=subprocess.PIPE, text=True)
    stub_url = stub.stdout.readline().strip()  # type: ignore[union-attr]
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHATPLANE_")}
    env.update(
        CHATPLANE_DATA_DIR=str(tmp),
        CHATPLANE_BOOTSTRAP_API_KEY=KEY,
        CHATPLANE_PROVIDERS=json.dumps([{"name": "stub", "base_url": stub_url, "models": [{"name": MODEL}]}]),
    )
    if args.no_jobs:
        env["CHATPLANE_JOBS__IN_SERVER"] = "false"
    db_name = None
    if args.db == "postgresql":
        db_name = f"chatplane_bench_{uuid.uuid4().hex[:8]}"
        subprocess.run(["psql", args.pg_url, "-qc", f'CREATE DATABASE "{db_name}"'], check=True)
        env["CHATPLANE_DATABASE_URL"] = args.pg_url.rsplit("/", 1)[0] + "/" + db_name
    port = 18000 + os.getpid() % 1000
    server = subprocess.Popen(
        [sys.executable, "-m", "chatplane.cli", "serve", "--port", str(port), "--workers", str(args.workers),
         "--log-level", "warning"],
        env=env, stdout=subprocess.DEVNULL,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        await wait_up(base + "/healthz")
        limits = httpx.Limits(max_connections=300, max_keepalive_connections=300)
        async with httpx.AsyncClient(base_url=base, headers={"Authorization": f"Bearer {KEY}"}, timeout=60,
                                     limits=limits) as client:
            llm = (await client.post("/api/llms", json={"workspaceId": 1, "display_name": "b", "model": MODEL,
                                                         "general_prompt": "You are {{name}}.",
                                                         "default_dynamic_variables": {"name": "Ava"}})).json()
            agent = (await client.post("/api/chat-agents", json={
                "workspaceId": 1, "agent_name": "b", "response_engine": {"type": "uponai-llm", "llm_id": llm["llm_id"]},
            })).json()

            async def new_chat() -> str:
                r = await client.post("/api/chats", json={"workspaceId": 1, "agent_id": agent["agent_id"]})
                return r.json()["chatId"]

            # The stub alone, through the same kind of client.
            direct = Conn(int(stub_url.rsplit(":", 1)[1].split("/")[0]))
            stub_lat = []
            body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}]}
            for _ in range(300):
                t = time.perf_counter()
                await direct.post("/v1/chat/completions", body)
                stub_lat.append(time.perf_counter() - t)
            stub_p50 = pct(stub_lat, 0.5)
            print(f"database={args.db} workers={args.workers}")
            print(f"stub alone            p50 {ms(stub_p50)}  p99 {ms(pct(stub_lat, 0.99))}")

            # Warm up.
            conn = Conn(port)
            warm = await new_chat()
            await completion_loop(conn, warm, 50, [])

            # Concurrency 1 on fresh chats, a few turns each.
            lat: list[float] = []
            for _ in range(40):
                await completion_loop(conn, await new_chat(), 10, lat)
            over = [x - stub_p50 for x in lat]
            print(f"concurrency 1         e2e p50 {ms(pct(lat, .5))} p99 {ms(pct(lat, .99))}   "
                  f"overhead p50 {ms(pct(over, .5))} p99 {ms(pct(over, .99))}   (n={len(lat)})")

            for conc in (16, 64):
                chats = [await new_chat() for _ in range(conc)]
                lat = []
                stop_at = time.perf_counter() + args.seconds
                cpu0 = per_process_cpu(server.pid)

                async def worker(chat_id: str) -> None:
                    own = Conn(port)
                    i = 0
                    while time.perf_counter() < stop_at:
                        t = time.perf_counter()
                        status, body = await own.post(f"/api/chats/{chat_id}/completions",
                                                      {"workspaceId": 1, "content": f"m{i}"})
                        lat.append(time.perf_counter() - t)
                        if status != 201:
                            raise RuntimeError(body)
                        i += 1

                started = time.perf_counter()
                await asyncio.gather(*(worker(c) for c in chats))
                elapsed = time.perf_counter() - started
                cpu1 = per_process_cpu(server.pid)
                spread = ", ".join(f"{cpu1[p] - cpu0.get(p, 0):.1f}s" for p in cpu1)
                print(f"concurrency {conc:<3}       {len(lat) / elapsed:7.1f} completions/s   p50 {ms(pct(lat, .5))} "
                      f"p99 {ms(pct(lat, .99))}   p99/p50 {pct(lat, .99) / pct(lat, .5):4.2f}   cpu per process: {spread}")

            # Growth: one chat, many turns.
            chat = await new_chat()
            lat = []
            await completion_loop(Conn(port), chat, args.growth_turns, lat)
            # The stub's own time grows with the history it is sent: measure it
            # with a request of that size, so growth counts only ours.
            history = [{"role": "user" if i % 2 == 0 else "assistant", "content": f"m{i}"}
                       for i in range(2 * args.growth_turns - 1)]
            big = {"model": MODEL, "messages": [{"role": "system", "content": "You are Ava."}, *history]}
            stub_big = []
            for _ in range(50):
                t = time.perf_counter()
                await direct.post("/v1/chat/completions", big)
                stub_big.append(time.perf_counter() - t)
            first = statistics.median(lat[:20]) - stub_p50
            last = statistics.median(lat[-20:]) - statistics.median(stub_big)
            print(f"growth                overhead turns 1-20 {ms(first)}  turns {args.growth_turns - 19}-"
                  f"{args.growth_turns} {ms(last)}  ratio {last / first:4.2f}")
    finally:
        server.terminate()
        server.wait(30)
        stub.terminate()
        if db_name:
            subprocess.run(["psql", args.pg_url, "-qc", f'DROP DATABASE IF EXISTS "{db_name}" WITH (FORCE)'])


if __name__ == "__main__":
    asyncio.run(main())
