"""One chat, one turn at a time: many completions at once, several processes."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from chatplane.testing import Echo, ScriptedModel
from tests.conftest import BACKENDS, SCRIPTED, dispose_settings, fresh_settings

KEY = "concurrency-test-key-0123456789"


def _port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _serve(env: dict[str, str]) -> tuple[subprocess.Popen[bytes], str]:
    port = _port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "chatplane.cli", "serve", "--port", str(port), "--log-level", "warning"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            httpx.get(url + "/healthz")
            return proc, url
        except httpx.TransportError:
            time.sleep(0.05)
    proc.kill()
    raise RuntimeError("server did not start")


@pytest.fixture
def echo_model() -> ScriptedModel:
    model = ScriptedModel(default=Echo(delay_s=0.005)).start_in_thread()
    yield model
    model.stop()


@pytest.mark.parametrize("kind", BACKENDS)
def test_50_completions_at_once_through_two_processes_stay_ordered(
    kind: str, tmp_path: Path, echo_model: ScriptedModel
) -> None:
    settings = fresh_settings(kind, tmp_path)
    providers = [{"name": "echo", "base_url": echo_model.base_url, "models": [{"name": SCRIPTED}]}]
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHATPLANE_")}
    env.update(
        CHATPLANE_DATA_DIR=str(tmp_path),
        CHATPLANE_BOOTSTRAP_API_KEY=KEY,
        CHATPLANE_PROVIDERS=json.dumps(providers),
    )
    if not settings.is_sqlite:
        env["CHATPLANE_DATABASE_URL"] = settings.resolved_database_url
    first, url_a = _serve(env)  # migrates and bootstraps first, alone
    second, url_b = _serve(env)
    try:
        headers = {"Authorization": f"Bearer {KEY}"}
        with httpx.Client(headers=headers) as client:
            llm = client.post(url_a + "/api/llms", json={"workspaceId": 1, "display_name": "e", "model": SCRIPTED}).json()
            agent = client.post(url_a + "/api/chat-agents", json={
                "workspaceId": 1, "agent_name": "e", "response_engine": {"type": "uponai-llm", "llm_id": llm["llm_id"]},
            }).json()
            chat = client.post(url_a + "/api/chats", json={"workspaceId": 1, "agent_id": agent["agent_id"]}).json()

        async def fire() -> list[httpx.Response]:
            async with httpx.AsyncClient(headers=headers, timeout=120,
                                         limits=httpx.Limits(max_connections=100)) as client:
                return await asyncio.gather(*(
                    client.post(f"{(url_a, url_b)[i % 2]}/api/chats/{chat['chatId']}/completions",
                                json={"workspaceId": 1, "content": f"message {i}"})
                    for i in range(50)
                ))

        responses = asyncio.run(fire())
        assert [r.status_code for r in responses] == [201] * 50, [r.text for r in responses if r.status_code != 201]
        for i, response in enumerate(responses):
            assert response.json()["messages"][0]["content"] == f"echo: message {i}"

        with httpx.Client(headers=headers) as client:
            messages = client.get(f"{url_b}/api/chats/{chat['chatId']}", params={"workspaceId": 1}).json()["messages"]
        assert len(messages) == 100
        users = messages[0::2]
        replies = messages[1::2]
        assert all(m["role"] == "user" for m in users) and all(m["role"] == "assistant" for m in replies)
        # Each user message is followed by its own reply: nothing interleaved.
        for user, reply in zip(users, replies):
            assert reply["content"] == f"echo: {user['content']}"
        assert sorted(m["content"] for m in users) == sorted(f"message {i}" for i in range(50))
        # Each reply saw exactly the history before it: one model call per turn,
        # with 2k+1 messages (k earlier pairs, then the new user message).
        sizes = sorted(len(r["messages"]) for r in echo_model.requests)
        assert sizes == [2 * k + 1 for k in range(50)]
    finally:
        for proc in (first, second):
            proc.terminate()
            proc.wait(20)
        dispose_settings(settings)
