"""What the chat benchmarks share: the stub, fresh databases, server processes,
a lean load client and the timed concurrency levels.

``chats.py`` measures chatplane alone; ``peers.py`` runs the same levels
against a bare FastAPI endpoint, LangGraph's API server and chatplane, one
after the other, against one stub.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
MODEL = "stub"
SYSTEM = "You are Ava."  # every target sends the stub this system prompt
DEFAULT_PG_URL = "postgresql://postgres@127.0.0.1:5432/test"
CORES = os.cpu_count() or 1


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def ms(x: float) -> str:
    return f"{x * 1000:7.2f} ms"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --- processes -----------------------------------------------------------------


def _descendants(pid: int) -> list[int]:
    found, todo = [], [pid]
    while todo:
        p = todo.pop()
        found.append(p)
        for task in Path(f"/proc/{p}/task").glob("*") if Path(f"/proc/{p}/task").exists() else []:
            try:
                todo += [int(c) for c in (task / "children").read_text().split()]
            except OSError:
                pass
    return found


def process_cpu(pid: int) -> dict[int, float]:
    """User+system CPU seconds of a process and each of its descendants (uvicorn's workers)."""
    out = {}
    for p in _descendants(pid):
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
            out[p] = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        except OSError:
            pass
    return out


def backends_cpu(database: str) -> dict[int, float]:
    """CPU seconds of each PostgreSQL backend connected to ``database`` (their
    process titles name it): the database's share of the work."""
    out = {}
    needle = f" {database} ".encode()
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            if needle not in (proc / "cmdline").read_bytes().replace(b"\0", b" ") + b" ":
                continue
            fields = (proc / "stat").read_text().rsplit(")", 1)[1].split()
            out[int(proc.name)] = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        except OSError:
            pass
    return out


def machine_busy() -> float:
    """CPU seconds the whole machine has spent busy since boot (all cores)."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle, iowait
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def cpu_spread(before: dict[int, float], after: dict[int, float]) -> tuple[float, str]:
    """The CPU all processes spent between two readings, and each busy one's, busiest first."""
    spent = sorted((after[p] - before.get(p, 0.0) for p in after), reverse=True)
    busy = [s for s in spent if s >= 0.05]
    return sum(spent), " ".join(f"{s:.1f}s" for s in busy) or "0.0s"


def start(cmd: list[str], *, env: dict[str, str] | None = None, cwd: Path | None = None,
          quiet: bool = True) -> subprocess.Popen:
    """A server in its own process group, so stopping it stops its workers too."""
    return subprocess.Popen(cmd, env=env, cwd=cwd, start_new_session=True,
                            stdout=subprocess.DEVNULL if quiet else None)


def stop(process: subprocess.Popen) -> None:
    if process.poll() is not None:
        return
    try:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(30)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(10)
    except ProcessLookupError:
        pass


def clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("CHATPLANE_")}


def server_env(model_url: str, *, data_dir: Path, key: str, database_url: str | None) -> dict[str, str]:
    """``chatplane serve``'s environment: its data directory, a bootstrap key, the stub as its one
    model, and a PostgreSQL URL (None: the SQLite file in the data directory)."""
    env = clean_env()
    env.update(
        CHATPLANE_DATA_DIR=str(data_dir),
        CHATPLANE_BOOTSTRAP_API_KEY=key,
        CHATPLANE_PROVIDERS=json.dumps([{"name": "stub", "base_url": model_url, "models": [{"name": MODEL}]}]),
    )
    if database_url is not None:
        env["CHATPLANE_DATABASE_URL"] = database_url
    return env


async def wait_up(url: str, process: subprocess.Popen | None = None, seconds: float = 120) -> None:
    deadline = time.monotonic() + seconds
    async with httpx.AsyncClient() as client:
        while time.monotonic() < deadline:
            if process is not None and process.poll() is not None:
                raise RuntimeError(f"server for {url} exited with {process.returncode}")
            try:
                await client.get(url)
                return
            except httpx.TransportError:
                await asyncio.sleep(0.05)
    raise RuntimeError(f"{url} did not come up")


@dataclass
class Stub:
    """The zero-latency OpenAI-protocol model (``python -m chatplane.testing``)."""

    process: subprocess.Popen
    url: str  # http://127.0.0.1:PORT/v1

    @property
    def port(self) -> int:
        return int(self.url.rsplit(":", 1)[1].split("/")[0])

    async def time(self, messages: int, n: int = 200) -> list[float]:
        """Latencies of direct calls with a history of ``messages`` messages: the stub's own time."""
        history = [{"role": "user" if i % 2 == 0 else "assistant", "content": f"m{i}"} for i in range(messages)]
        body = {"model": MODEL, "messages": [{"role": "system", "content": SYSTEM}, *history]}
        conn = Conn(self.port)
        out = []
        try:
            for _ in range(n):
                t = time.perf_counter()
                await conn.request("/v1/chat/completions", body)
                out.append(time.perf_counter() - t)
        finally:
            conn.close()
        return out


