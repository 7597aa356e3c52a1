"""One chat, one turn at a time: many completions at once, several processes."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import pytest

from chatplane.testing import Echo, ScriptedModel
from tests.conftest import BACKENDS, SCRIPTED, dispose_settings, fresh_settings
from tests.processes import KEY, ServerProcess, server_env


@pytest.fixture
def echo_model() -> ScriptedModel:
    model = ScriptedModel(default=Echo(delay_s=0.005)).start_in_thread()
    yield model
    model.stop()


@pytest.mark.parametrize("count", [50, pytest.param(200, marks=pytest.mark.reliability)])
@pytest.mark.parametrize("kind", BACKENDS)
def test_completions_at_once_through_two_processes_stay_ordered(
    kind: str, count: int, tmp_path: Path, echo_model: ScriptedModel
) -> None:
    """``count`` completions fired at once at one chat, half through each of
    two server processes: none lost, none interleaved, no 5xx."""
    settings = fresh_settings(kind, tmp_path)
    providers = [{"name": "echo", "base_url": echo_model.base_url, "models": [{"name": SCRIPTED}]}]
    env = server_env(settings, providers)
    servers = [ServerProcess(env)]  # migrates and bootstraps first, alone
    try:
        servers.append(ServerProcess(env))
        url_a, url_b = (server.url for server in servers)
        headers = {"Authorization": f"Bearer {KEY}"}
        with httpx.Client(headers=headers) as client:
            llm = client.post(url_a + "/api/llms", json={"workspaceId": 1, "display_name": "e", "model": SCRIPTED}).json()
            agent = client.post(url_a + "/api/chat-agents", json={
                "workspaceId": 1, "agent_name": "e", "response_engine": {"type": "uponai-llm", "llm_id": llm["llm_id"]},
            }).json()
            chat = client.post(url_a + "/api/chats", json={"workspaceId": 1, "agent_id": agent["agent_id"]}).json()

        async def fire() -> list[httpx.Response]:
            async with httpx.AsyncClient(headers=headers, timeout=120,
                                         limits=httpx.Limits(max_connections=count)) as client:
                return await asyncio.gather(*(
                    client.post(f"{(url_a, url_b)[i % 2]}/api/chats/{chat['chatId']}/completions",
                                json={"workspaceId": 1, "content": f"message {i}"})
                    for i in range(count)
                ))

        responses = asyncio.run(fire())
        assert [r.status_code for r in responses] == [201] * count, [r.text for r in responses if r.status_code != 201]
        for i, response in enumerate(responses):
            assert response.json()["messages"][0]["content"] == f"echo: message {i}"

        with httpx.Client(headers=headers) as client:
            messages = client.get(f"{url_b}/api/chats/{chat['chatId']}", params={"workspaceId": 1}).json()["messages"]
        assert len(messages) == 2 * count
        users = messages[0::2]
        replies = messages[1::2]
        assert all(m["role"] == "user" for m in users) and all(m["role"] == "assistant" for m in replies)
        # Each user message is followed by its own reply: nothing interleaved.
        for user, reply in zip(users, replies):
            assert reply["content"] == f"echo: {user['content']}"
        assert sorted(m["content"] for m in users) == sorted(f"message {i}" for i in range(count))
        # Each reply saw exactly the history before it: one model call per turn,
        # with 2k+1 messages (k earlier pairs, then the new user message).
        sizes = sorted(len(r["messages"]) for r in echo_model.requests)
        assert sizes == [2 * k + 1 for k in range(count)]
    finally:
        for server in servers:
            server.stop()
        dispose_settings(settings)
