"""/api/llms: LLM configurations, their versions, pagination and every error they answer."""

from __future__ import annotations

import base64
import copy
import json
import re
import threading
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest

from tests.conftest import SCRIPTED, Api, assert_error

LLMS = "/api/llms"
INT32_MAX = 2_147_483_647

CONFIG_KEYS = {
    "display_name", "model", "model_temperature", "general_prompt", "begin_message",
    "general_tools", "states", "starting_state", "knowledge_base_ids", "kb_config",
    "default_dynamic_variables",
}
META_KEYS = {"llm_id", "version", "is_published", "created_at", "updated_at", "last_modification_timestamp"}
ID_PATTERN = re.compile(r"^llm_[0-9a-z]{26}$")
# An id shaped like a real one that no workspace has.
MISSING_ID = "llm_01jzzzzzzzzzzzzzzzzzzzzzzz"


# --- helpers -------------------------------------------------------------------


def create(api: Api, **fields: Any) -> dict[str, Any]:
    response = api.post(LLMS, {"display_name": "llm", **fields})
    assert response.status_code == 201, response.text
    return response.json()


def get(api: Api, llm_id: str, **params: Any) -> dict[str, Any]:
    response = api.get(f"{LLMS}/{llm_id}", **params)
    assert response.status_code == 200, response.text
    return response.json()


def patch(api: Api, llm_id: str, **fields: Any) -> dict[str, Any]:
    response = api.patch(f"{LLMS}/{llm_id}", fields)
    assert response.status_code == 200, response.text
    return response.json()


def publish(api: Api, llm_id: str) -> dict[str, Any]:
    response = api.post(f"{LLMS}/{llm_id}/publish")
    assert response.status_code == 200, response.text
    return response.json()


def versions(api: Api, llm_id: str) -> list[dict[str, Any]]:
    response = api.get(f"{LLMS}/{llm_id}/versions")
    assert response.status_code == 200, response.text
    return response.json()


def config_of(llm: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in llm.items() if k in CONFIG_KEYS}


def when(value: str) -> datetime:
    assert value.endswith("Z") or value.endswith("+00:00"), value
    parsed = datetime.fromisoformat(value)
    assert parsed.utcoffset() is not None and parsed.utcoffset().total_seconds() == 0, value
    return parsed


def cursor(last_id: str, order: str) -> str:
    """A key shaped like the server's (base64 JSON), for keys it never issued."""
    raw = json.dumps({"a": last_id, "o": order[0]}).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def all_pages(api: Api, limit: int, order: str) -> list[list[dict[str, Any]]]:
    pages: list[list[dict[str, Any]]] = []
    key: str | None = None
    while True:
        params: dict[str, Any] = {"limit": limit, "sortOrder": order}
        if key:
            params["paginationKey"] = key
        response = api.get(LLMS, **params)
        assert response.status_code == 200, response.text
        body = response.json()
        assert set(body) == {"data", "pagination_key"}
        pages.append(body["data"])
        key = body["pagination_key"]
        if key is None:
            return pages
        assert isinstance(key, str) and key
        assert len(pages) < 20, "pagination does not end"


def create_agent(api: Api, llm_id: str) -> dict[str, Any]:
    response = api.post(
        "/api/chat-agents",
        {"agent_name": "agent", "response_engine": {"type": "uponai-llm", "llm_id": llm_id}},
    )
    assert response.status_code == 201, response.text
    return response.json()


def check(ok: bool, message: str) -> None:
    """Fail without a traceback, for tests expected to fail on a known bug.

    Rendering a traceback makes pytest ast.parse source files; CPython 3.11.7
    sometimes raises "AST constructor recursion depth mismatch" doing so while
    the server threads run (python/cpython#106905), which aborts the session.
    """
    if not ok:
        pytest.fail(message, pytrace=False)


def full_config(model: str) -> dict[str, Any]:
    """Every field set, with each tool type, states with edges and per-state tools."""
    return {
        "display_name": "Support bot",
        "model": model,
        "model_temperature": 0.7,
        "general_prompt": "You are {{company}}'s assistant. Be {{tone}}.",
        "begin_message": "Hello! How can I help?",
        "general_tools": [
            {"type": "end_chat", "name": "hang_up", "description": "When the user says goodbye."},
            {
                "type": "custom",
                "name": "lookup_order",
                "description": "Find an order by its id.",
                "url": "https://api.example.com/orders",
                "method": "GET",
                "headers": {"X-Api-Key": "secret"},
                "query_params": {"source": "chat"},
                "parameters": {
                    "type": "object",
                    "properties": {"order_id": {"type": "string"}},
                    "required": ["order_id"],
                },
                "args_at_root": True,
                "timeout_ms": 5_000,
                "max_retry": 1,
                "response_variables": {"order_status": "$.status"},
            },
            {
                "type": "extract_dynamic_variable",
                "name": "capture_contact",
                "description": "Collect the user's details.",
                "variables": [
                    {"type": "string", "name": "email", "description": "Email address", "required": True,
                     "conditional_prompt": None, "examples": ["a@example.com"]},
                    {"type": "enum", "name": "tier", "description": "Plan", "required": False,
                     "conditional_prompt": "Only if they mention a plan", "choices": ["free", "pro"]},
                    {"type": "boolean", "name": "wants_callback", "description": "Callback?",
                     "required": False, "conditional_prompt": None},
                    {"type": "number", "name": "age", "description": "Age", "required": False,
                     "conditional_prompt": None},
                ],
            },
        ],
        "states": [
            {
                "name": "greeting",
                "state_prompt": "Greet the user.",
                "edges": [
                    {
                        "destination_state_name": "support",
                        "description": "The user has a question.",
                        "parameters": {"type": "object", "properties": {"topic": {"type": "string"}}},
                    }
                ],
                "tools": [],
            },
            {
                "name": "support",
                "state_prompt": "Answer the question.",
                "edges": [{"destination_state_name": "greeting", "description": "Start over.", "parameters": None}],
                "tools": [
                    {
                        "type": "custom",
                        "name": "open_ticket",
                        "description": None,
                        "url": "https://api.example.com/tickets",
                        "method": "POST",
                        "headers": {},
                        "query_params": {},
                        "parameters": None,
                        "args_at_root": False,
                        "timeout_ms": 120_000,
                        "max_retry": 2,
                        "response_variables": {},
                    },
                    {"type": "end_chat", "name": "end_chat", "description": None},
                ],
            },
        ],
        "starting_state": "greeting",
        "knowledge_base_ids": [],
        "kb_config": {"top_k": 5, "filter_score": 0.8},
        "default_dynamic_variables": {"company": "Acme", "tone": "friendly"},
    }


