"""Issue 13: hostile input refused at the edge, and nothing stored can break a read.

Each case here answered 500 (or stored a row that broke every later read of
the workspace) before ``limits.InputGuard`` and ``chatplane.text``.
"""

from __future__ import annotations

import gzip
import json
from typing import Any

import httpx
import pytest
from sqlalchemy import text

from chatplane.limits import MAX_DEPTH
from chatplane.testing import Reply
from tests.chat_helpers import make_agent, make_chat, make_llm, say
from tests.conftest import Api, ScriptedModel, assert_error

SURROGATE = "\\ud800"  # as it appears in JSON text: a lone UTF-16 surrogate
NUL = "\\u0000"


def raw(api: Api, method: str, path: str, body: str, **headers: str) -> httpx.Response:
    """``body`` sent as written (httpx's json= cannot encode a lone surrogate)."""
    return api.http.request(method, path, content=body.encode(),
                            headers={"content-type": "application/json", **headers})


def chat_count(api: Api) -> int:
    response = api.get("/api/chats", limit=1000)
    assert response.status_code == 200, response.text
    return len(response.json()["data"])


# (what, method, path template, body template, the field named): the body's
# {bad} is replaced by the bad string, {ws} by the workspace.
BAD_BODIES = [
    ("chat metadata key", "POST", "/api/chats",
     '{{"workspaceId": {ws}, "agent_id": "{agent}", "metadata": {{"{bad}": "x"}}}}', "metadata."),
    ("chat metadata value", "POST", "/api/chats",
     '{{"workspaceId": {ws}, "agent_id": "{agent}", "metadata": {{"k": ["ok", "{bad}"]}}}}', "metadata.k[1]"),
    ("custom_attributes on update", "PATCH", "/api/chats/{chat}",
     '{{"workspaceId": {ws}, "custom_attributes": {{"k": "a{bad}b"}}}}', "custom_attributes.k"),
    ("override_dynamic_variables on update", "PATCH", "/api/chats/{chat}",
     '{{"workspaceId": {ws}, "override_dynamic_variables": {{"k": "{bad}"}}}}', "override_dynamic_variables.k"),
    ("LLM variables", "POST", "/api/llms",
     '{{"workspaceId": {ws}, "display_name": "x", "default_dynamic_variables": {{"k": "{bad}"}}}}',
     "default_dynamic_variables.k"),
    ("agent variables", "POST", "/api/chat-agents",
     '{{"workspaceId": {ws}, "agent_name": "x", "response_engine": {{"type": "uponai-llm", "llm_id": "{llm}"}},'
     ' "uponai_dynamic_variables": {{"k": "{bad}"}}}}', "uponai_dynamic_variables.k"),
    ("tool headers", "POST", "/api/llms",
     '{{"workspaceId": {ws}, "display_name": "x", "general_tools": [{{"type": "custom", "name": "t",'
     ' "description": "d", "url": "http://example.com/", "headers": {{"X-A": "{bad}"}}}}]}}',
     "general_tools[0].headers.X-A"),
    ("completion content", "POST", "/api/chats/{chat}/completions",
     '{{"workspaceId": {ws}, "content": "hi {bad}"}}', "content"),
]


@pytest.mark.parametrize("bad", [SURROGATE, NUL, "\\udfff\\ud800"], ids=["surrogate", "nul", "reversed-pair"])
@pytest.mark.parametrize("case", BAD_BODIES, ids=[case[0] for case in BAD_BODIES])
def test_a_bad_string_anywhere_in_a_body_is_refused_naming_its_field(
    api: Api, model: ScriptedModel, case: tuple[str, str, str, str, str], bad: str
) -> None:
    _, method, path, body, field = case
    llm = make_llm(api)
    agent = make_agent(api, llm)
    chat = make_chat(api, agent)["chatId"]
    before = api.get(f"/api/chats/{chat}").json()
    chats = chat_count(api)
    names = {"ws": api.ws, "agent": agent["agent_id"], "llm": llm["llm_id"], "chat": chat, "bad": bad}
    response = raw(api, method, path.format(**names), body.format(**names))
    error = assert_error(response, 422, "validation_error")
    if field.endswith("."):  # the key itself is the bad string: shown with U+FFFD, NUL too
        assert error["field"] == field + "\ufffd" * (2 if bad == "\\udfff\\ud800" else 1), error
        assert error["message"].startswith(error["field"] + ": key: "), error
    else:
        assert error["field"] == field, error
    assert error["details"][0]["field"] == error["field"]
    # Nothing written, and everything still reads.
    assert chat_count(api) == chats
    assert api.get(f"/api/chats/{chat}").json() == before
    assert api.post("/v3/list-chats", {}).status_code == 200