@asynccontextmanager
async def stub() -> AsyncIterator[Stub]:
    process = subprocess.Popen([sys.executable, "-m", "chatplane.testing"], stdout=subprocess.PIPE, text=True,
                               start_new_session=True)
    try:
        url = process.stdout.readline().strip()  # type: ignore[union-attr]
        yield Stub(process, url)
    finally:
        stop(process)


@asynccontextmanager
async def fresh_database(kind: str, tmp: Path, pg_url: str, name: str) -> AsyncIterator[str]:
    """A new, empty database: a SQLite file under ``tmp`` or a PostgreSQL database, dropped after."""
    if kind == "sqlite":
        yield f"sqlite:///{tmp / (name + '.db')}"
        return
    db_name = f"{name}_{uuid.uuid4().hex[:8]}"
    subprocess.run(["psql", pg_url, "-qc", f'CREATE DATABASE "{db_name}"'], check=True)
    try:
        yield pg_url.rsplit("/", 1)[0] + "/" + db_name
    finally:
        subprocess.run(["psql", pg_url, "-qc", f'DROP DATABASE IF EXISTS "{db_name}" WITH (FORCE)'],
                       stdout=subprocess.DEVNULL, check=False)


# --- the load client -----------------------------------------------------------------


class Conn:
    """A minimal keep-alive HTTP/1.1 client for the measured requests.

    httpx's pool costs the load generator more CPU than the server spends on
    a turn, and on a 2-core machine that CPU comes out of the server's share;
    this costs a few microseconds a request. Reads Content-Length and chunked
    bodies (LangGraph's runs/wait streams its answer).
    """

    def __init__(self, port: int, headers: str = "") -> None:
        self.port = port
        self.headers = headers  # extra header lines, each ending in \r\n
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def connect(self) -> None:
        self.reader, self.writer = await asyncio.open_connection("127.0.0.1", self.port)

    async def request(self, path: str, body: dict | None = None, method: str = "POST") -> tuple[int, bytes]:
        if self.writer is None:
            await self.connect()
        reader = self.reader
        assert reader is not None
        data = json.dumps(body).encode() if body is not None else b""
        self.writer.write(
            f"{method} {path} HTTP/1.1\r\nhost: x\r\n{self.headers}"
            f"content-type: application/json\r\ncontent-length: {len(data)}\r\n\r\n".encode() + data
        )
        head = (await reader.readuntil(b"\r\n\r\n")).lower()
        status = int(head.split(b" ", 2)[1])
        if b"\r\ntransfer-encoding: chunked" in head:
            parts = []
            while True:
                size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
                chunk = await reader.readexactly(size + 2)
                if size == 0:
                    break
                parts.append(chunk[:-2])
            payload = b"".join(parts)
        else:
            payload = await reader.readexactly(int(head.split(b"\r\ncontent-length:")[1].split(b"\r\n")[0]))
        if b"\r\nconnection: close" in head:
            self.close()
        return status, payload

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None


# --- targets and levels ------------------------------------------------------------


@dataclass
class Target:
    """A server under test, as the load sees it."""

    name: str
    process: subprocess.Popen  # its CPU (and its workers') is what we read
    port: int
    new_chat: Callable[[], Awaitable[str]]
    # (chat id, turn index) -> (path, body): one user message.
    message: Callable[[str, int], tuple[str, dict]]
    ok: int  # the status a completed turn answers
    headers: str = ""
    bad: bytes | None = None  # in an answer with status ok: the turn failed all the same
    database: str | None = None  # a PostgreSQL database whose backends' CPU counts as the server's


@dataclass
class Level:
    concurrency: int
    latencies: list[float]
    elapsed: float
    server_cpu: float  # seconds, all of the server's processes
    server_cpu_spread: str  # per busy process
    db_cpu: float  # seconds, its PostgreSQL backends (0 on SQLite, whose work is in the server's processes)
    others_cpu: float  # seconds the rest of the machine was busy (not server, database, stub, load client): noise
    client_cpu: float
    chats: int
    late_chats: int  # chats created inside the timed window (the pre-made ones ran out)

    @property
    def rate(self) -> float:
        return len(self.latencies) / self.elapsed

    @property
    def cpu_per_completion(self) -> float:
        """Server and database CPU per completion."""
        return (self.server_cpu + self.db_cpu) / len(self.latencies)

    @property
    def p50(self) -> float:
        return pct(self.latencies, 0.5)

    @property
    def p99(self) -> float:
        return pct(self.latencies, 0.99)


async def make_chats(target: Target, n: int, parallel: int = 16) -> list[str]:
    out: list[str] = []

    async def one() -> None:
        while len(out) + running[0] < n:
            running[0] += 1
            try:
                out.append(await target.new_chat())
            finally:
                running[0] -= 1

    running = [0]
    await asyncio.gather(*(one() for _ in range(min(parallel, n))))
    return out


