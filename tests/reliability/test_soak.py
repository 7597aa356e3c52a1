"""Soak: a real ``chatplane serve`` on a SQLite file, driven at 50 requests/s for
2 minutes in CI; the full 10 minutes is ``CHATPLANE_SOAK_S=600 .venv/bin/pytest
tests/reliability/test_soak.py -s`` (``CHATPLANE_SOAK_S`` sets any length).

The load is open-loop: a request leaves every 20 ms whatever the server is
doing, so a server that slows down falls behind instead of slowing the test
down. The mix is what a chat front end sends: create a chat, completions
(each answered by the scripted model, an echo, which is checked), get a chat,
list chats, end a chat (which queues the post-chat analysis the server's own
job worker then runs against the scripted model).

It fails on:
- any response other than the expected status (or a timeout, or a reply that
  is not the echo of its message);
- the server's resident memory growing by 10% or more between the end of the
  warm-up (the first third, at most a minute) and the end;
- an achieved rate under 95% of 50/s (answers received within the window).

The operations are drawn from a seeded generator; the seed is printed with
the figures, and ``CHATPLANE_SOAK_SEED`` replays it.
"""

from __future__ import annotations

import asyncio
import os
import random
import statistics
import subprocess
import sys
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from chatplane.testing import Echo, Reply, ScriptedModel
from tests.conftest import SCRIPTED, fresh_settings
from tests.processes import KEY, free_port, server_env

pytestmark = pytest.mark.soak

DURATION_S = float(os.environ.get("CHATPLANE_SOAK_S", "120"))
WARMUP_S = min(60.0, DURATION_S / 3)
RATE = 50.0  # requests per second
MAX_RSS_GROWTH = 0.10
MIN_RATE = 0.95 * RATE
SAMPLE_S = 5.0  # how often server memory is read
# Operation -> weight; the chat pool is kept between these bounds.
MIX = {"completion": 45, "get": 20, "list": 15, "create": 10, "end": 10}
POOL_MIN, POOL_MAX = 8, 40
EXPECTED = {"create": 201, "completion": 201, "get": 200, "list": 200, "end": 204}
ANALYSIS = ('{"chat_summary": "The user said a few things.", "user_sentiment": "Neutral", '
            '"chat_successful": true, "custom_analysis_data": {}}')


def server_rss_kib(pid: int) -> int:
    """Resident memory of the server: the process and all its descendants."""
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        try:
            status = Path(f"/proc/{p}/status").read_text()
        except OSError:
            continue
        total += int(status.split("VmRSS:", 1)[1].split()[0])
        for task in Path(f"/proc/{p}/task").glob("*"):
            try:
                todo += [int(c) for c in (task / "children").read_text().split()]
            except OSError:
                pass
    return total


@dataclass
class Load:
    """What the driver sent and saw."""

    started: float
    agent_id: str
    seed: int
    rng: random.Random
    idle: list[str] = field(default_factory=list)  # ongoing chats with no request in flight
    busy: int = 0  # ongoing chats with a request in flight
    known: list[str] = field(default_factory=list)  # recent chats of any status, for reads
    sent: int = 0
    answered_in_window: int = 0
    in_flight: int = 0
    peak_in_flight: dict[str, int] = field(default_factory=lambda: {"warm-up": 0, "after": 0})
    latencies: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    errors: list[str] = field(default_factory=list)
    rss: dict[float, int] = field(default_factory=dict)  # seconds since start -> KiB

    def pick(self) -> tuple[str, str | None]:
        """The next operation, and the chat it is for, taken out of the pool at once
        (a completion or an end must not meet another request's end on its chat)."""
        op = self.rng.choices(list(MIX), weights=list(MIX.values()))[0]
        pool = len(self.idle) + self.busy
        if op in ("completion", "end") and not self.idle or op == "end" and pool <= POOL_MIN:
            op = "create"
        elif op == "create" and pool >= POOL_MAX:
            op = "end" if self.idle else "list"
        elif op == "get" and not self.known:
            op = "create"
        if op == "get":
            return op, self.rng.choice(self.known)
        if op in ("completion", "end"):
            self.busy += 1
            return op, self.idle.pop(self.rng.randrange(len(self.idle)))
        return op, None