# --- create and read -----------------------------------------------------------


def test_create_with_only_display_name_shows_every_default(api: Api) -> None:
    response = api.post(LLMS, {"display_name": "Minimal"})
    assert response.status_code == 201, response.text
    llm = response.json()
    assert set(llm) == CONFIG_KEYS | META_KEYS
    assert config_of(llm) == {
        "display_name": "Minimal",
        "model": api.backend.settings.embedded.name,
        "model_temperature": 0,
        "general_prompt": None,
        "begin_message": None,
        "general_tools": [],
        "states": [],
        "starting_state": None,
        "knowledge_base_ids": [],
        "kb_config": {"top_k": 3, "filter_score": 0.6},
        "default_dynamic_variables": {},
    }
    assert api.backend.settings.embedded.name == "smollm2-135m-instruct"
    assert llm["version"] == 1
    assert llm["is_published"] is False
    assert ID_PATTERN.match(llm["llm_id"]), llm["llm_id"]
    assert llm["created_at"] == llm["updated_at"]
    updated = when(llm["updated_at"])
    assert llm["last_modification_timestamp"] == int(updated.timestamp() * 1000)
    assert abs((datetime.now(UTC) - updated).total_seconds()) < 60
    # What GET shows is what POST answered.
    assert get(api, llm["llm_id"]) == llm


def test_create_with_every_field_round_trips(api: Api) -> None:
    # A model from a configured provider, not the default one.
    assert SCRIPTED in api.backend.settings.model_names
    sent = full_config(SCRIPTED)
    created = create(api, **copy.deepcopy(sent))
    assert config_of(created) == sent
    assert created["version"] == 1 and created["is_published"] is False
    assert get(api, created["llm_id"]) == created
    assert get(api, created["llm_id"], version=1) == created
    assert versions(api, created["llm_id"]) == [created]
    listed = api.get(LLMS).json()
    assert listed == {"data": [created], "pagination_key": None}


def test_omitted_tool_fields_get_their_defaults(api: Api) -> None:
    llm = create(
        api,
        general_tools=[
            {"type": "end_chat"},
            {"type": "custom", "name": "ping", "url": "http://localhost:9/ping"},
            {"type": "extract_dynamic_variable", "name": "grab", "description": "d",
             "variables": [{"type": "string", "name": "city", "description": "City"}]},
        ],
        states=[{"name": "only", "edges": [{"destination_state_name": "only", "description": "loop"}]}],
        starting_state="only",
    )
    assert llm["general_tools"] == [
        {"type": "end_chat", "name": "end_chat", "description": None},
        {"type": "custom", "name": "ping", "description": None, "url": "http://localhost:9/ping",
         "method": "POST", "headers": {}, "query_params": {}, "parameters": None, "args_at_root": False,
         "timeout_ms": 120_000, "max_retry": 2, "response_variables": {}},
        {"type": "extract_dynamic_variable", "name": "grab", "description": "d",
         "variables": [{"type": "string", "name": "city", "description": "City", "required": False,
                        "conditional_prompt": None, "examples": []}]},
    ]
    assert llm["states"] == [
        {"name": "only", "state_prompt": "",
         "edges": [{"destination_state_name": "only", "description": "loop", "parameters": None}],
         "tools": []}
    ]


def test_ids_are_distinct_prefixed_ulids(api: Api) -> None:
    ids = [create(api, display_name=f"n{i}")["llm_id"] for i in range(3)]
    assert len(set(ids)) == 3
    assert all(ID_PATTERN.match(i) for i in ids), ids
    # Sortable: creation order is id order.
    assert ids == sorted(ids)


def test_temperature_bounds_are_inclusive(api: Api) -> None:
    assert create(api, model_temperature=0)["model_temperature"] == 0
    assert create(api, model_temperature=1)["model_temperature"] == 1
    assert create(api, kb_config={"top_k": 10, "filter_score": 0})["kb_config"] == {"top_k": 10, "filter_score": 0}
    assert create(api, kb_config={"top_k": 1, "filter_score": 1})["kb_config"] == {"top_k": 1, "filter_score": 1}


# --- versions ------------------------------------------------------------------


def test_patch_of_a_draft_edits_it_in_place(api: Api) -> None:
    llm = create(api, display_name="before", general_prompt="p1", begin_message="hi")
    changed = patch(api, llm["llm_id"], display_name="after", model_temperature=0.25)
    assert changed["version"] == 1
    assert changed["is_published"] is False
    assert changed["display_name"] == "after"
    assert changed["model_temperature"] == 0.25
    # Fields not sent are kept.
    assert changed["general_prompt"] == "p1" and changed["begin_message"] == "hi"
    assert changed["created_at"] == llm["created_at"]
    assert when(changed["updated_at"]) > when(llm["updated_at"])
    assert changed["last_modification_timestamp"] > llm["last_modification_timestamp"]
    assert versions(api, llm["llm_id"]) == [changed]
    assert get(api, llm["llm_id"]) == changed


def test_publish_freezes_the_version(api: Api) -> None:
    llm = create(api, display_name="to publish")
    published = publish(api, llm["llm_id"])
    assert published["is_published"] is True
    assert published["version"] == 1
    assert config_of(published) == config_of(llm)
    assert when(published["updated_at"]) >= when(llm["updated_at"])
    assert get(api, llm["llm_id"]) == published


def test_patch_after_publish_makes_a_new_draft_and_keeps_the_published_one(api: Api) -> None:
    llm = create(api, display_name="v1", general_prompt="first")
    v1 = publish(api, llm["llm_id"])
    v2 = patch(api, llm["llm_id"], general_prompt="second")
    assert v2["llm_id"] == llm["llm_id"]
    assert v2["version"] == 2
    assert v2["is_published"] is False
    assert v2["general_prompt"] == "second"
    assert v2["display_name"] == "v1"  # carried over from version 1
    # Version 1 is exactly as it was published.
    assert get(api, llm["llm_id"], version=1) == v1
    # The latest is version 2, everywhere.
    assert get(api, llm["llm_id"]) == v2
    assert get(api, llm["llm_id"], version=2) == v2
    assert api.get(LLMS).json()["data"] == [v2]
    assert versions(api, llm["llm_id"]) == [v1, v2]
    # Editing the new draft changes it in place.
    v2b = patch(api, llm["llm_id"], general_prompt="third")
    assert v2b["version"] == 2 and v2b["general_prompt"] == "third"
    assert [v["version"] for v in versions(api, llm["llm_id"])] == [1, 2]
    assert get(api, llm["llm_id"], version=1)["general_prompt"] == "first"


