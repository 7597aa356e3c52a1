"""The real embedded model (SmolLM2-135M via llama.cpp), end to end.

Its wording depends on the CPU build, so these assert structure, not text.
"""

from __future__ import annotations

import json

from tests.chat_helpers import make_agent, make_chat, say
from tests.conftest import Api


def _embedded_agent(api: Api) -> dict:
    llm = api.post("/api/llms", {"display_name": "local", "general_prompt": "You are a friendly shop assistant."})
    assert llm.status_code == 201
    assert llm.json()["model"] == api.backend.settings.embedded.name  # the default when nothing is configured
    return make_agent(api, llm.json())


def test_embedded_model_answers(api: Api) -> None:
    chat = make_chat(api, _embedded_agent(api))
    response = say(api, chat["chatId"], "Hello! What do you sell?")
    assert response.status_code == 201, response.text
    [message] = response.json()["messages"]
    assert message["role"] == "assistant" and message["content"].strip()
    assert api.get(f"/api/chats/{chat['chatId']}").json()["transcript"].startswith("User: Hello! What do you sell?\n")


def test_embedded_model_streams_deltas(api: Api) -> None:
    chat = make_chat(api, _embedded_agent(api))
    events = []
    with api.http.stream("POST", f"/api/chats/{chat['chatId']}/completions",
                         json={"workspaceId": api.ws, "content": "Tell me about your shop."},
                         headers={"Accept": "text/event-stream"}) as response:
        assert response.status_code == 201
        kind = None
        for line in response.iter_lines():
            if line.startswith("event: "):
                kind = line[7:]
            elif line.startswith("data: "):
                events.append((kind, json.loads(line[6:])))
    deltas = [e["content"] for k, e in events if k == "delta"]
    assert len(deltas) > 3
    assert events[-1][0] == "done"
    assert events[-1][1]["messages"][0]["content"] == "".join(deltas)
