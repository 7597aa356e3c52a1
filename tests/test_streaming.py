"""Streaming completions (Accept: text/event-stream) and clients that leave."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest

from chatplane.chats.routes import wants_event_stream
from chatplane.testing import Reply, Truncate
from tests.chat_helpers import make_chat, say
from tests.conftest import Api, ScriptedModel
from tests.seed_schemas import assert_matches_seed

SSE = {"Accept": "text/event-stream"}


def stream_events(api: Api, chat_id: str, content: str, headers: dict[str, str] | None = None) -> tuple[int, list[tuple[str, Any]]]:
    events: list[tuple[str, Any]] = []
    with api.http.stream("POST", f"/api/chats/{chat_id}/completions",
                         json={"workspaceId": api.ws, "content": content}, headers={**SSE, **(headers or {})}) as response:
        if response.headers["content-type"].startswith("application/json"):
            response.read()
            return response.status_code, [("json", response.json())]
        event = None
        for line in response.iter_lines():
            if line.startswith("event: "):
                event = line[len("event: "):]
            elif line.startswith("data: "):
                events.append((event, json.loads(line[len("data: "):])))
        return response.status_code, events


def test_stream_yields_deltas_then_exactly_the_json_answer(api: Api, model: ScriptedModel) -> None:
    chat = make_chat(api)
    model.push(Reply("Hello there, friend"))
    status, events = stream_events(api, chat["chatId"], "hi")
    assert status == 201
    kinds = [kind for kind, _ in events]
    assert kinds == ["delta", "delta", "delta", "done"]
    assert "".join(e["content"] for k, e in events if k == "delta") == "Hello there, friend"
    done = events[-1][1]
    assert_matches_seed(done, "ChatCompletionResponse")
    assert [m["content"] for m in done["messages"]] == ["Hello there, friend"]
    assert model.requests[-1]["stream"] is True
    stored = api.get(f"/api/chats/{chat['chatId']}").json()["messages"]
    assert stored[-1] == done["messages"][0]


def test_openapi_documents_the_stream_under_the_status_it_answers(api: Api) -> None:
    # The stream answers 201, like the JSON answer; it was documented under 200.
    spec = api.http.get("/openapi.json").json()
    responses = spec["paths"]["/api/chats/{chat_id}/completions"]["post"]["responses"]
    assert set(responses["201"]["content"]) == {"application/json", "text/event-stream"}
    assert "200" not in responses


def test_truncated_stream_is_an_error_event_and_stores_nothing(api: Api, model: ScriptedModel) -> None:
    chat = make_chat(api)
    model.push(Truncate("I was about to"), Truncate("again"), Truncate("and again"))
    status, events = stream_events(api, chat["chatId"], "hi")
    assert status == 201
    assert events[-1][0] == "error"
    assert events[-1][1]["status"] == 502 and events[-1][1]["error"]["code"] == "provider_error"
    assert api.get(f"/api/chats/{chat['chatId']}").json()["messages"] == []
    model.push(Reply("recovered"))
    assert say(api, chat["chatId"], "hi").json()["messages"][0]["content"] == "recovered"


def test_stream_on_missing_or_ended_chat_is_a_plain_error(api: Api, other: Api, model: ScriptedModel) -> None:
    status, events = stream_events(api, "chat_nope", "hi")
    assert status == 404 and events[0][1]["error"]["code"] == "chat_not_found"
    theirs = make_chat(other)
    status, events = stream_events(api, theirs["chatId"], "hi")
    assert status == 404
    chat = make_chat(api)
    api.post(f"/api/chats/{chat['chatId']}/end")
    status, events = stream_events(api, chat["chatId"], "hi")
    assert status == 409 and events[0][1]["error"]["code"] == "chat_ended"
    assert model.requests == []


def test_client_that_disconnects_mid_stream_leaves_a_whole_turn(api: Api, model: ScriptedModel) -> None:
    chat = make_chat(api)
    model.push(Reply("one two three four five six", chunk_delay_s=0.1))
    with api.http.stream("POST", f"/api/chats/{chat['chatId']}/completions",
                         json={"workspaceId": api.ws, "content": "talk slowly"}, headers=SSE) as response:
        for line in response.iter_lines():
            if line.startswith("data: "):
                break  # the first delta arrived: hang up
    # The turn goes on without the client and is stored whole.
    deadline = time.monotonic() + 10
    messages: list[dict[str, Any]] = []
    while time.monotonic() < deadline:
        messages = api.get(f"/api/chats/{chat['chatId']}").json()["messages"]
        if messages:
            break
        time.sleep(0.05)
    assert [(m["role"], m["content"]) for m in messages] == [
        ("user", "talk slowly"), ("assistant", "one two three four five six")
    ]
    # And the chat goes on.
    model.push(Reply("still here"))
    assert say(api, chat["chatId"], "hello?").status_code == 201


def test_stream_replays_an_idempotent_answer(api: Api, model: ScriptedModel) -> None:
    chat = make_chat(api)
    first = say(api, chat["chatId"], "hi", headers={"Idempotency-Key": "s-1"}).json()
    status, events = stream_events(api, chat["chatId"], "hi", headers={"Idempotency-Key": "s-1"})
    assert status == 201 and events == [("done", first)]
    assert len(model.requests) == 1


@pytest.mark.parametrize(("accept", "streams"), [
    ("text/event-stream", True),
    ("text/event-stream, application/json", True),
    ("application/json;q=0.9, text/event-stream", True),
    ("text/event-stream;q=0", False),
    ("text/event-stream;q=0, */*", False),
    ("text/event-stream;q=0.5, application/json", False),
    ("*/*", False),
    ("text/*", False),
    ("", False),
    ("not a type, text/event-stream", True),
    ("application/x-not-event-stream", False),
])
def test_accept_is_read_with_its_qualities_on_both_paths(api: Api, model: ScriptedModel, accept: str,
                                                         streams: bool) -> None:
    assert wants_event_stream(accept) is streams
    chat = make_chat(api)
    model.push(Reply("one answer"))
    response = api.http.post(f"/api/chats/{chat['chatId']}/completions",
                             json={"workspaceId": api.ws, "content": "hi"}, headers={"Accept": accept})
    assert response.status_code == 201, response.text
    kind = "text/event-stream" if streams else "application/json"
    assert response.headers["content-type"].startswith(kind)
    assert bool(model.requests[-1].get("stream")) is streams