def test_versions_list_is_ordered_and_each_version_is_readable(api: Api) -> None:
    llm = create(api, display_name="d0")
    for n in range(1, 4):
        publish(api, llm["llm_id"])
        patch(api, llm["llm_id"], display_name=f"d{n}")
    listed = versions(api, llm["llm_id"])
    assert [v["version"] for v in listed] == [1, 2, 3, 4]
    assert [v["display_name"] for v in listed] == ["d0", "d1", "d2", "d3"]
    assert [v["is_published"] for v in listed] == [True, True, True, False]
    assert {v["llm_id"] for v in listed} == {llm["llm_id"]}
    for v in listed:
        assert get(api, llm["llm_id"], version=v["version"]) == v
    assert get(api, llm["llm_id"])["version"] == 4


def test_publish_twice_is_harmless(api: Api) -> None:
    llm = create(api)
    first = publish(api, llm["llm_id"])
    second = publish(api, llm["llm_id"])
    assert second == first
    assert versions(api, llm["llm_id"]) == [first]
    # Still one new draft on the next edit, not two.
    assert patch(api, llm["llm_id"], display_name="x")["version"] == 2


def test_patch_semantics(api: Api) -> None:
    llm = create(
        api,
        general_prompt="keep me?",
        model=SCRIPTED,
        general_tools=[{"type": "end_chat"}, {"type": "custom", "name": "a", "url": "https://a.example"}],
        kb_config={"top_k": 7, "filter_score": 0.9},
        default_dynamic_variables={"a": "1", "b": "2"},
    )
    # null clears an optional field; null model falls back to the server default.
    assert llm["model"] == SCRIPTED
    changed = patch(api, llm["llm_id"], general_prompt=None, model=None)
    assert changed["general_prompt"] is None
    assert changed["model"] == api.backend.settings.default_model == api.backend.settings.embedded.name
    # Lists and maps are replaced whole, not merged.
    changed = patch(api, llm["llm_id"], general_tools=[{"type": "end_chat", "name": "bye"}],
                    default_dynamic_variables={"c": "3"})
    assert [t["name"] for t in changed["general_tools"]] == ["bye"]
    assert changed["default_dynamic_variables"] == {"c": "3"}
    # A nested object is replaced whole too: what is not sent takes its default.
    changed = patch(api, llm["llm_id"], kb_config={"top_k": 4})
    assert changed["kb_config"] == {"top_k": 4, "filter_score": 0.6}
    # Adding states needs starting_state in the same call, and removing them needs it cleared.
    changed = patch(api, llm["llm_id"], states=[{"name": "s1"}, {"name": "s2"}], starting_state="s2")
    assert [s["name"] for s in changed["states"]] == ["s1", "s2"] and changed["starting_state"] == "s2"
    changed = patch(api, llm["llm_id"], states=[], starting_state=None)
    assert changed["states"] == [] and changed["starting_state"] is None
    assert changed["version"] == 1
    assert get(api, llm["llm_id"]) == changed


def test_empty_patch_changes_no_field(api: Api) -> None:
    llm = create(api, **full_config(api.backend.settings.embedded.name))
    same = patch(api, llm["llm_id"])
    assert config_of(same) == config_of(llm)
    assert same["version"] == 1


