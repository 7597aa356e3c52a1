"""Every route, called with another workspace's key and this workspace's real
ids: nothing leaks and nothing changes.

Workspace A gets one of everything (an LLM with a published version, an agent
with a webhook, a chat with messages and metadata, a phone number with a
Twilio token, a webhook delivery, its webhook key). Then workspace B's key
calls every operation of the OpenAPI document, once with B's own workspace
and A's ids, once naming A's workspace: never a 2xx that touches A, never a
5xx, no answer that contains anything of A's, and afterwards A reads exactly
as before.
"""

from __future__ import annotations

import re
from typing import Any

import httpx
import pytest

from chatplane.testing import Reply, ScriptedModel
from tests.chat_helpers import make_agent, make_chat, make_llm, say
from tests.conftest import Api
from tests.knowledge.helpers import settled
from tests.test_every_route import OPERATIONS

pytestmark = pytest.mark.reliability

SECRET = "secret-of-workspace-a-7f3c"
PHONE = "+15557654321"
TWILIO_TOKEN = "a" * 24 + "5ec7e7a4"


def _ok(response: httpx.Response) -> dict[str, Any]:
    assert response.status_code in (200, 201), response.text
    return response.json()


def _world(api: Api, model: ScriptedModel) -> dict[str, str]:
    """One of everything in A's workspace; returns the ids and secrets that must not leak."""
    llm = make_llm(api, general_prompt=f"You guard {SECRET}-prompt.")
    _ok(api.post(f"/api/llms/{llm['llm_id']}/publish"))
    agent = make_agent(api, llm, agent_name=f"{SECRET}-agent",
                       webhook_url="http://127.0.0.1:9/hook", webhook_events=["chat_started"])
    chat = make_chat(api, agent, metadata={"note": f"{SECRET}-metadata"})
    model.push(Reply(f"{SECRET}-reply"))
    assert say(api, chat["chatId"], f"{SECRET}-message").status_code == 201
    phone = _ok(api.post("/api/phone-numbers", {
        "phone_number": PHONE, "twilio_account_sid": "AC" + "1" * 32, "twilio_auth_token": TWILIO_TOKEN,
        "nickname": f"{SECRET}-phone",
    }))
    [delivery] = _ok(api.get("/api/webhook-deliveries", chatId=chat["chatId"]))["data"]
    kb = _ok(api.post("/api/knowledge-bases", {
        "knowledge_base_name": "secrets", "knowledge_base_texts": [{"title": f"{SECRET}-title", "text": f"{SECRET}-text"}],
    }))
    settled(api, kb["knowledge_base_id"])
    _ok(api.patch(f"/api/llms/{llm['llm_id']}", {"knowledge_base_ids": [kb["knowledge_base_id"]]}))
    webhook_key = _ok(api.http.get(f"/api/workspaces/{api.ws}/webhook-key"))["webhook_key"]
    return {
        "llm_id": llm["llm_id"], "agent_id": agent["agent_id"], "chat_id": chat["chatId"],
        "phone_number": phone["phone_number"], "delivery_id": delivery["id"],
        "knowledge_base_id": kb["knowledge_base_id"], "source_id": kb["knowledge_base_sources"][0]["source_id"],
        "workspace_id": str(api.ws), "webhook_key": webhook_key, "api_key": api.key,
        "twilio_token": TWILIO_TOKEN, "secret": SECRET,
    }


def _snapshot(api: Api, ids: dict[str, str]) -> dict[str, Any]:
    """How A reads, through A's own key."""
    return {
        "llm": _ok(api.get(f"/api/llms/{ids['llm_id']}")),
        "llm_versions": _ok(api.get(f"/api/llms/{ids['llm_id']}/versions")),
        "agent": _ok(api.get(f"/api/chat-agents/{ids['agent_id']}")),
        "agent_versions": _ok(api.get(f"/api/chat-agents/{ids['agent_id']}/versions")),
        "chat": _ok(api.get(f"/api/chats/{ids['chat_id']}")),
        "chats": _ok(api.get("/api/chats")),
        "phone": _ok(api.get(f"/api/phone-numbers/{ids['phone_number']}")),
        "delivery": {k: v for k, v in _ok(api.get(f"/api/webhook-deliveries/{ids['delivery_id']}")).items()
                     if k != "attempts"},  # refused attempts may still be recorded
        "webhook_key": _ok(api.http.get(f"/api/workspaces/{api.ws}/webhook-key")),
        "knowledge_base": _ok(api.get(f"/api/knowledge-bases/{ids['knowledge_base_id']}")),
        "chunks": _ok(api.get(f"/api/knowledge-bases/{ids['knowledge_base_id']}/sources/{ids['source_id']}/chunks")),
    }