async def _request(client: httpx.AsyncClient, load: Load, op: str, chat: str | None, n: int) -> None:
    sent = time.monotonic()
    keep = False  # the chat goes back to the pool (a completion that did not end it)
    # Requests in flight hold memory in the server: a stall of the machine shows up
    # as a step in its RSS, which the report should explain.
    load.in_flight += 1
    phase = "warm-up" if sent - load.started < WARMUP_S else "after"
    load.peak_in_flight[phase] = max(load.peak_in_flight[phase], load.in_flight)
    try:
        if op == "create":
            response = await client.post("/api/chats", json={"workspaceId": 1, "agent_id": load.agent_id})
        elif op == "completion":
            content = f"message {n}"
            response = await client.post(f"/api/chats/{chat}/completions", json={"workspaceId": 1, "content": content})
            keep = True
        elif op == "get":
            response = await client.get(f"/api/chats/{chat}", params={"workspaceId": 1})
        elif op == "list":
            response = await client.get("/api/chats", params={"workspaceId": 1, "limit": 20})
        else:
            response = await client.post(f"/api/chats/{chat}/end", json={"workspaceId": 1})
    except httpx.HTTPError as exc:
        load.errors.append(f"{op} at {sent - load.started:.1f}s: {type(exc).__name__} {exc}")
        return
    finally:
        load.in_flight -= 1
        if op in ("completion", "end"):
            load.busy -= 1
            if keep:
                load.idle.append(chat)
    done = time.monotonic()
    load.latencies[op].append(done - sent)
    if done - load.started <= DURATION_S:
        load.answered_in_window += 1
    if response.status_code != EXPECTED[op]:
        load.errors.append(f"{op} at {sent - load.started:.1f}s: {response.status_code} {response.text[:300]}")
        return
    if op == "create":
        chat_id = response.json()["chatId"]
        load.idle.append(chat_id)
        load.known.append(chat_id)
        del load.known[:-200]
    elif op == "completion":
        [message] = response.json()["messages"]
        if message["content"] != f"echo: {content}":
            load.errors.append(f"completion at {sent - load.started:.1f}s: reply {message['content']!r}")


