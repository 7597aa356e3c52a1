"""Every Retell route, found from the OpenAPI document (its tag) so new ones are
covered too: no key is 401, a workspace the key was not granted is 404, a key
granted several with none named is 400, junk bodies are 422, a huge one 413,
an unknown id 404, injection strings are data; never a 500."""

from __future__ import annotations

import re
from urllib.parse import quote

import httpx
import pytest

from chatplane import auth
from chatplane.app import create_app
from chatplane.retell.common import TAG, WORKSPACE_HEADER
from chatplane.settings import Settings
from tests.conftest import SCRIPTED, Api, assert_error

SPEC = create_app(Settings()).openapi()
OPERATIONS = sorted(
    (method.upper(), path)
    for path, item in SPEC["paths"].items()
    for method, operation in item.items()
    if TAG in operation.get("tags", ())
)
UNKNOWN = "unknown_01jzzzzzzzzzzzzzzzzzzzzzzz"
# The smallest body each route accepts, so the check under test is the one that answers.
VALID_BODIES = {
    ("POST", "/create-chat"): {"agent_id": "chat_agent_01jzzzzzzzzzzzzzzzzzzzzzzz"},
    ("POST", "/create-chat-agent"): {"response_engine": {"type": "retell-llm", "llm_id": "llm_01jzzzzzzzzzzzzzzzz"}},
    ("POST", "/create-chat-completion"): {"chat_id": "chat_01jzzzzzzzzzzzzzzzzzzzzzzz", "content": "hi"},
    ("POST", "/publish-agent-version/{agent_id}"): {"version": 1},
    ("POST", "/create-agent-version/{agent_id}"): {"base_version": 1},
    ("POST", "/import-phone-number"): {"phone_number": "+15550000000", "twilio_account_sid": "AC" + "0" * 32,
                                       "twilio_auth_token": "x" * 32},
    ("POST", "/create-sms-chat"): {"from_number": "+15550000000", "to_number": "+15550000001"},
}
# The query a route needs, likewise.
VALID_QUERIES = {("DELETE", "/delete-agent-version/{agent_id}"): {"version": 1}}


def _call(api: Api, method: str, path: str, *, key: str | None, headers: dict[str, str] | None = None,
          body: bytes | None = None) -> httpx.Response:
    all_headers = {**({"Authorization": f"Bearer {key}"} if key else {}), **(headers or {})}
    url = api.backend.url + re.sub(r"\{[^}]+\}", UNKNOWN, path)
    if body is not None:
        return httpx.request(method, url, content=body, headers={**all_headers, "content-type": "application/json"})
    if method in ("GET", "DELETE"):
        return httpx.request(method, url, headers=all_headers, params=VALID_QUERIES.get((method, path)))
    return httpx.request(method, url, json=VALID_BODIES.get((method, path), {}), headers=all_headers)


def test_the_retell_routes_are_the_ones_we_serve() -> None:
    paths = {path for _, path in OPERATIONS}
    assert {"/create-chat", "/get-chat/{chat_id}", "/create-chat-completion", "/create-retell-llm",
            "/v2/list-retell-llms", "/create-chat-agent", "/v2/list-agents", "/v3/list-chats"} <= paths


@pytest.mark.parametrize(("method", "path"), OPERATIONS)
def test_the_errors_checked_here_are_documented(method: str, path: str) -> None:
    responses = SPEC["paths"][path][method.lower()]["responses"]
    expected = {"400", "401", "404", "422"} | ({"413"} if method in ("POST", "PATCH") else set())
    assert expected <= set(responses)


@pytest.mark.parametrize(("method", "path"), OPERATIONS)
def test_no_key_is_401(api: Api, method: str, path: str) -> None:
    assert_error(_call(api, method, path, key=None), 401, "unauthorized")


@pytest.mark.parametrize(("method", "path"), OPERATIONS)
def test_a_workspace_the_key_was_not_granted_is_404(api: Api, other: Api, method: str, path: str) -> None:
    response = _call(api, method, path, key=api.key, headers={WORKSPACE_HEADER: str(other.ws)})
    assert_error(response, 404, "workspace_not_found")


@pytest.mark.parametrize(("method", "path"), OPERATIONS)
def test_a_key_of_several_workspaces_must_name_one(api: Api, other: Api, method: str, path: str) -> None:
    async def grant(session):  # type: ignore[no-untyped-def]
        return (await auth.create_key(session, workspace_ids=[api.ws, other.ws], name="both"))[1]

    assert_error(_call(api, method, path, key=api.backend.run(grant)), 400, "workspace_required")


@pytest.mark.parametrize(("method", "path"), [op for op in OPERATIONS if op[0] in ("POST", "PATCH", "PUT")])
def test_junk_bodies_are_422_and_huge_ones_413(api: Api, method: str, path: str) -> None:
    not_utf8 = b'{"x": "\xff"}'
    junk = [b"{", b"[]", b'"text"', not_utf8, b'{"not_a_field": 1}']
    if "requestBody" in SPEC["paths"][path][method.lower()]:  # else the body is not read
        for body in junk:
            assert_error(_call(api, method, path, key=api.key, body=body), 422, "validation_error")
    huge = b'{"x": "' + b"a" * (api.backend.settings.server.max_body_bytes + 1) + b'"}'
    assert_error(_call(api, method, path, key=api.key, body=huge), 413, "payload_too_large")


@pytest.mark.parametrize(("method", "path"), [op for op in OPERATIONS if "{" in op[1]])
def test_unknown_id_is_404(api: Api, method: str, path: str) -> None:
    assert_error(_call(api, method, path, key=api.key), 404)


@pytest.mark.parametrize("hostile", ["' OR 1=1 --", "%", "p_ain", "\\", "chat_agent_%", "\u202e", "x" * 200])
def test_injection_strings_are_data(api: Api, hostile: str) -> None:
    headers = {"Authorization": f"Bearer {api.key}"}
    llm = httpx.post(api.backend.url + "/create-retell-llm", json={"model": SCRIPTED}, headers=headers).json()
    agent = httpx.post(api.backend.url + "/create-chat-agent", headers=headers, json={
        "agent_name": "Plain", "response_engine": {"type": "retell-llm", "llm_id": llm["llm_id"]}}).json()
    found = httpx.post(api.backend.url + "/v2/list-agents", headers=headers,
                       json={"filter_criteria": {"query": hostile}})
    assert found.status_code == 200 and found.json()["items"] == []
    assert httpx.get(api.backend.url + f"/get-chat-agent/{agent['agent_id']}", headers=headers).status_code == 200
    for path in ("/get-chat/", "/get-retell-llm/", "/get-chat-agent/"):
        response = httpx.get(api.backend.url + path + quote(hostile, safe=""), headers=headers)
        assert_error(response, 404)