def _body(method: str, path: str, ids: dict[str, str]) -> dict[str, Any]:
    """A valid body for the route, naming A's things wherever it names anything."""
    bodies: dict[tuple[str, str], dict[str, Any]] = {
        ("POST", "/api/llms"): {"display_name": "b", "knowledge_base_ids": [ids["knowledge_base_id"]]},
        ("PATCH", "/api/llms/{llm_id}"): {"display_name": "b"},
        ("POST", "/api/chat-agents"): {
            "agent_name": "b", "response_engine": {"type": "uponai-llm", "llm_id": ids["llm_id"]},
        },
        ("PATCH", "/api/chat-agents/{agent_id}"): {"agent_name": "b"},
        ("POST", "/api/chats"): {"agent_id": ids["agent_id"]},
        ("PATCH", "/api/chats/{chat_id}"): {"metadata": {"b": "1"}},
        ("POST", "/api/chats/{chat_id}/completions"): {"content": "b"},
        ("POST", "/api/phone-numbers"): {
            "phone_number": ids["phone_number"], "twilio_account_sid": "AC" + "2" * 32,
            "twilio_auth_token": "b" * 32,
        },
        ("PATCH", "/api/phone-numbers/{phone_number}"): {"nickname": "b"},
        ("POST", "/api/chats/sms"): {"from_number": ids["phone_number"], "to_number": "+15550000001"},
        ("POST", "/v3/list-chats"): {"filter_criteria": {"agent": [{"agent_id": ids["agent_id"]}]}},
        ("POST", "/api/knowledge-bases"): {"knowledge_base_name": "b"},
        ("POST", "/api/knowledge-bases/{knowledge_base_id}/sources"): {
            "knowledge_base_texts": [{"title": "b", "text": "b"}],
        },
        ("POST", "/api/knowledge-bases/{knowledge_base_id}/search"): {"query": SECRET},
    }
    return bodies.get((method, path), {})


def _call(client: Api, method: str, path: str, ids: dict[str, str], workspace_id: str) -> httpx.Response:
    url = re.sub(r"\{([^}]+)\}", lambda m: ids[m.group(1)], path)
    if method in ("GET", "DELETE"):
        return client.http.request(method, url, params={"workspaceId": workspace_id})
    return client.http.request(method, url, json={"workspaceId": int(workspace_id), **_body(method, path, ids)})


def _leaks(response: httpx.Response, ids: dict[str, str]) -> list[str]:
    """A's values in the answer that the request did not itself send (a 404
    may name the id it was asked for)."""
    sent = str(response.request.url) + response.request.content.decode()
    text = response.text
    return [name for name, value in ids.items() if name != "workspace_id" and value in text and value not in sent]


def test_another_workspaces_key_sees_and_changes_nothing(api: Api, other: Api, model: ScriptedModel) -> None:
    ids = _world(api, model)
    before = _snapshot(api, ids)
    for method, path in OPERATIONS:
        for workspace in (str(other.ws), ids["workspace_id"]):
            response = _call(other, method, path, ids, workspace)
            where = f"{method} {path} as B in workspace {workspace}: {response.status_code} {response.text}"
            assert response.status_code < 500, where
            assert not _leaks(response, ids), (where, _leaks(response, ids))
            if (method, path) == ("GET", "/api/workspaces"):
                assert response.status_code == 200, where  # the key's own workspaces, whatever is asked
            elif workspace == ids["workspace_id"]:
                # A's workspace is not B's to name: the same 404 as a missing one.
                assert response.status_code == 404, where
            elif "{" in path:
                # A's id in B's workspace: as if it did not exist.
                assert response.status_code == 404, where
            elif (method, path) in {("POST", "/api/chats"), ("POST", "/api/chats/sms")}:
                assert response.status_code == 404, where  # A's agent / number are not B's
            elif (method, path) == ("POST", "/api/chat-agents"):
                assert response.status_code in (404, 422), where  # A's LLM is not B's
            elif (method, path) == ("POST", "/api/llms") and "knowledge_base_ids" in _body(method, path, ids):
                assert response.status_code == 422, where  # A's knowledge base is not B's
            elif (method, path) == ("POST", "/api/phone-numbers"):
                # Numbers are unique across workspaces (Twilio posts a number's
                # texts to one place): taken, without saying by whom.
                assert response.status_code == 409, where
            else:
                assert response.status_code in (200, 201), where  # B's own lists and creations
    assert _snapshot(api, ids) == before