async def run_level(target: Target, concurrency: int, *, seconds: float, turns_per_chat: int,
                    expected_rate: float, stub_pid: int) -> Level:
    """``concurrency`` users, each on its own keep-alive connection, each sending its
    next message as soon as the last answer arrives, for ``seconds``. A user's chat
    ends after ``turns_per_chat`` turns and it goes on with a fresh one; the chats
    are made before the clock starts (enough for ``expected_rate``, with a margin).

    Counted: the completions that end inside the window, which opens after the
    first fifth of ``seconds`` (all users start at once) and closes at the end
    (answers still in flight then are waited for, not counted), and the
    server's CPU in that window."""
    need = concurrency + int(expected_rate * seconds * 2 / turns_per_chat)
    pool = deque(await make_chats(target, need))
    made = len(pool)
    late = 0
    latencies: list[float] = []
    # Connections opened one at a time: a burst of connects lands in one
    # uvicorn worker (asyncio accepts everything pending on one wake-up), and
    # that is the server's luck, not its speed.
    conns = []
    for _ in range(concurrency):
        conn = Conn(target.port, target.headers)
        await conn.connect()
        conns.append(conn)
        await asyncio.sleep(0.002)
    begin = time.perf_counter()
    open_at, stop_at = begin + seconds / 5, begin + seconds

    async def user(conn: Conn) -> None:
        nonlocal late
        try:
            while time.perf_counter() < stop_at:
                if pool:
                    chat = pool.popleft()
                else:
                    late += 1
                    chat = await target.new_chat()
                for i in range(turns_per_chat):
                    if time.perf_counter() >= stop_at:
                        break
                    path, body = target.message(chat, i)
                    t = time.perf_counter()
                    status, answer = await conn.request(path, body)
                    done = time.perf_counter()
                    if open_at <= done < stop_at:
                        latencies.append(done - t)
                    if status != target.ok or (target.bad and target.bad in answer):
                        raise RuntimeError(f"{target.name}: {status} {answer[:500]!r}")
        finally:
            conn.close()

    readings: list[tuple[dict[int, float], float, float, dict[int, float], float]] = []

    async def meter() -> None:
        for at in (open_at, stop_at):
            await asyncio.sleep(at - time.perf_counter())
            stub_cpu = sum(process_cpu(stub_pid).values())
            db = backends_cpu(target.database) if target.database else {}
            readings.append((process_cpu(target.process.pid), time.process_time(), stub_cpu, db, machine_busy()))

    await asyncio.gather(meter(), *(user(conn) for conn in conns))
    (cpu0, client0, stub0, db0, busy0), (cpu1, client1, stub1, db1, busy1) = readings
    cpu, spread = cpu_spread(cpu0, cpu1)
    client = client1 - client0
    # Backends that ended inside the window (a pool's overflow connections
    # are closed on return) take their CPU with them: a lower bound then.
    db = sum(cpu - db0.get(pid, 0.0) for pid, cpu in db1.items())
    others = (busy1 - busy0) - cpu - db - client - (stub1 - stub0)
    return Level(concurrency, latencies, stop_at - open_at, cpu, spread, db, others, client,
                 made - len(pool) + late, late)


async def warm_up(target: Target, turns_per_chat: int) -> float:
    """30 turns (or 3 s) on one chat; the completions/s they went at."""
    warm = await target.new_chat()
    conn = Conn(target.port, target.headers)
    t = time.perf_counter()
    turns = 0
    while turns < 30 and time.perf_counter() - t < 3:
        path, body = target.message(warm, turns % turns_per_chat)
        status, answer = await conn.request(path, body)
        if status != target.ok:
            raise RuntimeError(f"{target.name}: {status} {answer[:500]!r}")
        turns += 1
    conn.close()
    return turns / (time.perf_counter() - t)


async def run_levels(target: Target, levels: list[int], *, seconds: float, turns_per_chat: int, stub_pid: int,
                     report: Callable[[Level], None] | None = None) -> list[Level]:
    """Warm the target up, then run each level in turn."""
    expected = await warm_up(target, turns_per_chat)
    out = []
    for concurrency in levels:
        level = await run_level(target, concurrency, seconds=seconds, turns_per_chat=turns_per_chat,
                                expected_rate=expected * 1.5, stub_pid=stub_pid)
        expected = max(expected, level.rate)
        out.append(level)
        if report:
            report(level)
    return out


def level_line(level: Level) -> str:
    late = f", {level.late_chats} made late" if level.late_chats else ""
    return (f"c={level.concurrency:<4} {level.rate:7.1f} completions/s   p50 {ms(level.p50)}  p99 {ms(level.p99)}"
            f"  p99/p50 {level.p99 / level.p50:4.2f}   (n={len(level.latencies)}, {level.chats} chats{late})"
            f"   cpu: server {level.server_cpu_spread}{f' + postgres {level.db_cpu:.1f}s' if level.db_cpu else ''}"
            f" = {level.cpu_per_completion * 1000:.2f} ms/completion, load client {level.client_cpu:.1f}s,"
            f" rest of machine {level.others_cpu:.1f}s of {level.elapsed * CORES:.0f}")