def test_concurrent_patches_of_a_published_llm_all_succeed(api: Api) -> None:
    results: list[int] = []
    for _ in range(3):
        llm = create(api)
        publish(api, llm["llm_id"])
        barrier = threading.Barrier(4)

        def edit(n: int, llm_id: str = llm["llm_id"], barrier: threading.Barrier = barrier) -> None:
            barrier.wait()
            results.append(api.patch(f"{LLMS}/{llm_id}", {"general_prompt": f"p{n}"}).status_code)

        threads = [threading.Thread(target=edit, args=(n,)) for n in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        listed = api.get(f"{LLMS}/{llm['llm_id']}/versions").json()
        check([v["version"] for v in listed] == [1, 2], f"versions: {listed}")
        check(listed[0]["general_prompt"] is None, "version 1 changed")
        check(listed[1]["general_prompt"] in {f"p{n}" for n in range(4)}, "version 2 has none of the edits")
    check(results == [200] * 12, f"statuses of 12 concurrent PATCHes: {sorted(results)}")


# --- pagination ----------------------------------------------------------------


def test_pagination_in_both_orders_has_no_duplicates_or_gaps(api: Api, other: Api) -> None:
    ids = [create(api, display_name=f"llm {i}")["llm_id"] for i in range(7)]
    create(other, display_name="not mine")

    descending = all_pages(api, 3, "descending")
    assert [len(p) for p in descending] == [3, 3, 1]
    assert [llm["llm_id"] for page in descending for llm in page] == ids[::-1]

    ascending = all_pages(api, 3, "ascending")
    assert [len(p) for p in ascending] == [3, 3, 1]
    assert [llm["llm_id"] for page in ascending for llm in page] == ids
    assert [llm["display_name"] for page in ascending for llm in page] == [f"llm {i}" for i in range(7)]

    # Default: newest first, every item in one page.
    body = api.get(LLMS).json()
    assert [llm["llm_id"] for llm in body["data"]] == ids[::-1]
    assert body["pagination_key"] is None


def test_page_size_equal_to_the_rest_ends_without_an_empty_page(api: Api) -> None:
    ids = [create(api)["llm_id"] for _ in range(6)]
    pages = all_pages(api, 3, "ascending")
    assert [[llm["llm_id"] for llm in page] for page in pages] == [ids[:3], ids[3:]]
    pages = all_pages(api, 6, "descending")
    assert [[llm["llm_id"] for llm in page] for page in pages] == [ids[::-1]]
    one_by_one = all_pages(api, 1, "descending")
    assert [[llm["llm_id"] for llm in page] for page in one_by_one] == [[i] for i in ids[::-1]]


def test_empty_list(api: Api) -> None:
    assert api.get(LLMS).json() == {"data": [], "pagination_key": None}
    assert api.get(LLMS, limit=1, sortOrder="ascending").json() == {"data": [], "pagination_key": None}


def test_list_shows_latest_versions_only_and_not_deleted_ones(api: Api) -> None:
    a = create(api, display_name="a")
    b = create(api, display_name="b")
    c = create(api, display_name="c")
    publish(api, a["llm_id"])
    a2 = patch(api, a["llm_id"], display_name="a2")
    assert api.delete(f"{LLMS}/{b['llm_id']}").status_code == 204
    data = api.get(LLMS, sortOrder="ascending").json()["data"]
    assert data == [a2, c]


def test_a_cursor_still_works_when_its_last_item_is_deleted(api: Api) -> None:
    ids = [create(api)["llm_id"] for _ in range(5)]
    first = api.get(LLMS, limit=2, sortOrder="ascending").json()
    assert [llm["llm_id"] for llm in first["data"]] == ids[:2]
    assert api.delete(f"{LLMS}/{ids[1]}").status_code == 204
    second = api.get(LLMS, limit=2, sortOrder="ascending", paginationKey=first["pagination_key"]).json()
    assert [llm["llm_id"] for llm in second["data"]] == ids[2:4]


@pytest.mark.parametrize(
    "key",
    [
        "garbage!!",
        "not-base64-json",
        base64.urlsafe_b64encode(b"plain text").decode(),
        base64.urlsafe_b64encode(b'{"a": "llm_x"}').decode(),  # no sort order
        base64.urlsafe_b64encode(b"[1, 2]").decode(),
    ],
)
def test_garbage_pagination_key_is_422(api: Api, key: str) -> None:
    create(api)
    error = assert_error(api.get(LLMS, paginationKey=key), 422, "validation_error", "paginationKey")
    assert error["details"] == [{"field": "paginationKey", "message": "not a pagination key this server issued"}]


def test_pagination_key_of_the_other_sort_order_is_422(api: Api) -> None:
    for _ in range(3):
        create(api)
    descending_key = api.get(LLMS, limit=1).json()["pagination_key"]
    ascending_key = api.get(LLMS, limit=1, sortOrder="ascending").json()["pagination_key"]
    assert descending_key and ascending_key
    error = assert_error(
        api.get(LLMS, limit=1, sortOrder="ascending", paginationKey=descending_key),
        422, "validation_error", "paginationKey",
    )
    assert "sort order" in error["message"]
    assert_error(api.get(LLMS, limit=1, paginationKey=ascending_key), 422, "validation_error", "paginationKey")
    # Each works with its own order.
    assert api.get(LLMS, limit=1, paginationKey=descending_key).status_code == 200
    assert api.get(LLMS, limit=1, sortOrder="ascending", paginationKey=ascending_key).status_code == 200


@pytest.mark.parametrize("limit", [0, -1, 1001, "ten"])
def test_limit_out_of_range_is_422(api: Api, limit: Any) -> None:
    assert_error(api.get(LLMS, limit=limit), 422, "validation_error", "limit")


def test_limit_bounds_are_accepted(api: Api) -> None:
    create(api)
    assert len(api.get(LLMS, limit=1).json()["data"]) == 1
    assert len(api.get(LLMS, limit=1000).json()["data"]) == 1


def test_unknown_sort_order_is_422(api: Api) -> None:
    assert_error(api.get(LLMS, sortOrder="sideways"), 422, "validation_error", "sortOrder")


def test_pagination_key_with_a_nul_is_422_not_500(api: Api) -> None:
    create(api)
    response = api.get(LLMS, paginationKey=cursor("llm_\u0000", "descending"))
    # A key the server never issued: refused, or read as the id it names; never a 500.
    check(response.status_code in (200, 422), f"{response.status_code} {response.text}")
    if response.status_code == 422:
        check(response.json()["error"].get("field") == "paginationKey", response.text)


# --- not found and tenancy -----------------------------------------------------


def _every_route(api: Api, llm_id: str, workspace_id: int | None = None) -> dict[str, httpx.Response]:
    ws = {} if workspace_id is None else {"workspaceId": workspace_id}
    return {
        "get": api.get(f"{LLMS}/{llm_id}", **ws),
        "get version": api.get(f"{LLMS}/{llm_id}", version=1, **ws),
        "versions": api.get(f"{LLMS}/{llm_id}/versions", **ws),
        "patch": api.patch(f"{LLMS}/{llm_id}", {"display_name": "hijacked", **ws}),
        "publish": api.post(f"{LLMS}/{llm_id}/publish", ws),
        "delete": api.delete(f"{LLMS}/{llm_id}", **ws),
    }


def test_unknown_id_is_404_on_every_route(api: Api) -> None:
    for route, response in _every_route(api, MISSING_ID).items():
        error = assert_error(response, 404, "llm_not_found")
        assert MISSING_ID in error["message"], route


def test_another_workspaces_llm_is_404_like_a_missing_one(api: Api, other: Api) -> None:
    theirs = create(other, display_name="theirs", general_prompt="secret")
    their_id = theirs["llm_id"]
    # A missing id of the same length, so the messages can be compared whole.
    missing = "llm_" + "0" * 26
    for (route, got), (_, expected) in zip(
        _every_route(api, their_id).items(), _every_route(api, missing).items(), strict=True
    ):
        error = assert_error(got, 404, "llm_not_found")
        assert "secret" not in got.text and "theirs" not in got.text, route
        assert error["message"].replace(their_id, "ID") == expected.json()["error"]["message"].replace(
            missing, "ID"
        ), route
    # Nothing happened to theirs.
    assert get(other, their_id) == theirs
    assert versions(other, their_id) == [theirs]
    assert api.get(LLMS).json()["data"] == []


def test_another_workspace_id_is_404_on_every_route(api: Api, other: Api) -> None:
    theirs = create(other)
    mine = create(api)
    for llm_id in (theirs["llm_id"], mine["llm_id"]):
        for route, response in _every_route(api, llm_id, workspace_id=other.ws).items():
            assert_error(response, 404, "workspace_not_found")
            assert str(other.ws) in response.json()["error"]["message"], route
    assert_error(api.get(LLMS, workspaceId=other.ws), 404, "workspace_not_found")
    assert_error(api.post(LLMS, {"workspaceId": other.ws, "display_name": "x"}), 404, "workspace_not_found")
    assert get(other, theirs["llm_id"]) == theirs
    assert get(api, mine["llm_id"]) == mine
    assert other.get(LLMS).json()["data"] == [theirs]


def test_workspace_id_is_required_on_every_route(api: Api) -> None:
    llm_id = create(api)["llm_id"]
    assert_error(api.http.get(f"{LLMS}/{llm_id}"), 422, "validation_error", "workspaceId")
    assert_error(api.http.get(f"{LLMS}/{llm_id}/versions"), 422, "validation_error", "workspaceId")
    assert_error(api.http.patch(f"{LLMS}/{llm_id}", json={"display_name": "x"}), 422, "validation_error", "workspaceId")
    assert_error(api.http.post(f"{LLMS}/{llm_id}/publish", json={}), 422, "validation_error", "workspaceId")
    assert_error(api.http.delete(f"{LLMS}/{llm_id}"), 422, "validation_error", "workspaceId")
    assert get(api, llm_id)["is_published"] is False


def test_unknown_version_is_404(api: Api) -> None:
    llm = create(api)
    error = assert_error(api.get(f"{LLMS}/{llm['llm_id']}", version=2), 404, "llm_not_found")
    assert error["message"] == f"LLM {llm['llm_id']} version 2 not found"
    publish(api, llm["llm_id"])
    patch(api, llm["llm_id"], display_name="v2")
    assert get(api, llm["llm_id"], version=2)["display_name"] == "v2"
    assert_error(api.get(f"{LLMS}/{llm['llm_id']}", version=3), 404, "llm_not_found")
    assert_error(api.get(f"{LLMS}/{llm['llm_id']}", version=INT32_MAX), 404, "llm_not_found")


@pytest.mark.parametrize("version", [0, -1, "abc", "1.5", INT32_MAX + 1, 2**63, 2**70])
def test_invalid_version_is_422(api: Api, version: Any) -> None:
    llm = create(api)
    assert_error(api.get(f"{LLMS}/{llm['llm_id']}", version=version), 422, "validation_error", "version")


def test_id_with_a_nul_is_422_not_500(api: Api) -> None:
    response = api.get(f"{LLMS}/llm_%00x")
    # Refused before any route runs (PostgreSQL cannot hold U+0000): a 422.
    assert_error(response, 422, "validation_error", "path")


# --- validation ------------------------------------------------------------------


def test_malformed_bodies_are_422(api: Api) -> None:
    llm = create(api, display_name="unchanged")
    headers = {"content-type": "application/json"}
    for method, path in (("POST", LLMS), ("PATCH", f"{LLMS}/{llm['llm_id']}"),
                         ("POST", f"{LLMS}/{llm['llm_id']}/publish")):
        for junk in (b"{", b"[]", b'"x"', b"null", b"", b'{"workspaceId": "one"}'):
            assert_error(api.http.request(method, path, content=junk, headers=headers), 422, "validation_error")
    error = assert_error(
        api.http.post(LLMS, content=b'{"workspaceId": %d, "display_name": ' % api.ws, headers=headers),
        422, "validation_error", "body",
    )
    assert "JSON" in error["message"]
    assert_error(api.post(LLMS, {}), 422, "validation_error", "display_name")
    assert_error(api.post(LLMS, {"display_name": ""}), 422, "validation_error", "display_name")
    assert_error(api.post(LLMS, {"display_name": 7}), 422, "validation_error", "display_name")
    assert_error(api.post(LLMS, {"display_name": "x" * 201}), 422, "validation_error", "display_name")
    assert_error(api.post(LLMS, {"display_name": "x", "general_tools": {}}), 422, "validation_error", "general_tools")
    assert_error(api.post(LLMS, {"display_name": "x", "states": "s"}), 422, "validation_error", "states")
    # A PATCH cannot unset a required field.
    assert_error(api.patch(f"{LLMS}/{llm['llm_id']}", {"display_name": None}), 422, "validation_error", "display_name")
    assert_error(api.patch(f"{LLMS}/{llm['llm_id']}", {"kb_config": None}), 422, "validation_error", "kb_config")
    assert get(api, llm["llm_id"]) == llm
    assert [x["llm_id"] for x in api.get(LLMS).json()["data"]] == [llm["llm_id"]]


OUT_OF_RANGE = [
    ({"model_temperature": 1.5}, "model_temperature", "less than or equal to 1"),
    ({"model_temperature": -0.1}, "model_temperature", "greater than or equal to 0"),
    ({"model_temperature": "hot"}, "model_temperature", "valid number"),
    ({"kb_config": {"top_k": 0}}, "kb_config.top_k", "greater than or equal to 1"),
    ({"kb_config": {"top_k": 11}}, "kb_config.top_k", "less than or equal to 10"),
    ({"kb_config": {"filter_score": 1.01}}, "kb_config.filter_score", "less than or equal to 1"),
    ({"general_prompt": "p" * 100_001}, "general_prompt", "at most 100000"),
    ({"begin_message": "b" * 10_001}, "begin_message", "at most 10000"),
    ({"default_dynamic_variables": {"n": 1}}, "default_dynamic_variables.n", "valid string"),
    ({"states": [{"name": "has space"}], "starting_state": "has space"}, "states[0].name", "pattern"),
    ({"states": [{"name": "s", "edges": [{"destination_state_name": "s"}]}], "starting_state": "s"},
     "states[0].edges[0].description", "required"),
    ({"knowledge_base_ids": ["knowledge_base_01jzzzzzzzzzzzzzzzzzzzzzzz"]}, "knowledge_base_ids[0]",
     "no knowledge base"),
    ({"knowledge_base_ids": [f"kb_{i}" for i in range(21)]}, "knowledge_base_ids", "at most 20"),
    ({"knowledge_base_ids": ["x" * 65]}, "knowledge_base_ids[0]", "at most 64"),
]


@pytest.mark.parametrize(("fields", "field", "message"), OUT_OF_RANGE, ids=[c[1] + ":" + str(i) for i, c in enumerate(OUT_OF_RANGE)])
def test_out_of_range_fields_are_422_on_create_and_patch(api: Api, fields: dict, field: str, message: str) -> None:
    error = assert_error(api.post(LLMS, {"display_name": "x", **fields}), 422, "validation_error", field)
    assert message in error["message"], error
    assert error["details"][0]["field"] == field
    llm = create(api, display_name="stored", kb_config={"top_k": 2, "filter_score": 0.5})
    error = assert_error(api.patch(f"{LLMS}/{llm['llm_id']}", fields), 422, "validation_error", field)
    assert message in error["message"], error
    assert get(api, llm["llm_id"]) == llm
    assert api.get(LLMS).json()["data"] == [llm]


TOOL_ERRORS = [
    # (tool, path under general_tools[0] the client sent, message fragment)
    ({"type": "custom", "name": "t", "url": "https://x.example", "timeout_ms": 999}, "timeout_ms",
     "greater than or equal to 1000"),
    ({"type": "custom", "name": "t", "url": "https://x.example", "timeout_ms": 600_001}, "timeout_ms",
     "less than or equal to 600000"),
    ({"type": "custom", "name": "t", "url": "https://x.example", "max_retry": 6}, "max_retry",
     "less than or equal to 5"),
    ({"type": "custom", "name": "t", "url": "ftp://x.example"}, "url", "http(s) URL"),
    ({"type": "custom", "name": "t", "url": "https://x.example", "method": "TRACE"}, "method", "'GET'"),
    ({"type": "custom", "name": "t", "url": "https://x.example",
      "parameters": {"type": "object", "properties": {"a": {"type": "nope"}}}}, "parameters",
     "not a valid JSON schema"),
    ({"type": "custom", "name": "t", "url": "https://x.example", "parameters": {"type": "string"}},
     "parameters", '"type": "object"'),
    ({"type": "custom", "name": "t", "url": "https://x.example", "surprise": True}, "surprise",
     "Extra inputs are not permitted"),
    ({"type": "end_chat", "name": "a b"}, "name", "pattern"),
    ({"type": "extract_dynamic_variable", "name": "x", "description": "d", "variables": []}, "variables",
     "at least 1 item"),
    ({"type": "extract_dynamic_variable", "name": "x", "description": "d",
      "variables": [{"type": "string", "name": "v", "description": "d"},
                    {"type": "number", "name": "v", "description": "d"}]}, "variables[1].name", "used twice"),
    ({"type": "extract_dynamic_variable", "name": "x", "description": "d",
      "variables": [{"type": "enum", "name": "v", "description": "d", "choices": []}]}, "variables[0].choices",
     "at least 1 item"),
]
TOOL_IDS = [f"{c[0]['type']}.{c[1]}:{i}" for i, c in enumerate(TOOL_ERRORS)]


@pytest.mark.parametrize(("tool", "path", "message"), TOOL_ERRORS, ids=TOOL_IDS)
def test_invalid_tools_are_422_on_create_and_patch(api: Api, tool: dict, path: str, message: str) -> None:
    # The field is the path as sent: no union tag ("custom") in it.
    field = f"general_tools[0].{path}"
    error = assert_error(api.post(LLMS, {"display_name": "x", "general_tools": [tool]}), 422, "validation_error",
                         field)
    assert message in error["message"], error
    llm = create(api)
    error = assert_error(api.patch(f"{LLMS}/{llm['llm_id']}", {"general_tools": [tool]}), 422,
                         "validation_error", field)
    assert message in error["message"], error
    assert get(api, llm["llm_id"]) == llm
    # The same tool inside a state is named with the state's path.
    states = [{"name": "s", "tools": [tool]}]
    assert_error(api.post(LLMS, {"display_name": "x", "states": states, "starting_state": "s"}), 422,
                 "validation_error", f"states[0].tools[0].{path}")


def test_unknown_or_missing_tool_type_is_422(api: Api) -> None:
    error = assert_error(api.post(LLMS, {"display_name": "x", "general_tools": [{"type": "sms", "name": "a"}]}),
                         422, "validation_error", "general_tools[0]")
    assert "'end_chat', 'custom', 'extract_dynamic_variable'" in error["message"]
    assert_error(api.post(LLMS, {"display_name": "x", "general_tools": [{"name": "a"}]}), 422,
                 "validation_error", "general_tools[0]")


def test_invalid_edge_parameters_name_the_edge(api: Api) -> None:
    states = [{"name": "a", "edges": [{"destination_state_name": "a", "description": "d",
                                       "parameters": {"type": "object", "required": "yes"}}]}]
    error = assert_error(api.post(LLMS, {"display_name": "x", "states": states, "starting_state": "a"}), 422,
                         "validation_error", "states[0].edges[0].parameters")
    assert "not a valid JSON schema" in error["message"]


def _nested_schema(levels: int) -> dict:
    schema: dict = {"type": "object"}
    for _ in range(levels):
        schema = {"type": "object", "properties": {"a": schema}}
    return schema


@pytest.mark.parametrize(("levels", "field"), [
    (20, "general_tools[0].parameters"),  # deeper than parameters may be (MAX_PARAMETERS_DEPTH)
    (100, "body"), (400, "body"),  # deeper than any JSON body may be (limits.MAX_DEPTH)
])
def test_deeply_nested_parameters_are_422_not_500(api: Api, levels: int, field: str) -> None:
    tool = {"type": "custom", "name": "t", "url": "https://x.example", "parameters": _nested_schema(levels)}
    error = assert_error(api.post(LLMS, {"display_name": "x", "general_tools": [tool]}), 422, "validation_error",
                         field)
    assert "nested more than" in error["message"]
    edge = {"destination_state_name": "s", "description": "d", "parameters": _nested_schema(levels)}
    llm = create(api)
    assert_error(api.patch(f"{LLMS}/{llm['llm_id']}", {"states": [{"name": "s", "edges": [edge]}],
                                                        "starting_state": "s"}),
                 422, "validation_error", "states[0].edges[0].parameters" if field != "body" else "body")
    assert get(api, llm["llm_id"]) == llm


def test_reasonably_nested_parameters_are_kept(api: Api) -> None:
    schema = _nested_schema(10)
    tool = {"type": "custom", "name": "t", "url": "https://x.example", "parameters": schema}
    assert create(api, general_tools=[tool])["general_tools"][0]["parameters"] == schema


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"temperature": 0.5}, "temperature"),
        ({"kb_config": {"top_k": 3, "min_score": 0.1}}, "kb_config.min_score"),
        ({"states": [{"name": "s", "prompt": "p"}], "starting_state": "s"}, "states[0].prompt"),
        ({"states": [{"name": "s", "edges": [{"destination_state_name": "s", "description": "d", "to": "s"}]}],
          "starting_state": "s"}, "states[0].edges[0].to"),
    ],
)
def test_unknown_field_is_422_naming_it(api: Api, fields: dict, field: str) -> None:
    error = assert_error(api.post(LLMS, {"display_name": "x", **fields}), 422, "validation_error", field)
    assert error["message"] == f"{field}: Extra inputs are not permitted"
    llm = create(api)
    assert_error(api.patch(f"{LLMS}/{llm['llm_id']}", fields), 422, "validation_error", field)
    assert get(api, llm["llm_id"]) == llm
    assert api.get(LLMS).json()["data"] == [llm]