def test_a_surrogate_pair_is_a_character_and_is_kept(api: Api) -> None:
    agent = make_agent(api)
    response = raw(api, "POST", "/api/chats",
                   f'{{"workspaceId": {api.ws}, "agent_id": "{agent["agent_id"]}", "metadata": {{"k": "\\ud83d\\ude00"}}}}')
    assert response.status_code == 201, response.text
    assert response.json()["metadata"] == {"k": "\U0001f600"}


@pytest.mark.parametrize(("query", "field"), [
    ("agentId=%ED%A0%80", "agentId"),  # a surrogate, UTF-8-encoded: not valid UTF-8
    ("agentId=%ff", "agentId"),
    ("agentId=a%00b", "agentId"),
    ("paginationKey=%C0%80", "paginationKey"),  # an overlong NUL
    ("a%00b=1", "a\ufffdb"),  # the name itself: shown with U+FFFD
    ("%ED%A0%80=1", "\ufffd\ufffd\ufffd"),
])
def test_a_query_parameter_that_is_not_utf8_text_is_refused(api: Api, query: str, field: str) -> None:
    response = api.http.get(f"/api/chats?workspaceId={api.ws}&{query}")
    assert_error(response, 422, "validation_error", field)


@pytest.mark.parametrize("segment", ["%ff", "%ED%A0%80", "a%00"])
def test_a_path_that_is_not_utf8_text_is_refused(api: Api, segment: str) -> None:
    response = api.http.get(f"/api/chats/chat_{segment}?workspaceId={api.ws}")
    assert_error(response, 422, "validation_error", "path")


def test_a_pagination_key_carrying_a_bad_string_is_refused(api: Api) -> None:
    import base64

    for last in ("\ud800", "x" * 500):
        inner = json.dumps({"a": last, "o": "d"}).encode()
        key = base64.urlsafe_b64encode(inner).decode().rstrip("=")
        assert_error(api.get("/api/chats", paginationKey=key), 422, "validation_error", "paginationKey")
        assert_error(api.post("/v3/list-chats", {"pagination_key": key}), 422, "validation_error", "pagination_key")


@pytest.mark.parametrize("path", ["/api/chats/{chat}/completions", "/api/llms", "/v3/list-chats"])
@pytest.mark.parametrize("depth", [MAX_DEPTH + 1, 10_000])
def test_deep_nesting_is_refused_422_on_every_route_the_fast_path_included(
    api: Api, model: ScriptedModel, path: str, depth: int
) -> None:
    chat = make_chat(api)["chatId"]
    nested = "[" * depth + "]" * depth
    body = f'{{"workspaceId": {api.ws}, "content": "hi", "x": {nested}}}'
    error = assert_error(raw(api, "POST", path.format(chat=chat), body), 422, "validation_error", "body")
    assert "nested" in error["message"]
    # A bracket inside a string is no nesting.
    deep_string = '"' + "[" * 1000 + '"'
    model.push(Reply("hello"))
    response = raw(api, "POST", f"/api/chats/{chat}/completions",
                   f'{{"workspaceId": {api.ws}, "content": {deep_string}}}')
    assert response.status_code == 201, response.text


@pytest.mark.parametrize("number", ["1e400", "-1e400", "NaN", "Infinity", str(2**63), "1" + "0" * 5000])
def test_numbers_out_of_range_are_refused(api: Api, number: str) -> None:
    body = f'{{"workspaceId": {api.ws}, "display_name": "x", "x": {number}}}'
    assert_error(raw(api, "POST", "/api/llms", body), 422, "validation_error", "body")


