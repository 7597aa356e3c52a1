"""Every /api route, found from the OpenAPI document so new routes are covered too:
no key is 401, another workspace is 404, a junk body is 422, a huge body is 413,
and none of it is ever a 500."""

from __future__ import annotations

import re

import httpx
import pytest

from chatplane.app import create_app
from chatplane.settings import Settings
from tests.conftest import Api, assert_error


SPEC = create_app(Settings()).openapi()
OPERATIONS = sorted(
    (method.upper(), path)
    for path, item in SPEC["paths"].items()
    if path.startswith(("/api", "/v3"))
    for method in item
)


def _fill(path: str) -> str:
    return re.sub(r"\{[^}]+\}", "unknown_01jzzzzzzzzzzzzzzzzzzzzzzz", path)


# The smallest body each create route accepts, so the check under test is the
# one that answers (not body validation).
VALID_BODIES = {
    ("POST", "/api/llms"): {"display_name": "x"},
    ("POST", "/api/chats"): {"agent_id": "chat_agent_01jzzzzzzzzzzzzzzzzzzzzzzz"},
    ("POST", "/api/chats/{chat_id}/completions"): {"content": "hello"},
    ("POST", "/api/chat-agents"): {
        "agent_name": "x",
        "response_engine": {"type": "uponai-llm", "llm_id": "llm_01jzzzzzzzzzzzzzzzzzzzzzzz"},
    },
    ("POST", "/api/phone-numbers"): {
        "phone_number": "+15550000000", "twilio_account_sid": "AC" + "0" * 32, "twilio_auth_token": "x" * 32,
    },
    ("POST", "/api/chats/sms"): {"from_number": "+15550000000", "to_number": "+15550000001"},
    ("POST", "/api/knowledge-bases"): {"knowledge_base_name": "x"},
    ("POST", "/api/knowledge-bases/{knowledge_base_id}/sources"): {"knowledge_base_urls": ["https://example.com/"]},
    ("POST", "/api/knowledge-bases/{knowledge_base_id}/search"): {"query": "x"},
}


def _call(api: Api, method: str, path: str, workspace_id: int, key: str | None) -> httpx.Response:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    url = api.backend.url + _fill(path)
    if method in ("GET", "DELETE"):
        return httpx.request(method, url, params={"workspaceId": workspace_id}, headers=headers)
    body = {"workspaceId": workspace_id, **VALID_BODIES.get((method, path), {})}
    return httpx.request(method, url, json=body, headers=headers)


def test_the_api_has_the_routes_we_think_it_has() -> None:
    assert ("GET", "/api/workspaces") in OPERATIONS
    assert len(OPERATIONS) >= 15


@pytest.mark.parametrize(("method", "path"), OPERATIONS)
def test_the_errors_checked_here_are_documented(method: str, path: str) -> None:
    # Found by schemathesis: routes documented their 2xx and FastAPI's default
    # 422 (`{"detail": [...]}`, not our shape) and nothing else.
    expected = {"401"} | ({"404", "422"} if path != "/api/workspaces" else set())
    expected |= {"413"} if method in ("POST", "PATCH") else set()
    responses = SPEC["paths"][path][method.lower()]["responses"]
    assert expected <= set(responses)
    for status in expected:
        schema = responses[status]["content"]["application/json"]["schema"]
        assert schema == {"$ref": "#/components/schemas/ErrorResponse"}, status


@pytest.mark.parametrize(("method", "path"), OPERATIONS)
def test_no_key_is_401(api: Api, method: str, path: str) -> None:
    assert_error(_call(api, method, path, api.ws, None), 401, "unauthorized")


@pytest.mark.parametrize(("method", "path"), [op for op in OPERATIONS if op[1] != "/api/workspaces"])
def test_another_workspace_is_404(api: Api, other: Api, method: str, path: str) -> None:
    assert_error(_call(api, method, path, other.ws, api.key), 404, "workspace_not_found")


@pytest.mark.parametrize(("method", "path"), [op for op in OPERATIONS if op[0] in ("POST", "PATCH")])
def test_junk_bodies_are_422_and_huge_ones_413(api: Api, method: str, path: str) -> None:
    url = api.backend.url + _fill(path)
    headers = {"Authorization": f"Bearer {api.key}", "content-type": "application/json"}
    # Not UTF-8 (found by schemathesis: it was FastAPI's 400 "error parsing the body").
    not_utf8 = b'{"workspaceId": 1, "x": "\xff"}'
    for junk in (b"", b"{", b"[]", b'"text"', b"null", b'{"workspaceId": "x"}', not_utf8):
        response = httpx.request(method, url, content=junk, headers=headers)
        assert_error(response, 422, "validation_error")
    huge = b'{"workspaceId": 1, "x": "' + b"a" * (api.backend.settings.server.max_body_bytes + 1) + b'"}'
    assert_error(httpx.request(method, url, content=huge, headers=headers), 413, "payload_too_large")


@pytest.mark.parametrize(("method", "path"), [op for op in OPERATIONS if "{" in op[1]])
def test_unknown_id_is_404(api: Api, method: str, path: str) -> None:
    # A PATCH with nothing to change is still a valid body: the id decides.
    assert_error(_call(api, method, path, api.ws, api.key), 404)