def test_error_field_keeps_the_clients_own_keys(api: Api) -> None:
    cases = [
        ({"default_dynamic_variables": {"Name": 1}}, "default_dynamic_variables.Name"),
        ({"default_dynamic_variables": {"string": 1}}, "default_dynamic_variables.string"),
        ({"general_tools": [{"type": "custom", "name": "t", "url": "https://x.example", "headers": {"X-Key": 5}}]},
         "general_tools[0].headers.X-Key"),
        ({"custom": True}, "custom"),
    ]
    got = [api.post(LLMS, {"display_name": "x", **fields}).json()["error"].get("field") for fields, _ in cases]
    check(got == [field for _, field in cases], f"fields named: {got}")


def test_unknown_field_on_publish_is_422(api: Api) -> None:
    llm = create(api)
    assert_error(api.post(f"{LLMS}/{llm['llm_id']}/publish", {"force": True}), 422, "validation_error", "force")
    assert get(api, llm["llm_id"])["is_published"] is False


def test_unknown_model_is_422_on_create_and_patch(api: Api) -> None:
    assert_error(api.post(LLMS, {"display_name": "x", "model": ""}), 422, "validation_error", "model")
    error = assert_error(api.post(LLMS, {"display_name": "x", "model": "gpt-9"}), 422, "validation_error", "model")
    assert "'gpt-9'" in error["message"]
    for offered in api.backend.settings.model_names:
        assert offered in error["message"]
    assert api.get(LLMS).json()["data"] == []
    llm = create(api)
    assert_error(api.patch(f"{LLMS}/{llm['llm_id']}", {"model": "gpt-9"}), 422, "validation_error", "model")
    assert get(api, llm["llm_id"]) == llm
    # On a published version no draft is left behind.
    published = publish(api, llm["llm_id"])
    assert_error(api.patch(f"{LLMS}/{llm['llm_id']}", {"model": "", "display_name": "y"}), 422,
                 "validation_error", "model")
    assert versions(api, llm["llm_id"]) == [published]


