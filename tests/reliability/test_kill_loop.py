"""SIGKILL the server at random moments (30 times per database in CI, 100 with
``CHATPLANE_KILLS=100``), while chats take completions and end (which sends
webhooks and runs post-chat analysis).

After each restart: no half-written turn (every user message has its own
reply right after it) and every completion the client saw answered is there,
once. At the end, on one last server: every job finished, every webhook
delivered and received at least once under its one event id, with the same
body each time, and nothing received that the database does not know.

Everything runs on loopback: the scripted model, the webhook receiver and the
servers. The random moments come from a seed printed on failure;
``CHATPLANE_KILL_SEED`` replays one.
"""

from __future__ import annotations

import asyncio
import os
import random
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import create_async_engine

from chatplane.models import Chat, Job, WebhookDelivery
from chatplane.settings import Settings
from chatplane.testing import Echo, ScriptedModel
from tests.conftest import BACKENDS, SCRIPTED, dispose_settings, fresh_settings
from tests.processes import KEY, ServerProcess, server_env
from tests.webhook_receiver import Answer, Receiver, eventually

pytestmark = pytest.mark.reliability

# CI: 30 per database; the full form, 100 each: CHATPLANE_KILLS=100 .venv/bin/pytest tests/reliability/test_kill_loop.py
KILLS = int(os.environ.get("CHATPLANE_KILLS", "30"))
USERS = 6  # concurrent clients, each: start a chat, 1-3 completions, end it
EVENTS = ["chat_started", "chat_ended", "chat_analyzed"]
HEADERS = {"Authorization": f"Bearer {KEY}"}


@dataclass
class Ledger:
    """What the clients saw acknowledged, and what they only tried."""

    chats: set[str] = field(default_factory=set)
    answered: dict[str, list[str]] = field(default_factory=dict)  # chat -> contents with a 201
    tried: dict[str, list[str]] = field(default_factory=dict)  # chat -> every content sent
    ended: set[str] = field(default_factory=set)
    unexpected: list[str] = field(default_factory=list)  # any status but the expected one


async def _user(client: httpx.AsyncClient, agent_id: str, ledger: Ledger, rng: random.Random, tag: str) -> None:
    """One client's session, until the server dies under it."""
    try:
        for round_ in range(1_000):
            response = await client.post("/api/chats", json={"workspaceId": 1, "agent_id": agent_id})
            if response.status_code != 201:
                ledger.unexpected.append(f"create {response.status_code} {response.text}")
                return
            chat_id = response.json()["chatId"]
            ledger.chats.add(chat_id)
            for n in range(rng.randint(1, 3)):
                content = f"{tag}-{round_}-{n}"
                ledger.tried.setdefault(chat_id, []).append(content)
                response = await client.post(
                    f"/api/chats/{chat_id}/completions", json={"workspaceId": 1, "content": content}
                )
                if response.status_code != 201:
                    ledger.unexpected.append(f"completion {response.status_code} {response.text}")
                    return
                ledger.answered.setdefault(chat_id, []).append(content)
            response = await client.post(f"/api/chats/{chat_id}/end", json={"workspaceId": 1})
            if response.status_code != 204:
                ledger.unexpected.append(f"end {response.status_code} {response.text}")
                return
            ledger.ended.add(chat_id)
    except httpx.TransportError:
        return  # killed mid-request: that request's fate is checked after the restart


async def _load(url: str, agent_id: str, ledger: Ledger, rng: random.Random, tag: str) -> None:
    async with httpx.AsyncClient(base_url=url, headers=HEADERS, timeout=30) as client:
        await asyncio.gather(*(_user(client, agent_id, ledger, rng, f"{tag}u{u}") for u in range(USERS)))