def _sample_times() -> list[float]:
    """When server memory is read: every SAMPLE_S, and exactly at the two moments compared."""
    times = {k * SAMPLE_S for k in range(int(DURATION_S // SAMPLE_S) + 1)} | {WARMUP_S, DURATION_S}
    return sorted(t for t in times if t <= DURATION_S)


async def _sample_memory(load: Load, pid: int, model: ScriptedModel) -> None:
    for at in _sample_times():
        await asyncio.sleep(max(0.0, load.started + at - time.monotonic()))
        load.rss[at] = server_rss_kib(pid)
        model.reset()  # the scripted model logs every request: keep this process's own memory flat


def _finished(task: asyncio.Task[None], load: Load, tasks: set[asyncio.Task[None]]) -> None:
    tasks.discard(task)
    if not task.cancelled() and task.exception() is not None:
        load.errors.append(f"the load driver failed: {task.exception()!r}")


async def _drive(base_url: str, agent_id: str, pid: int, model: ScriptedModel, seed: int) -> Load:
    load = Load(started=time.monotonic(), agent_id=agent_id, seed=seed, rng=random.Random(seed))
    limits = httpx.Limits(max_connections=200, max_keepalive_connections=200)
    async with httpx.AsyncClient(base_url=base_url, headers={"Authorization": f"Bearer {KEY}"},
                                 timeout=30, limits=limits) as client:
        sampler = asyncio.create_task(_sample_memory(load, pid, model))
        tasks: set[asyncio.Task[None]] = set()
        while True:
            due = load.started + load.sent / RATE
            if due - load.started >= DURATION_S:
                break
            await asyncio.sleep(max(0.0, due - time.monotonic()))  # yields even when behind
            task = asyncio.create_task(_request(client, load, *load.pick(), load.sent))
            tasks.add(task)
            task.add_done_callback(lambda t: _finished(t, load, tasks))
            load.sent += 1
        await sampler
        if tasks:
            await asyncio.wait(tasks, timeout=60)
        for task in list(tasks):
            task.cancel()
            load.errors.append("a request still had no answer 60 s after the load stopped")
    return load


def _report(load: Load) -> str:
    lines = [(f"soak: {DURATION_S:.0f} s at {RATE:.0f}/s, seed {load.seed}, {load.sent} requests sent, "
              f"{len(load.errors)} errors")]
    for op, values in sorted(load.latencies.items()):
        ordered = sorted(values)
        lines.append(f"  {op:<10} n={len(values):6d}  p50 {statistics.median(values) * 1000:7.1f} ms  "
                     f"p99 {ordered[int(0.99 * (len(ordered) - 1))] * 1000:7.1f} ms  max {ordered[-1] * 1000:7.1f} ms")
    shown = [t for t in load.rss if t % 60 == 0 or t in (WARMUP_S, DURATION_S)]
    lines.append("  server RSS: " + ", ".join(f"{t:.0f}s {load.rss[t] / 1024:.1f} MiB" for t in shown))
    lines.append(f"  most requests in flight: {load.peak_in_flight['warm-up']} during the warm-up, "
                 f"{load.peak_in_flight['after']} after")
    return "\n".join(lines)


def test_soak_50_requests_per_second(tmp_path: Path) -> None:
    model = ScriptedModel(default=Echo()).start_in_thread()
    model.structured_default = Reply(ANALYSIS)  # post-chat analysis succeeds
    settings = fresh_settings("sqlite", tmp_path)
    providers = [{"name": "scripted", "base_url": model.base_url, "models": [{"name": SCRIPTED}]}]
    port = free_port()
    log = tmp_path / "server.log"
    with log.open("wb") as log_file:
        server = subprocess.Popen(
            [sys.executable, "-m", "chatplane.cli", "serve", "--port", str(port), "--log-level", "warning"],
            env=server_env(settings, providers), stdout=log_file, stderr=subprocess.STDOUT,
        )
    base_url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            assert server.poll() is None and time.monotonic() < deadline, log.read_text()
            try:
                httpx.get(base_url + "/healthz", timeout=1)
                break
            except httpx.TransportError:
                time.sleep(0.05)
        headers = {"Authorization": f"Bearer {KEY}"}
        llm = httpx.post(base_url + "/api/llms", headers=headers, json={
            "workspaceId": 1, "display_name": "soak", "model": SCRIPTED, "general_prompt": "You are {{name}}.",
            "default_dynamic_variables": {"name": "Ava"},
        })
        assert llm.status_code == 201, llm.text
        agent = httpx.post(base_url + "/api/chat-agents", headers=headers, json={
            "workspaceId": 1, "agent_name": "soak",
            "response_engine": {"type": "uponai-llm", "llm_id": llm.json()["llm_id"]},
        })
        assert agent.status_code == 201, agent.text

        seed = int(os.environ.get("CHATPLANE_SOAK_SEED", random.randrange(1 << 30)))
        load = asyncio.run(_drive(base_url, agent.json()["agent_id"], server.pid, model, seed))
        alive = server.poll() is None
    finally:
        server.terminate()
        try:
            server.wait(30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait(10)
        model.stop()

    report = _report(load)
    warm, end = load.rss[WARMUP_S], load.rss[DURATION_S]
    growth = end / warm - 1
    rate = load.answered_in_window / DURATION_S
    report += (f"\n  RSS after warm-up ({WARMUP_S:.0f}s) {warm / 1024:.1f} MiB, at the end {end / 1024:.1f} MiB: "
               f"{growth * 100:+.1f}% (limit +{MAX_RSS_GROWTH * 100:.0f}%)"
               f"\n  achieved {rate:.1f} answered requests/s (limit {MIN_RATE:.1f})")
    print(report)
    server_log = log.read_text()[-3000:]
    assert alive, f"the server died during the soak\n{report}\n{server_log}"
    assert not load.errors, "\n".join([report, *load.errors[:20], server_log])
    assert growth < MAX_RSS_GROWTH, report
    assert rate >= MIN_RATE, report