STATE_ERRORS = [
    ({"states": [{"name": "a"}]}, "starting_state", "required when states are given"),
    ({"states": [{"name": "a"}], "starting_state": "b"}, "starting_state", "'b' is not one of the states"),
    ({"starting_state": "a"}, "starting_state", "given without states"),
    ({"states": [{"name": "a", "edges": [{"destination_state_name": "a", "description": "self"},
                                        {"destination_state_name": "nowhere", "description": "d"}]}],
      "starting_state": "a"}, "states[0].edges[1].destination_state_name", "no state is named 'nowhere'"),
    ({"states": [{"name": "a"}, {"name": "b"}, {"name": "a"}], "starting_state": "a"}, "states[2].name",
     "state 'a' is used twice"),
    ({"general_tools": [{"type": "end_chat"}, {"type": "end_chat"}]}, "general_tools[1].name",
     "tool 'end_chat' is used twice"),
    ({"general_tools": [{"type": "end_chat", "name": "x"},
                        {"type": "custom", "name": "x", "url": "https://x.example"}]},
     "general_tools[1].name", "tool 'x' is used twice"),
    ({"states": [{"name": "a"}, {"name": "b", "tools": [{"type": "end_chat"},
                                                       {"type": "custom", "name": "end_chat",
                                                        "url": "https://x.example"}]}],
      "starting_state": "a"}, "states[1].tools[1].name", "tool 'end_chat' is used twice"),
    ({"general_tools": [{"type": "custom", "name": "lookup", "url": "https://x.example"}],
      "states": [{"name": "a", "tools": [{"type": "end_chat"},
                                         {"type": "custom", "name": "lookup", "url": "https://y.example"}]}],
      "starting_state": "a"}, "states[0].tools[1].name", "'lookup' repeats a general tool"),
]


