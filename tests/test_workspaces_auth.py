"""Auth, tenancy, the error shape and the body limit, on /api/workspaces and beyond."""

from __future__ import annotations

import httpx
import pytest

from chatplane import auth
from tests.conftest import Api, assert_error


def test_workspaces_lists_only_the_keys_workspaces(api: Api, other: Api) -> None:
    response = api.http.get("/api/workspaces")
    assert response.status_code == 200
    assert response.json() == [{"id": api.ws, "name": "mine"}]
    assert other.http.get("/api/workspaces").json() == [{"id": other.ws, "name": "theirs"}]


def test_key_granted_two_workspaces_sees_both(api: Api, other: Api) -> None:
    async def work(session):
        return (await auth.create_key(session, workspace_ids=[api.ws, other.ws]))[1]

    key = api.backend.run(work)
    response = httpx.get(f"{api.backend.url}/api/workspaces", headers={"Authorization": f"Bearer {key}"})
    assert [w["id"] for w in response.json()] == sorted([api.ws, other.ws])


def test_missing_key_is_401(api: Api) -> None:
    response = httpx.get(f"{api.backend.url}/api/workspaces")
    assert_error(response, 401, "unauthorized")
    assert response.headers["www-authenticate"] == "Bearer"


def test_wrong_scheme_and_wrong_key_are_401(api: Api) -> None:
    for header in (f"Basic {api.key}", "Bearer", "Bearer cp_not-a-real-key", api.key):
        response = httpx.get(f"{api.backend.url}/api/workspaces", headers={"Authorization": header})
        assert_error(response, 401, "unauthorized")


def test_revoked_key_is_401(api: Api) -> None:
    async def work(session):
        key, secret = await auth.create_key(session, workspace_ids=[api.ws])
        await auth.revoke_key(session, key_id=key.id)
        return secret

    secret = api.backend.run(work)
    response = httpx.get(f"{api.backend.url}/api/workspaces", headers={"Authorization": f"Bearer {secret}"})
    assert_error(response, 401)


def test_another_workspace_id_is_404_like_a_missing_one(api: Api, other: Api) -> None:
    theirs = api.get("/api/llms", workspaceId=other.ws)
    missing = api.get("/api/llms", workspaceId=10_000_000)
    assert_error(theirs, 404, "workspace_not_found")
    assert_error(missing, 404, "workspace_not_found")
    assert theirs.json()["error"]["message"].replace(str(other.ws), "N") == missing.json()["error"][
        "message"
    ].replace("10000000", "N")
    body = api.post("/api/llms", {"workspaceId": other.ws, "display_name": "x"})
    assert_error(body, 404, "workspace_not_found")


def test_missing_or_malformed_workspace_id_names_the_field(api: Api) -> None:
    response = api.http.get("/api/llms")
    assert_error(response, 422, "validation_error", "workspaceId")
    response = api.http.get("/api/llms", params={"workspaceId": "one"})
    assert_error(response, 422, "validation_error", "workspaceId")
    response = api.http.post("/api/llms", json={"display_name": "x"})
    assert_error(response, 422, "validation_error", "workspaceId")


def test_unauthenticated_beats_validation(api: Api) -> None:
    response = httpx.post(f"{api.backend.url}/api/llms", content=b"{not json")
    assert_error(response, 401)


@pytest.mark.parametrize("body", [b"{not json", b'{"workspaceId": "\\ud800"}', b"[" * 100 + b"]" * 100,
                                  b'{"n": NaN}'])
@pytest.mark.parametrize("authorization", [None, "Bearer cp_not-a-key", "Basic eDp5"])
def test_a_refused_body_without_a_valid_key_is_401(api: Api, body: bytes, authorization: str | None) -> None:
    headers = {"content-type": "application/json"}
    if authorization:
        headers["authorization"] = authorization
    response = httpx.post(f"{api.backend.url}/api/llms", content=body, headers=headers)
    assert_error(response, 401, "unauthorized")
    assert response.headers["www-authenticate"] == "Bearer"
    # The same body with a valid key is refused for what it is.
    response = api.http.post("/api/llms", content=body, headers={"content-type": "application/json"})
    assert_error(response, 422, "validation_error", "body" if b"ud800" not in body else "workspaceId")


def test_malformed_json_is_422(api: Api) -> None:
    response = api.http.post(
        "/api/llms", content=b'{"workspaceId": 1,', headers={"content-type": "application/json"}
    )
    error = assert_error(response, 422, "validation_error", "body")
    assert "JSON" in error["message"]


def test_body_must_be_an_object(api: Api) -> None:
    response = api.http.post("/api/llms", json=[1, 2, 3])
    assert_error(response, 422, "validation_error")


def test_declared_oversized_body_is_413(api: Api) -> None:
    limit = api.backend.settings.server.max_body_bytes
    body = b'{"workspaceId": 1, "display_name": "' + b"x" * limit + b'"}'
    response = api.http.post("/api/llms", content=body, headers={"content-type": "application/json"})
    assert_error(response, 413, "payload_too_large")


def test_streamed_oversized_body_is_413(api: Api) -> None:
    limit = api.backend.settings.server.max_body_bytes

    def chunks():
        yield b'{"workspaceId": 1, "display_name": "'
        for _ in range(limit // 65536 + 2):
            yield b"x" * 65536
        yield b'"}'

    response = api.http.post("/api/llms", content=chunks(), headers={"content-type": "application/json"})
    assert_error(response, 413, "payload_too_large")
    # Nothing was written.
    assert api.get("/api/llms").json()["data"] == []


def test_body_just_under_the_limit_is_read(api: Api) -> None:
    limit = api.backend.settings.server.max_body_bytes
    prompt = "p" * (limit - 200)
    response = api.post("/api/llms", {"display_name": "big", "general_prompt": prompt[:100_000]})
    assert response.status_code == 201, response.text


def test_unknown_route_and_method_use_the_error_shape(api: Api) -> None:
    assert_error(api.http.get("/api/nothing-here"), 404, "not_found")
    assert_error(api.http.put("/api/workspaces"), 405, "method_not_allowed")


def test_openapi_and_docs_are_served(api: Api) -> None:
    spec = httpx.get(f"{api.backend.url}/openapi.json").json()
    assert spec["info"]["title"] == "chatplane"
    for path in ("/api/workspaces", "/api/llms", "/api/llms/{llm_id}", "/api/chat-agents",
                 "/api/chat-agents/{agent_id}/publish", "/api/chat-agents/{agent_id}/versions"):
        assert path in spec["paths"], path
    docs = httpx.get(f"{api.backend.url}/docs")
    assert docs.status_code == 200 and "swagger" in docs.text.lower()
