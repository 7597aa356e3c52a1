"""``CompletionFastPath`` answers completions exactly as their FastAPI route does.

The same requests go to the test server (fast path on) and to a second
server on the same database with every completion left to the route; their
answers must be the same, errors to the byte, and the fast path must have
answered the valid ones itself (and none of the others).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from chatplane.chats import fast
from chatplane.testing import Fail, Reply
from tests.chat_helpers import make_chat
from tests.conftest import Api, Backend, ScriptedModel, ServerThread


@pytest.fixture
def through_route(backend: Backend) -> Iterator[str]:
    """The URL of a server on the same database without the fast path."""
    with ServerThread(backend.settings, fast_completions=False) as server:
        yield server.url


@pytest.fixture
def fast_answers(monkeypatch: pytest.MonkeyPatch) -> list[bool]:
    """Per completion request seen by a fast path: whether it answered it itself."""
    seen: list[bool] = []
    decide = fast._request

    async def spy(scope):  # type: ignore[no-untyped-def]
        request = await decide(scope)
        seen.append(request is not None)
        return request

    monkeypatch.setattr(fast, "_request", spy)
    return seen


def _answer(response: httpx.Response) -> tuple[int, Any, str | None]:
    """What must match: the status, the body (ids and times aside), the replay header."""
    body = response.json()
    if response.status_code == 201:
        body = [(m["role"], m["content"], m["tool_calls"]) for m in body["messages"]]
    return response.status_code, body, response.headers.get("idempotent-replayed")


def test_every_answer_of_the_fast_path_is_the_routes(  # type: ignore[no-untyped-def]
    api: Api, other: Api, model: ScriptedModel, through_route: str, fast_answers: list[bool]
) -> None:
    ended = make_chat(api)["chatId"]
    assert api.post(f"/api/chats/{ended}/end").status_code == 204
    theirs = make_chat(other)["chatId"]
    auth = {"Authorization": f"Bearer {api.key}"}
    cases: list[tuple[str, bool | None, dict[str, Any]]] = [  # (name, answered by the fast path, request)
        ("a turn", True, {"json": {"workspaceId": api.ws, "content": "hi"}}),
        ("json with a charset", True, {"content": b'{"workspaceId": %d, "content": "hi"}' % api.ws,
                                        "headers": {"content-type": "application/json; charset=utf-8"}}),
        ("a new key", True, {"json": {"workspaceId": api.ws, "content": "hi"}, "headers": {"Idempotency-Key": "k1"}}),
        ("the key again", True, {"json": {"workspaceId": api.ws, "content": "hi"}, "headers": {"Idempotency-Key": "k1"}}),
        ("the key, another message", True,
         {"json": {"workspaceId": api.ws, "content": "other"}, "headers": {"Idempotency-Key": "k1"}}),
        ("a provider failure", True, {"json": {"workspaceId": api.ws, "content": "fail"}}),
        ("a workspace the key lacks", True, {"json": {"workspaceId": other.ws, "content": "hi"}}),
        ("no content", False, {"json": {"workspaceId": api.ws}}),
        ("empty content", False, {"json": {"workspaceId": api.ws, "content": ""}}),
        ("an unknown field", False, {"json": {"workspaceId": api.ws, "content": "hi", "role": "user"}}),
        ("a string workspace", True, {"json": {"workspaceId": str(api.ws), "content": "hi"}}),
        # None: refused before the fast path (limits.InputGuard), on both ways alike.
        ("not json", None, {"content": b"{nope", "headers": {"content-type": "application/json"}}),
        ("not utf-8", None, {"content": b'{"content": "\xff"}', "headers": {"content-type": "application/json"}}),
        ("plain text", False, {"content": b'{"workspaceId": 1, "content": "hi"}',
                               "headers": {"content-type": "text/plain"}}),
        ("a long key", False,
         {"json": {"workspaceId": api.ws, "content": "hi"}, "headers": {"Idempotency-Key": "k" * 256}}),
        ("an unknown key", False, {"json": {"workspaceId": api.ws, "content": "hi"},
                                   "headers": {"Authorization": "Bearer cp_nope"}}),
        ("no key", False, {"json": {"workspaceId": api.ws, "content": "hi"}, "headers": {"Authorization": ""}}),
    ]
    for url in (api.backend.url, through_route):
        chat = make_chat(api)["chatId"]
        answers = []
        for name, _, request in cases:
            model.reset()  # a request refused before the model leaves no reply behind
            if name == "a provider failure":
                model.push(Fail(400, "no such model"))
            else:
                model.push(Reply("hello"))
            headers = {**auth, **request.get("headers", {})}
            kwargs = {k: v for k, v in request.items() if k != "headers"}
            response = httpx.post(f"{url}/api/chats/{chat}/completions", headers=headers, timeout=30, **kwargs)
            answers.append((name, _answer(response)))
        for target, status in ((ended, 409), ("chat_nope", 404), (theirs, 404)):
            response = httpx.post(f"{url}/api/chats/{target}/completions", headers=auth, timeout=30,
                                  json={"workspaceId": api.ws, "content": "hi"})
            assert response.status_code == status
            answers.append((target, _answer(response)))
        model.reset()
        if url == api.backend.url:
            fast_first = answers
            assert fast_answers == [answered for _, answered, _ in cases if answered is not None] + [True, True, True]
        else:
            through = answers
    assert fast_first == through
    statuses = {name: answer[0] for name, answer in fast_first}
    assert statuses["a turn"] == 201 and statuses["the key again"] == 201 and statuses["a provider failure"] == 502
    assert statuses["the key, another message"] == 409 and statuses["no content"] == 422
    assert statuses["an unknown key"] == 401 and statuses["a long key"] == 422
    assert dict(fast_first)["the key again"][2] == "true"