@pytest.mark.parametrize(("fields", "field", "message"), STATE_ERRORS,
                         ids=[f"{c[1]}:{i}" for i, c in enumerate(STATE_ERRORS)])
def test_state_and_tool_consistency_errors_name_the_field(api: Api, fields: dict, field: str, message: str) -> None:
    error = assert_error(api.post(LLMS, {"display_name": "x", **fields}), 422, "validation_error", field)
    assert error["message"] == f"{field}: {message}"
    assert error["details"] == [{"field": field, "message": message}]
    # The same rule holds for the merged result of a PATCH.
    llm = create(api)
    error = assert_error(api.patch(f"{LLMS}/{llm['llm_id']}", fields), 422, "validation_error", field)
    assert error["message"] == f"{field}: {message}"
    assert get(api, llm["llm_id"]) == llm


def test_patch_is_checked_against_the_stored_config(api: Api) -> None:
    llm = create(api, states=[{"name": "a"}, {"name": "b"}], starting_state="a",
                 general_tools=[{"type": "end_chat"}])
    # Each patch is fine on its own, but not with what is stored.
    assert_error(api.patch(f"{LLMS}/{llm['llm_id']}", {"starting_state": "c"}), 422, "validation_error",
                 "starting_state")
    assert_error(api.patch(f"{LLMS}/{llm['llm_id']}", {"states": [{"name": "c"}]}), 422, "validation_error",
                 "starting_state")
    assert_error(api.patch(f"{LLMS}/{llm['llm_id']}", {"states": []}), 422, "validation_error", "starting_state")
    assert_error(
        api.patch(f"{LLMS}/{llm['llm_id']}", {"states": [{"name": "a", "tools": [{"type": "end_chat"}]}]}),
        422, "validation_error", "states[0].tools[0].name",
    )
    assert get(api, llm["llm_id"]) == llm
    assert patch(api, llm["llm_id"], starting_state="b")["starting_state"] == "b"