def _check_turns(url: str, chat_ids: set[str], ledger: Ledger, seed: int) -> None:
    """Every turn whole, every answered completion present once."""
    with httpx.Client(base_url=url, headers=HEADERS, timeout=30) as client:
        for chat_id in chat_ids:
            response = client.get(f"/api/chats/{chat_id}", params={"workspaceId": 1})
            assert response.status_code == 200, (seed, response.text)
            messages = response.json()["messages"]
            roles = [m["role"] for m in messages]
            assert roles == ["user", "assistant"] * (len(messages) // 2), (seed, chat_id, roles)
            for user, reply in zip(messages[0::2], messages[1::2]):
                assert reply["content"] == f"echo: {user['content']}", (seed, chat_id, messages)
            contents = [m["content"] for m in messages[0::2]]
            assert len(contents) == len(set(contents)), (seed, chat_id, contents)
            assert set(ledger.answered.get(chat_id, [])) <= set(contents), (seed, chat_id, contents)
            assert set(contents) <= set(ledger.tried.get(chat_id, [])), (seed, chat_id, contents)
            if chat_id in ledger.ended:
                assert response.json()["status"] == "ended", (seed, chat_id)


@dataclass
class Tables:
    jobs: Counter[str]  # status -> count
    deliveries: list[tuple[str, str, str | None]]  # id, status, chat id
    chats: set[str]
    ended: set[str]


async def _read_tables(settings: Settings) -> Tables:
    engine = create_async_engine(settings.resolved_database_url)
    try:
        async with engine.connect() as conn:
            jobs = Counter(dict((await conn.execute(select(Job.status, func.count()).group_by(Job.status))).all()))
            deliveries = [tuple(row) for row in await conn.execute(
                select(WebhookDelivery.id, WebhookDelivery.status, WebhookDelivery.chat_id)
            )]
            chats = set(await conn.scalars(select(Chat.id)))
            ended = set(await conn.scalars(select(Chat.id).where(Chat.status == "ended")))
    finally:
        await engine.dispose()
    return Tables(jobs, deliveries, chats, ended)


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with Receiver() as r:
        r.default = Answer(200, delay_s=0.02)  # a delivery stays in flight for a moment
        yield r


@pytest.mark.parametrize("kind", BACKENDS)
def test_sigkill_at_random_moments_loses_nothing(kind: str, tmp_path: Path, receiver: Receiver) -> None:
    seed = int(os.environ.get("CHATPLANE_KILL_SEED", time.time_ns() % 1_000_000))
    rng = random.Random(seed)
    model = ScriptedModel(default=Echo(delay_s=0.005)).start_in_thread()
    settings = fresh_settings(kind, tmp_path)
    providers = [{"name": "echo", "base_url": model.base_url, "models": [{"name": SCRIPTED}]}]
    env = server_env(
        settings, providers,
        CHATPLANE_ALLOW_PRIVATE_NETWORKS="true",  # the receiver is on loopback
        CHATPLANE_JOBS__POLL_S="0.05",
        CHATPLANE_JOBS__BACKOFF_BASE_S="0.05",
        CHATPLANE_JOBS__BACKOFF_CAP_S="0.5",
        CHATPLANE_JOBS__LEASE_S="1",  # a killed server's jobs come back soon
    )
    ledger = Ledger()
    server: ServerProcess | None = None
    try:
        server = ServerProcess(env)
        with httpx.Client(base_url=server.url, headers=HEADERS) as client:
            llm = client.post("/api/llms", json={"workspaceId": 1, "display_name": "e", "model": SCRIPTED}).json()
            agent = client.post("/api/chat-agents", json={
                "workspaceId": 1, "agent_name": "e",
                "response_engine": {"type": "uponai-llm", "llm_id": llm["llm_id"]},
                "webhook_url": receiver.url, "webhook_events": EVENTS,
            }).json()
        touched: set[str] = set()
        for kill in range(KILLS):
            if kill:
                server = ServerProcess(env)
                _check_turns(server.url, touched, ledger, seed)
            before = set(ledger.chats)
            timer = threading.Timer(rng.uniform(0.02, 0.6), server.kill)
            timer.start()
            asyncio.run(_load(server.url, agent["agent_id"], ledger, rng, f"k{kill}"))
            timer.join()
            touched = ledger.chats - before  # each client starts new chats after a restart
            assert not ledger.unexpected, (seed, ledger.unexpected)

        server = final = ServerProcess(env)
        try:
            tables = eventually(
                lambda: t if set((t := asyncio.run(_read_tables(settings))).jobs) == {"done"} else None,
                timeout_s=120, what="every job done",
            )
            # Also the chats whose creation the client never saw answered:
            # they hold no message, since none was sent to them.
            _check_turns(final.url, tables.chats, ledger, seed)
        finally:
            final.stop()
        deliveries, ended = tables.deliveries, tables.ended
        assert ledger.chats <= tables.chats and ledger.ended <= ended, seed
        assert {status for _, status, _ in deliveries} == {"delivered"}, (seed, Counter(s for _, s, _ in deliveries))
        events_by_id = {delivery_id: chat_id for delivery_id, _, chat_id in deliveries}
        received: dict[str, set[bytes]] = {}
        for request in receiver.received():
            received.setdefault(request.event_id, set()).add(request.raw)
        assert set(received) == set(events_by_id), seed  # all delivered, nothing unknown
        differing = {event_id: bodies for event_id, bodies in received.items() if len(bodies) > 1}
        assert not differing, (seed, differing)  # a repeat is the same event
        started = {r.json["chat"]["chatId"] for r in receiver.received("chat_started")}
        ended_sent = {r.json["chat"]["chatId"] for r in receiver.received("chat_ended")}
        assert ledger.chats <= started, seed
        assert ended <= ended_sent, seed
        assert tables.jobs["done"] >= len(deliveries), seed
    finally:
        if server is not None:
            server.kill()
        model.stop()
        dispose_settings(settings)