def test_a_compressed_body_is_415_and_a_utf16_body_says_so(api: Api) -> None:
    body = json.dumps({"workspaceId": api.ws, "display_name": "x"}).encode()
    response = api.http.post("/api/llms", content=gzip.compress(body),
                             headers={"content-type": "application/json", "content-encoding": "gzip"})
    assert_error(response, 415, "unsupported_media_type")
    response = api.http.post("/api/llms", content=body.decode().encode("utf-16"),
                             headers={"content-type": "application/json"})
    error = assert_error(response, 422, "validation_error", "body")
    assert "UTF-16" in error["message"] and "NUL" not in error["message"]
    response = api.http.post("/api/llms", content=gzip.compress(body), headers={"content-type": "application/json"})
    assert "compressed" in assert_error(response, 422, "validation_error", "body")["message"]
    # identity is fine
    response = api.http.post("/api/llms", content=body,
                             headers={"content-type": "application/json", "content-encoding": "identity"})
    assert response.status_code == 201, response.text


@pytest.mark.parametrize("moment", [
    "1969-12-31T23:59:59Z", "0001-01-01T00:00:00", "0001-01-01T00:00:00+01:00", "9999-12-31T23:59:59-05:00",
])
def test_time_filters_out_of_range_are_422(api: Api, moment: str) -> None:
    for name in ("startedAfter", "startedBefore"):
        assert_error(api.get("/api/chats", **{name: moment}), 422, "validation_error", name)


def test_time_filters_at_the_ends_of_the_range_are_answered(api: Api) -> None:
    make_chat(api)
    assert len(api.get("/api/chats", startedAfter="1970-01-01T00:00:00Z").json()["data"]) == 1
    assert api.get("/api/chats", startedBefore="9999-12-31T23:59:59Z").status_code == 200


@pytest.mark.parametrize("start", [{"lower_threshold": -(2**62)}, {"upper_threshold": 2**62}, -1, 2**62])
def test_list_v3_time_criteria_at_extremes_never_500(api: Api, start: Any) -> None:
    response = api.post("/v3/list-chats", {"filter_criteria": {"start_timestamp": start}})
    assert response.status_code in (200, 422), response.text


def test_an_error_does_not_echo_a_huge_id(api: Api) -> None:
    long_id = "chat_" + "x" * 10_000
    for path in (f"/api/chats/{long_id}", f"/api/llms/llm_{'x' * 10_000}", f"/api/chat-agents/{long_id}"):
        error = assert_error(api.get(path), 404)
        assert len(error["message"]) < 200, error


# --- what is already stored, or comes from outside -----------------------------------


def test_a_poisoned_row_stored_before_the_edge_checked_reads_with_u_fffd(api: Api) -> None:
    """A lone surrogate stored in SQLite's JSON text (as older servers let in)
    reads back as U+FFFD on every read; PostgreSQL cannot store one at all."""
    chat = make_chat(api, metadata={"k": "v"})["chatId"]
    poison = '{"\\ud800": "a\\udc00b", "k": "\\u0000"}'

    async def store(session):  # type: ignore[no-untyped-def]
        await session.execute(text("UPDATE chats SET metadata = :m, custom_attributes = :m WHERE id = :id"),
                              {"m": poison, "id": chat})

    if api.backend.kind == "postgresql":
        with pytest.raises(Exception, match="(?i)unicode|surrogate|json"):
            api.backend.run(store)
        return
    api.backend.run(store)
    expected = {"\ufffd": "a\ufffdb", "k": "\ufffd"}
    got = api.get(f"/api/chats/{chat}")
    assert got.status_code == 200, got.text
    assert got.json()["metadata"] == expected
    listed = api.get("/api/chats")
    assert listed.status_code == 200 and listed.json()["data"][0]["metadata"] == expected
    v3 = api.post("/v3/list-chats", {})
    assert v3.status_code == 200, v3.text


def test_a_model_reply_with_bad_code_points_is_stored_with_u_fffd(api: Api, model: ScriptedModel) -> None:
    chat = make_chat(api)["chatId"]
    model.push(Reply("a\ud800b\x00c"))  # the scripted server escapes both in its JSON
    response = say(api, chat, "hi")
    assert response.status_code == 201, response.text
    assert response.json()["messages"][-1]["content"] == "a\ufffdb\ufffdc"
    stored = api.get(f"/api/chats/{chat}")
    assert stored.status_code == 200
    assert stored.json()["messages"][-1]["content"] == "a\ufffdb\ufffdc"
