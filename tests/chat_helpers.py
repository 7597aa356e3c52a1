"""Factories for chat tests: plain functions with keyword overrides."""

from __future__ import annotations

from typing import Any

from tests.conftest import SCRIPTED, Api


def make_llm(api: Api, **fields: Any) -> dict[str, Any]:
    body = {"display_name": "support", "model": SCRIPTED, **fields}
    response = api.post("/api/llms", body)
    assert response.status_code == 201, response.text
    return response.json()


def make_agent(api: Api, llm: dict[str, Any] | None = None, **fields: Any) -> dict[str, Any]:
    llm = llm or make_llm(api)
    body = {"agent_name": "Support", "response_engine": {"type": "uponai-llm", "llm_id": llm["llm_id"]}, **fields}
    response = api.post("/api/chat-agents", body)
    assert response.status_code == 201, response.text
    return response.json()


def make_chat(api: Api, agent: dict[str, Any] | None = None, **fields: Any) -> dict[str, Any]:
    agent = agent or make_agent(api)
    response = api.post("/api/chats", {"agent_id": agent["agent_id"], **fields})
    assert response.status_code == 201, response.text
    return response.json()


def say(api: Api, chat_id: str, content: str, **kw: Any) -> Any:
    return api.post(f"/api/chats/{chat_id}/completions", {"content": content}, **kw)