def test_invalid_patch_leaves_a_published_llm_without_a_new_version(api: Api) -> None:
    llm = create(api, display_name="frozen")
    published = publish(api, llm["llm_id"])
    for body in ({"model_temperature": 1.5}, {"states": [{"name": "a"}]}, {"bogus": 1},
                 {"display_name": "changed", "kb_config": {"top_k": 0}}):
        assert api.patch(f"{LLMS}/{llm['llm_id']}", body).status_code == 422
    assert versions(api, llm["llm_id"]) == [published]
    assert get(api, llm["llm_id"]) == published
    assert_error(api.get(f"{LLMS}/{llm['llm_id']}", version=2), 404, "llm_not_found")


def test_nul_character_in_a_string_is_not_a_500(api: Api) -> None:
    response = api.post(LLMS, {"display_name": "a\u0000b"})
    # Stored as sent, or refused naming the field: either, but the same on every backend.
    check(response.status_code in (201, 422), f"{response.status_code} {response.text}")
    if response.status_code == 422:
        check(response.json()["error"].get("field") == "display_name", response.text)
    else:
        check(get(api, response.json()["llm_id"])["display_name"] == "a\u0000b", "not stored as sent")


# --- delete ----------------------------------------------------------------------


def test_delete_removes_every_version(api: Api) -> None:
    llm = create(api)
    publish(api, llm["llm_id"])
    patch(api, llm["llm_id"], display_name="v2")
    keep = create(api, display_name="keep")
    response = api.delete(f"{LLMS}/{llm['llm_id']}")
    assert response.status_code == 204
    assert response.content == b""
    for route, r in _every_route(api, llm["llm_id"]).items():
        assert_error(r, 404, "llm_not_found")
    assert_error(api.get(f"{LLMS}/{llm['llm_id']}", version=2), 404, "llm_not_found")
    assert api.get(LLMS).json()["data"] == [keep]
    assert get(api, keep["llm_id"]) == keep


def test_delete_twice_is_404(api: Api) -> None:
    llm = create(api)
    assert api.delete(f"{LLMS}/{llm['llm_id']}").status_code == 204
    error = assert_error(api.delete(f"{LLMS}/{llm['llm_id']}"), 404, "llm_not_found")
    assert llm["llm_id"] in error["message"]


def test_delete_of_an_llm_used_by_a_chat_agent_is_409(api: Api) -> None:
    llm = create(api)
    agent = create_agent(api, llm["llm_id"])
    error = assert_error(api.delete(f"{LLMS}/{llm['llm_id']}"), 409, "llm_in_use")
    assert agent["agent_id"] in error["message"]
    assert llm["llm_id"] in error["message"]
    assert get(api, llm["llm_id"]) == llm
    # Once the agent is gone, the LLM can go.
    assert api.delete(f"/api/chat-agents/{agent['agent_id']}").status_code == 204
    assert api.delete(f"{LLMS}/{llm['llm_id']}").status_code == 204
    assert_error(api.get(f"{LLMS}/{llm['llm_id']}"), 404, "llm_not_found")


def test_an_agent_repointed_elsewhere_frees_the_llm(api: Api) -> None:
    first = create(api, display_name="first")
    second = create(api, display_name="second")
    agent = create_agent(api, first["llm_id"])
    response = api.patch(f"/api/chat-agents/{agent['agent_id']}",
                         {"response_engine": {"type": "uponai-llm", "llm_id": second["llm_id"]}})
    assert response.status_code == 200, response.text
    assert response.json()["version"] == 1  # a draft, edited in place
    assert api.delete(f"{LLMS}/{first['llm_id']}").status_code == 204
    assert_error(api.delete(f"{LLMS}/{second['llm_id']}"), 409, "llm_in_use")


def test_an_agent_of_another_workspace_does_not_hold_my_llm(api: Api, other: Api) -> None:
    mine = create(api)
    create_agent(other, create(other)["llm_id"])
    # Their agent cannot point at my LLM...
    response = other.post("/api/chat-agents",
                          {"agent_name": "a", "response_engine": {"type": "uponai-llm", "llm_id": mine["llm_id"]}})
    assert_error(response, 422, "validation_error", "response_engine.llm_id")
    # ...so nothing stops me deleting it.
    assert api.delete(f"{LLMS}/{mine['llm_id']}").status_code == 204


# --- body size -------------------------------------------------------------------


def _fresh_client(api: Api) -> httpx.Client:
    """A client on a connection of its own."""
    return httpx.Client(base_url=api.backend.url, headers={"Authorization": f"Bearer {api.key}"}, timeout=30)


def test_oversized_body_is_413_and_changes_nothing(api: Api) -> None:
    limit = api.backend.settings.server.max_body_bytes
    llm = create(api, display_name="small")
    big = "x" * (limit + 1)
    for method, path, body in (
        ("POST", LLMS, {"display_name": "big", "general_prompt": big}),
        ("PATCH", f"{LLMS}/{llm['llm_id']}", {"general_prompt": big}),
        ("POST", f"{LLMS}/{llm['llm_id']}/publish", {"padding": big}),
    ):
        with _fresh_client(api) as client:
            response = client.request(method, path, json={"workspaceId": api.ws, **body})
        error = assert_error(response, 413, "payload_too_large")
        assert str(limit) in error["message"]
    assert api.get(LLMS).json()["data"] == [llm]
    assert get(api, llm["llm_id"]) == llm


def test_oversized_body_on_a_kept_alive_connection_is_413(api: Api) -> None:
    """The answer must reach a client that reuses its connection, not a connection reset."""
    big = "x" * (api.backend.settings.server.max_body_bytes + 1)
    outcomes = []
    for _ in range(40):
        with _fresh_client(api) as client:
            client.get(LLMS, params={"workspaceId": api.ws})  # the connection is now kept alive
            try:
                outcomes.append(client.post(LLMS, json={"workspaceId": api.ws, "display_name": big}).status_code)
            except httpx.TransportError as exc:
                outcomes.append(type(exc).__name__)
    assert outcomes == [413] * 40, [o for o in outcomes if o != 413]


def test_large_but_allowed_config_is_kept_whole(api: Api) -> None:
    prompt = "p" * 100_000
    states = [{"name": f"s{i}", "state_prompt": "q" * 5_000,
               "edges": [{"destination_state_name": f"s{(i + 1) % 20}", "description": "next"}]}
              for i in range(20)]
    llm = create(api, general_prompt=prompt, states=states, starting_state="s0")
    stored = get(api, llm["llm_id"])
    assert stored["general_prompt"] == prompt
    assert [s["name"] for s in stored["states"]] == [f"s{i}" for i in range(20)]
    assert stored == llm
