"""/api/chat-agents: create, read, list, versions, edit, publish, delete.

Every test runs against the real server on SQLite and on PostgreSQL (the
``backend`` fixture). Each test has its own workspace (``api``) and, where
tenancy matters, a second one (``other``).
"""

from __future__ import annotations

import re
from datetime import datetime, timedelta
from typing import Any

import httpx
import pytest

from tests.conftest import Api, assert_error

AGENTS = "/api/chat-agents"
LLMS = "/api/llms"
AGENT_ID = re.compile(r"^chat_agent_[0-9a-z]{26}$")
# Well-formed but never issued.
MISSING_ID = "chat_agent_01jzzzzzzzzzzzzzzzzzzzzzzz"

CONFIG_FIELDS = {
    "agent_name",
    "response_engine",
    "auto_close_message",
    "end_chat_after_silence_ms",
    "webhook_url",
    "webhook_events",
    "webhook_timeout_ms",
    "webhook_format",
    "timezone",
    "language",
    "is_public",
    "data_storage_setting",
    "data_storage_retention_days",
    "post_chat_analysis_model",
    "post_chat_analysis_data",
    "uponai_dynamic_variables",
}
META_FIELDS = {"agent_id", "version", "is_published", "created_at", "updated_at", "last_modification_timestamp"}

# What API.md promises for everything a create leaves out.
DEFAULTS: dict[str, Any] = {
    "auto_close_message": None,
    "end_chat_after_silence_ms": 3_600_000,
    "webhook_url": None,
    "webhook_events": ["chat_started", "chat_ended", "chat_analyzed"],
    "webhook_timeout_ms": 10_000,
    "webhook_format": "chatplane",
    "timezone": "America/Los_Angeles",
    "language": "en-US",
    "is_public": False,
    "data_storage_setting": "everything",
    "data_storage_retention_days": None,
    "post_chat_analysis_model": None,
    "post_chat_analysis_data": [],
    "uponai_dynamic_variables": {},
}


# --- helpers -----------------------------------------------------------------


def make_llm(api: Api, name: str = "support llm", **fields: Any) -> dict[str, Any]:
    response = api.post(LLMS, {"display_name": name, **fields})
    assert response.status_code == 201, response.text
    return response.json()


def engine(llm_id: str, version: int | None = None) -> dict[str, Any]:
    return {"type": "uponai-llm", "llm_id": llm_id, "version": version}


def make_agent(api: Api, llm_id: str | None = None, **fields: Any) -> dict[str, Any]:
    if llm_id is None:
        llm_id = make_llm(api)["llm_id"]
    body = {"agent_name": "support agent", "response_engine": {"type": "uponai-llm", "llm_id": llm_id}}
    response = api.post(AGENTS, {**body, **fields})
    assert response.status_code == 201, response.text
    return response.json()


def url(agent_id: str, suffix: str = "") -> str:
    return f"{AGENTS}/{agent_id}{suffix}"


def get_agent(api: Api, agent_id: str, **params: Any) -> dict[str, Any]:
    response = api.get(url(agent_id), **params)
    assert response.status_code == 200, response.text
    return response.json()


def get_llm(api: Api, llm_id: str, **params: Any) -> dict[str, Any]:
    response = api.get(f"{LLMS}/{llm_id}", **params)
    assert response.status_code == 200, response.text
    return response.json()


def publish(api: Api, agent_id: str) -> dict[str, Any]:
    response = api.post(url(agent_id, "/publish"))
    assert response.status_code == 200, response.text
    return response.json()


def patch(api: Api, agent_id: str, body: dict[str, Any]) -> dict[str, Any]:
    response = api.patch(url(agent_id), body)
    assert response.status_code == 200, response.text
    return response.json()


def versions(api: Api, agent_id: str) -> list[dict[str, Any]]:
    response = api.get(url(agent_id, "/versions"))
    assert response.status_code == 200, response.text
    return response.json()


def config_of(agent: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in agent.items() if k in CONFIG_FIELDS}


def ts(value: str) -> datetime:
    parsed = datetime.fromisoformat(value)
    assert parsed.utcoffset() == timedelta(0), value
    return parsed


def list_ids(api: Api, **params: Any) -> list[str]:
    response = api.get(AGENTS, limit=1000, **params)
    assert response.status_code == 200, response.text
    return [a["agent_id"] for a in response.json()["data"]]


def walk(api: Api, order: str, limit: int) -> tuple[list[str], list[int]]:
    """Follow pagination_key to the end; the ids in order and each page's size."""
    ids: list[str] = []
    sizes: list[int] = []
    key = None
    while True:
        params: dict[str, Any] = {"limit": limit, "sortOrder": order}
        if key is not None:
            params["paginationKey"] = key
        response = api.get(AGENTS, **params)
        assert response.status_code == 200, response.text
        body = response.json()
        assert set(body) == {"data", "pagination_key"}
        ids += [a["agent_id"] for a in body["data"]]
        sizes.append(len(body["data"]))
        key = body["pagination_key"]
        if key is None:
            return ids, sizes
        assert len(sizes) < 50, "pagination does not end"


def every_route(agent_id: str) -> list[tuple[str, str, dict[str, Any]]]:
    """(method, path, params-or-body) for each route that names one agent."""
    return [
        ("GET", url(agent_id), {}),
        ("GET", url(agent_id), {"version": 1}),
        ("GET", url(agent_id, "/versions"), {}),
        ("PATCH", url(agent_id), {"agent_name": "renamed"}),
        ("POST", url(agent_id, "/publish"), {}),
        ("DELETE", url(agent_id), {}),
    ]


def call(api: Api, method: str, path: str, extra: dict[str, Any]) -> httpx.Response:
    if method == "GET":
        return api.get(path, **extra)
    if method == "DELETE":
        return api.delete(path, **extra)
    if method == "PATCH":
        return api.patch(path, extra)
    return api.post(path, extra)


def full_body(llm_id: str, model: str) -> dict[str, Any]:
    """Every field set, none to its default."""
    return {
        "agent_name": "Acme billing desk",
        "response_engine": engine(llm_id, 1),
        "auto_close_message": "Closing this chat since we have not heard from you.",
        "end_chat_after_silence_ms": 600_000,
        "webhook_url": "https://hooks.example.com/chatplane?tenant=acme",
        "webhook_events": ["transcript_updated", "chat_ended"],
        "webhook_timeout_ms": 30_000,
        "webhook_format": "retell",
        "timezone": "Europe/Berlin",
        "language": ["de-DE", "en-US", "fr"],
        "is_public": True,
        "data_storage_setting": "everything_except_pii",
        "data_storage_retention_days": 30,
        "post_chat_analysis_model": model,
        "post_chat_analysis_data": [
            {
                "type": "string",
                "name": "order_number",
                "description": "The order the customer asked about.",
                "required": True,
                "conditional_prompt": "Only if an order was discussed.",
                "examples": ["A-1001", "B-2002"],
            },
            {
                "type": "enum",
                "name": "topic",
                "description": "What the chat was about.",
                "required": False,
                "conditional_prompt": None,
                "choices": ["billing", "shipping", "other"],
            },
            {
                "type": "boolean",
                "name": "refund_requested",
                "description": "Did the customer ask for a refund?",
                "required": True,
                "conditional_prompt": None,
            },
            {
                "type": "number",
                "name": "amount-disputed",
                "description": "Amount in dispute, in euros.",
                "required": False,
                "conditional_prompt": "If a refund was asked for.",
            },
        ],
        "uponai_dynamic_variables": {"company": "Acme", "support_hours": "9-17 CET"},
    }


# --- create and read -----------------------------------------------------------


def test_create_with_only_name_and_engine_shows_every_default(api: Api) -> None:
    llm = make_llm(api)
    response = api.post(AGENTS, {"agent_name": "minimal", "response_engine": {"type": "uponai-llm", "llm_id": llm["llm_id"]}})
    assert response.status_code == 201, response.text
    agent = response.json()
    assert set(agent) == CONFIG_FIELDS | META_FIELDS
    assert config_of(agent) == {
        "agent_name": "minimal",
        "response_engine": engine(llm["llm_id"]),
        **DEFAULTS,
    }
    assert AGENT_ID.match(agent["agent_id"]), agent["agent_id"]
    assert agent["version"] == 1
    assert agent["is_published"] is False
    assert agent["created_at"] == agent["updated_at"]
    assert abs(ts(agent["created_at"]) - datetime.now(ts(agent["created_at"]).tzinfo)) < timedelta(minutes=5)
    assert agent["last_modification_timestamp"] == int(ts(agent["updated_at"]).timestamp() * 1000)
    # Reading it back gives exactly what the create answered.
    assert get_agent(api, agent["agent_id"]) == agent
    assert get_agent(api, agent["agent_id"], version=1) == agent
    assert versions(api, agent["agent_id"]) == [agent]
    # Creating an agent publishes nothing.
    assert get_llm(api, llm["llm_id"])["is_published"] is False


def test_create_with_every_field_round_trips(api: Api) -> None:
    llm = make_llm(api)
    body = full_body(llm["llm_id"], llm["model"])  # the server default model: one it knows
    response = api.post(AGENTS, body)
    assert response.status_code == 201, response.text
    agent = response.json()
    assert config_of(agent) == body
    assert agent["version"] == 1 and agent["is_published"] is False
    assert get_agent(api, agent["agent_id"]) == agent
    listed = api.get(AGENTS).json()["data"]
    assert listed == [agent]


def test_two_creates_make_two_agents_with_distinct_ids(api: Api) -> None:
    llm = make_llm(api)
    first = make_agent(api, llm["llm_id"], agent_name="one")
    second = make_agent(api, llm["llm_id"], agent_name="two")
    assert first["agent_id"] != second["agent_id"]
    assert get_agent(api, first["agent_id"])["agent_name"] == "one"
    assert get_agent(api, second["agent_id"])["agent_name"] == "two"


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("end_chat_after_silence_ms", 120_000),
        ("end_chat_after_silence_ms", 259_200_000),
        ("webhook_timeout_ms", 1_000),
        ("webhook_timeout_ms", 120_000),
        ("data_storage_retention_days", 1),
        ("data_storage_retention_days", 730),
        ("timezone", "UTC"),
        ("timezone", "Asia/Kolkata"),
        ("language", "es"),
        ("language", ["en-GB"]),
        ("data_storage_setting", "basic_attributes_only"),
        ("webhook_url", "http://127.0.0.1:9000/hook"),
        ("webhook_events", []),
        ("webhook_events", ["chat_started", "chat_ended", "chat_analyzed", "transcript_updated"]),
    ],
)
def test_bounds_and_edge_values_are_accepted(api: Api, field: str, value: Any) -> None:
    agent = make_agent(api, **{field: value})
    assert agent[field] == value
    assert get_agent(api, agent["agent_id"])[field] == value
    # And the same value is accepted as an edit.
    other_agent = make_agent(api)
    assert patch(api, other_agent["agent_id"], {field: value})[field] == value


def test_agent_may_pin_an_existing_llm_version(api: Api) -> None:
    llm = make_llm(api, general_prompt="v1 prompt")
    assert api.post(f"{LLMS}/{llm['llm_id']}/publish").status_code == 200
    assert api.patch(f"{LLMS}/{llm['llm_id']}", {"general_prompt": "v2 prompt"}).json()["version"] == 2
    agent = make_agent(api, response_engine=engine(llm["llm_id"], 1))
    assert agent["response_engine"] == engine(llm["llm_id"], 1)
    agent = make_agent(api, response_engine=engine(llm["llm_id"], 2))
    assert agent["response_engine"] == engine(llm["llm_id"], 2)


# --- edit, versions, publish -------------------------------------------------


def test_patch_of_a_draft_edits_it_in_place(api: Api) -> None:
    created = make_agent(api, uponai_dynamic_variables={"a": "1"})
    agent_id = created["agent_id"]
    edited = patch(
        api,
        agent_id,
        {"agent_name": "renamed", "end_chat_after_silence_ms": 120_000, "webhook_url": "https://h.example/x"},
    )
    assert edited["agent_id"] == agent_id
    assert edited["version"] == 1
    assert edited["is_published"] is False
    assert edited["agent_name"] == "renamed"
    assert edited["end_chat_after_silence_ms"] == 120_000
    assert edited["webhook_url"] == "https://h.example/x"
    # Fields not sent keep their values.
    untouched = CONFIG_FIELDS - {"agent_name", "end_chat_after_silence_ms", "webhook_url"}
    assert {k: edited[k] for k in untouched} == {k: created[k] for k in untouched}
    assert edited["created_at"] == created["created_at"]
    assert ts(edited["updated_at"]) >= ts(created["updated_at"])
    assert edited["last_modification_timestamp"] == int(ts(edited["updated_at"]).timestamp() * 1000)
    assert get_agent(api, agent_id) == edited
    assert versions(api, agent_id) == [edited]
    # null clears an optional field; a second edit still stays in version 1.
    cleared = patch(api, agent_id, {"webhook_url": None, "uponai_dynamic_variables": {}})
    assert cleared["webhook_url"] is None and cleared["uponai_dynamic_variables"] == {}
    assert cleared["version"] == 1
    assert [v["version"] for v in versions(api, agent_id)] == [1]


def test_patch_can_repoint_a_draft_to_another_llm(api: Api) -> None:
    first, second = make_llm(api, "first"), make_llm(api, "second")
    agent = make_agent(api, first["llm_id"])
    edited = patch(api, agent["agent_id"], {"response_engine": {"type": "uponai-llm", "llm_id": second["llm_id"]}})
    assert edited["response_engine"] == engine(second["llm_id"])
    assert edited["version"] == 1


def test_publish_freezes_the_agent_and_its_llm_version(api: Api) -> None:
    llm = make_llm(api, general_prompt="hello")
    agent = make_agent(api, llm["llm_id"])
    assert agent["response_engine"]["version"] is None
    published = publish(api, agent["agent_id"])
    assert published["agent_id"] == agent["agent_id"]
    assert published["version"] == 1
    assert published["is_published"] is True
    # Publishing pins the LLM version the agent ran on ("latest" at that moment).
    assert published["response_engine"] == engine(llm["llm_id"], 1)
    assert {k: v for k, v in config_of(published).items() if k != "response_engine"} == {
        k: v for k, v in config_of(agent).items() if k != "response_engine"
    }
    assert published["created_at"] == agent["created_at"]
    assert ts(published["updated_at"]) >= ts(agent["updated_at"])
    assert get_agent(api, agent["agent_id"]) == published
    assert versions(api, agent["agent_id"]) == [published]
    # The LLM version is frozen with it, without a new LLM version.
    frozen = get_llm(api, llm["llm_id"])
    assert frozen["version"] == 1 and frozen["is_published"] is True
    assert frozen["general_prompt"] == "hello"
    assert [v["version"] for v in api.get(f"{LLMS}/{llm['llm_id']}/versions").json()] == [1]


def test_editing_the_llm_after_publish_leaves_the_published_agent_on_llm_v1(api: Api) -> None:
    llm = make_llm(api, general_prompt="old prompt")
    agent = make_agent(api, llm["llm_id"])
    published = publish(api, agent["agent_id"])
    response = api.patch(f"{LLMS}/{llm['llm_id']}", {"general_prompt": "new prompt"})
    assert response.status_code == 200, response.text
    llm_v2 = response.json()
    assert llm_v2["version"] == 2 and llm_v2["is_published"] is False
    assert llm_v2["general_prompt"] == "new prompt"
    llm_v1 = get_llm(api, llm["llm_id"], version=1)
    assert llm_v1["is_published"] is True and llm_v1["general_prompt"] == "old prompt"
    # The agent did not move: still version 1, still on LLM version 1.
    now = get_agent(api, agent["agent_id"])
    assert now == published
    assert now["response_engine"] == engine(llm["llm_id"], 1)


def test_patch_after_publish_starts_a_new_draft_version(api: Api) -> None:
    agent = make_agent(api, agent_name="v1 name", webhook_timeout_ms=5_000)
    agent_id = agent["agent_id"]
    v1 = publish(api, agent_id)
    draft = patch(api, agent_id, {"agent_name": "v2 name", "timezone": "Asia/Tokyo"})
    assert draft["agent_id"] == agent_id
    assert draft["version"] == 2
    assert draft["is_published"] is False
    assert draft["agent_name"] == "v2 name" and draft["timezone"] == "Asia/Tokyo"
    assert draft["webhook_timeout_ms"] == 5_000  # carried over from version 1
    assert draft["response_engine"]["llm_id"] == v1["response_engine"]["llm_id"]
    assert ts(draft["created_at"]) >= ts(v1["created_at"])
    # The latest is the draft; version 1 is exactly as published.
    assert get_agent(api, agent_id) == draft
    assert get_agent(api, agent_id, version=1) == v1
    assert get_agent(api, agent_id, version=2) == draft
    # Editing the draft again changes it in place.
    draft = patch(api, agent_id, {"agent_name": "v2 name, again"})
    assert draft["version"] == 2 and draft["agent_name"] == "v2 name, again"
    assert versions(api, agent_id) == [v1, draft]
    # Publish version 2, edit again: version 3.
    v2 = publish(api, agent_id)
    assert v2["version"] == 2 and v2["is_published"] is True
    v3 = patch(api, agent_id, {"is_public": True})
    assert v3["version"] == 3 and v3["is_published"] is False and v3["agent_name"] == "v2 name, again"
    listed = versions(api, agent_id)
    assert [(v["version"], v["is_published"]) for v in listed] == [(1, True), (2, True), (3, False)]
    assert listed == [v1, v2, v3]
    assert [a["agent_id"] for a in api.get(AGENTS).json()["data"]] == [agent_id]
    assert api.get(AGENTS).json()["data"][0]["version"] == 3


def test_publish_twice_changes_nothing(api: Api) -> None:
    agent = make_agent(api)
    first = publish(api, agent["agent_id"])
    second = publish(api, agent["agent_id"])
    assert second == first
    assert versions(api, agent["agent_id"]) == [first]
    llm_id = agent["response_engine"]["llm_id"]
    assert [(v["version"], v["is_published"]) for v in api.get(f"{LLMS}/{llm_id}/versions").json()] == [
        (1, True)
    ]


def test_publish_of_an_unpinned_agent_pins_the_latest_llm_version(api: Api) -> None:
    llm = make_llm(api, general_prompt="one")
    assert api.post(f"{LLMS}/{llm['llm_id']}/publish").status_code == 200
    assert api.patch(f"{LLMS}/{llm['llm_id']}", {"general_prompt": "two"}).json()["version"] == 2
    agent = make_agent(api, llm["llm_id"])
    published = publish(api, agent["agent_id"])
    assert published["response_engine"] == engine(llm["llm_id"], 2)
    latest = get_llm(api, llm["llm_id"])
    assert latest["version"] == 2 and latest["is_published"] is True


def test_publish_of_a_pinned_agent_freezes_only_that_llm_version(api: Api) -> None:
    llm = make_llm(api, general_prompt="one")
    assert api.post(f"{LLMS}/{llm['llm_id']}/publish").status_code == 200
    assert api.patch(f"{LLMS}/{llm['llm_id']}", {"general_prompt": "two"}).json()["version"] == 2
    agent = make_agent(api, response_engine=engine(llm["llm_id"], 1))
    published = publish(api, agent["agent_id"])
    assert published["response_engine"] == engine(llm["llm_id"], 1)
    assert get_llm(api, llm["llm_id"], version=1)["is_published"] is True
    latest = get_llm(api, llm["llm_id"])
    assert latest["version"] == 2 and latest["is_published"] is False


def test_an_llm_an_agent_uses_cannot_be_deleted(api: Api) -> None:
    """Why ``llm_missing`` (409 on publish) cannot be reached through the API.

    DELETE /api/llms refuses while any version of any live agent names the LLM,
    and create/PATCH refuse an LLM that does not exist, so an agent whose LLM is
    gone can only come from a race between the two (see the report), not from
    any sequence of calls. This test pins down the guard that makes it so.
    """
    llm_a, llm_b = make_llm(api, "a"), make_llm(api, "b")
    # A draft on A: A is in use.
    draft = make_agent(api, llm_a["llm_id"])
    assert_error(api.delete(f"{LLMS}/{llm_a['llm_id']}"), 409, "llm_in_use")
    # A published agent moved to B in its draft version 2: version 1 still runs on A.
    moved = make_agent(api, llm_a["llm_id"])
    publish(api, moved["agent_id"])
    patch(api, moved["agent_id"], {"response_engine": {"type": "uponai-llm", "llm_id": llm_b["llm_id"]}})
    # The draft repointed in place: it no longer uses A.
    patch(api, draft["agent_id"], {"response_engine": {"type": "uponai-llm", "llm_id": llm_b["llm_id"]}})
    assert_error(api.delete(f"{LLMS}/{llm_a['llm_id']}"), 409, "llm_in_use")
    assert get_llm(api, llm_a["llm_id"])["llm_id"] == llm_a["llm_id"]
    # Once the published agent is gone, A can go; the repointed draft still publishes, on B.
    assert api.delete(url(moved["agent_id"])).status_code == 204
    assert api.delete(f"{LLMS}/{llm_a['llm_id']}").status_code == 204
    assert publish(api, draft["agent_id"])["response_engine"] == engine(llm_b["llm_id"], 1)
    # And no agent may be pointed at the deleted LLM.
    response = api.patch(url(draft["agent_id"]), {"response_engine": {"type": "uponai-llm", "llm_id": llm_a["llm_id"]}})
    assert_error(response, 422, "validation_error", "response_engine.llm_id")


# --- validation ------------------------------------------------------------------

# (fields to send, field the 422 must name, a piece of its message)
INVALID: list[tuple[dict[str, Any], str, str]] = [
    ({"end_chat_after_silence_ms": 119_999}, "end_chat_after_silence_ms", "120000"),
    ({"end_chat_after_silence_ms": 259_200_001}, "end_chat_after_silence_ms", "259200000"),
    ({"end_chat_after_silence_ms": "soon"}, "end_chat_after_silence_ms", "integer"),
    ({"webhook_timeout_ms": 999}, "webhook_timeout_ms", "1000"),
    ({"webhook_timeout_ms": 120_001}, "webhook_timeout_ms", "120000"),
    ({"data_storage_retention_days": 0}, "data_storage_retention_days", "1"),
    ({"data_storage_retention_days": 731}, "data_storage_retention_days", "730"),
    ({"timezone": "Mars/Olympus_Mons"}, "timezone", "unknown IANA time zone"),
    ({"timezone": "../../etc/passwd"}, "timezone", "unknown IANA time zone"),
    ({"timezone": ""}, "timezone", "unknown IANA time zone"),
    ({"timezone": "x" * 300}, "timezone", "64"),  # ZoneInfo itself would fail on the path's length
    ({"webhook_url": "ftp://example.com/hook"}, "webhook_url", "http(s)"),
    ({"webhook_url": "not a url"}, "webhook_url", "http(s)"),
    ({"webhook_url": "https://"}, "webhook_url", "http(s)"),
    ({"webhook_events": ["chat_started", "chat_exploded"]}, "webhook_events[1]", "transcript_updated"),
    ({"webhook_events": ["chat_ended", "chat_ended"]}, "webhook_events", "twice"),
    ({"data_storage_setting": "all"}, "data_storage_setting", "everything_except_pii"),
    ({"uponai_dynamic_variables": {"count": 3}}, "uponai_dynamic_variables.count", "string"),
    ({"auto_close_message": "x" * 10_001}, "auto_close_message", "10000"),
    ({"agent_name": ""}, "agent_name", "at least 1"),
    ({"agent_name": "n" * 201}, "agent_name", "200"),
    ({"agent_name": None}, "agent_name", "string"),
    ({"agent_nmae": "typo"}, "agent_nmae", "Extra inputs"),
    ({"post_chat_analysis_model": "gpt-nonexistent"}, "post_chat_analysis_model", "gpt-nonexistent"),
    (
        {
            "post_chat_analysis_data": [
                {"type": "string", "name": "topic", "description": "a"},
                {"type": "boolean", "name": "topic", "description": "b"},
            ]
        },
        "post_chat_analysis_data[1].name",
        "twice",
    ),
    (
        {
            "post_chat_analysis_data": [
                {"type": "number", "name": "ok", "description": "a"},
                {"type": "date", "name": "when", "description": "b"},
            ]
        },
        "post_chat_analysis_data[1]",
        "date",
    ),
    ({"response_engine": {"type": "conversation-flow", "conversation_flow_id": "cf_1"}}, "response_engine.type",
     "conversation flow"),
]


@pytest.mark.parametrize(("fields", "field", "fragment"), INVALID, ids=[case[1] + ":" + str(i) for i, case in enumerate(INVALID)])
def test_invalid_value_is_422_naming_the_field_on_create_and_patch(
    api: Api, fields: dict[str, Any], field: str, fragment: str
) -> None:
    existing = make_agent(api)
    before = get_agent(api, existing["agent_id"])
    body = {"agent_name": "x", "response_engine": {"type": "uponai-llm", "llm_id": existing["response_engine"]["llm_id"]}}
    error = assert_error(api.post(AGENTS, {**body, **fields}), 422, "validation_error", field)
    assert fragment in error["message"], error
    assert error["details"][0]["field"] == field
    error = assert_error(api.patch(url(existing["agent_id"]), fields), 422, "validation_error", field)
    assert fragment in error["message"], error
    # Nothing was created and nothing was changed.
    assert list_ids(api) == [existing["agent_id"]]
    assert get_agent(api, existing["agent_id"]) == before


def test_enum_analysis_field_needs_choices(api: Api) -> None:
    llm = make_llm(api)
    body = {
        "agent_name": "x",
        "response_engine": engine(llm["llm_id"]),
        "post_chat_analysis_data": [{"type": "enum", "name": "topic", "description": "d", "choices": []}],
    }
    error = assert_error(api.post(AGENTS, body), 422, "validation_error")
    assert error["field"].startswith("post_chat_analysis_data[0]") and error["field"].endswith("choices"), error
    assert "at least 1 item" in error["message"]
    del body["post_chat_analysis_data"][0]["choices"]
    error = assert_error(api.post(AGENTS, body), 422, "validation_error")
    assert error["field"].endswith("choices") and "required" in error["message"], error
    assert list_ids(api) == []


def test_missing_agent_name_or_response_engine_is_422(api: Api) -> None:
    llm = make_llm(api)
    assert_error(api.post(AGENTS, {"response_engine": engine(llm["llm_id"])}), 422, "validation_error", "agent_name")
    assert_error(api.post(AGENTS, {"agent_name": "x"}), 422, "validation_error", "response_engine")
    assert_error(api.post(AGENTS, {}), 422, "validation_error")
    assert list_ids(api) == []


def test_response_engine_with_an_unknown_llm_is_422(api: Api) -> None:
    existing = make_agent(api)
    missing = "llm_01jzzzzzzzzzzzzzzzzzzzzzzz"
    body = {"agent_name": "x", "response_engine": {"type": "uponai-llm", "llm_id": missing}}
    error = assert_error(api.post(AGENTS, body), 422, "validation_error", "response_engine.llm_id")
    assert missing in error["message"]
    error = assert_error(
        api.patch(url(existing["agent_id"]), {"response_engine": body["response_engine"]}),
        422, "validation_error", "response_engine.llm_id",
    )
    assert get_agent(api, existing["agent_id"]) == existing
    assert list_ids(api) == [existing["agent_id"]]


def test_response_engine_with_another_workspaces_llm_is_422_like_a_missing_one(api: Api, other: Api) -> None:
    theirs = make_llm(other)["llm_id"]
    missing = "llm_01jzzzzzzzzzzzzzzzzzzzzzzz"
    existing = make_agent(api)
    answers = {}
    for llm_id in (theirs, missing):
        response = api.post(AGENTS, {"agent_name": "x", "response_engine": engine(llm_id)})
        error = assert_error(response, 422, "validation_error", "response_engine.llm_id")
        answers[llm_id] = error["message"].replace(llm_id, "ID")
        assert_error(
            api.patch(url(existing["agent_id"]), {"response_engine": engine(llm_id)}),
            422, "validation_error", "response_engine.llm_id",
        )
    assert answers[theirs] == answers[missing]
    assert list_ids(api) == [existing["agent_id"]]
    assert get_agent(api, existing["agent_id"]) == existing
    # Their LLM is untouched, and not marked as used by anyone here.
    assert other.delete(f"{LLMS}/{theirs}").status_code == 204


def test_response_engine_with_an_unknown_llm_version_names_the_version(api: Api) -> None:
    llm = make_llm(api)
    response = api.post(AGENTS, {"agent_name": "x", "response_engine": engine(llm["llm_id"], 7)})
    error = assert_error(response, 422, "validation_error", "response_engine.version")
    assert "version 7" in error["message"]
    assert list_ids(api) == []


def test_llm_version_beyond_a_32_bit_integer_is_422(api: Api) -> None:
    # Like agent_version on chats (found by schemathesis): not a 500 from PostgreSQL's driver.
    llm = make_llm(api)
    response = api.post(AGENTS, {"agent_name": "x", "response_engine": engine(llm["llm_id"], 2**31)})
    assert_error(response, 422, "validation_error", "response_engine.version")
    existing = make_agent(api, llm["llm_id"])
    response = api.patch(url(existing["agent_id"]), {"response_engine": engine(llm["llm_id"], 2**31)})
    assert_error(response, 422, "validation_error", "response_engine.version")


def test_conversation_flow_engine_is_refused_on_create_and_patch(api: Api) -> None:
    existing = make_agent(api)
    flow = {"type": "conversation-flow", "conversation_flow_id": "conversation_flow_1"}
    error = assert_error(api.post(AGENTS, {"agent_name": "x", "response_engine": flow}), 422,
                         "validation_error", "response_engine.type")
    assert "uponai-llm" in error["message"]
    assert_error(api.patch(url(existing["agent_id"]), {"response_engine": flow}), 422,
                 "validation_error", "response_engine.type")
    assert get_agent(api, existing["agent_id"]) == existing


def test_empty_language_list_is_refused(api: Api) -> None:
    llm = make_llm(api)
    error = assert_error(
        api.post(AGENTS, {"agent_name": "x", "response_engine": engine(llm["llm_id"]), "language": []}),
        422, "validation_error",
    )
    assert error["field"].startswith("language"), error
    assert list_ids(api) == []


# The field at fault inside a union: pydantic puts the union member's tag into
# the error location ("post_chat_analysis_data[0].enum.choices",
# "response_engine.uponai-llm.llm_id", "language.constrained-str"), and
# chatplane.errors._field_name passes it through. The contract says name the
# field; these are the names a client would look for.
TAGGED = [
    (
        {"post_chat_analysis_data": [{"type": "enum", "name": "t", "description": "d", "choices": []}]},
        "post_chat_analysis_data[0].choices",
    ),
    (
        {"post_chat_analysis_data": [{"type": "string", "name": "bad name", "description": "d"}]},
        "post_chat_analysis_data[0].name",
    ),
    ({"response_engine": {"type": "uponai-llm"}}, "response_engine.llm_id"),
    ({"language": "english"}, "language"),
    ({"language": ["en-US", "en_US"]}, "language[1]"),
]


@pytest.mark.parametrize(("fields", "field"), TAGGED, ids=[case[1] for case in TAGGED])
def test_field_inside_a_union_is_named_without_the_union_tag(api: Api, fields: dict[str, Any], field: str) -> None:
    llm = make_llm(api)
    body = {"agent_name": "x", "response_engine": engine(llm["llm_id"]), **fields}
    assert_error(api.post(AGENTS, body), 422, "validation_error", field)


def test_patch_with_a_bad_response_engine_reports_only_the_chosen_engine_type(api: Api) -> None:
    agent = make_agent(api)
    error = assert_error(api.patch(url(agent["agent_id"]), {"response_engine": {"type": "uponai-llm"}}), 422)
    assert [d["field"] for d in error["details"]] == ["response_engine.llm_id"], error


# --- errors on every route ---------------------------------------------------------


def test_unknown_id_is_404_on_every_route(api: Api) -> None:
    for method, path, extra in every_route(MISSING_ID):
        error = assert_error(call(api, method, path, extra), 404, "chat_agent_not_found")
        assert MISSING_ID in error["message"], (method, path, error)


def test_another_workspaces_agent_is_404_exactly_like_a_missing_one(api: Api, other: Api) -> None:
    theirs = make_agent(other, agent_name="theirs")
    for (method, path, extra), (_, missing_path, _) in zip(every_route(theirs["agent_id"]), every_route(MISSING_ID)):
        mine = assert_error(call(api, method, path, extra), 404, "chat_agent_not_found")
        absent = assert_error(call(api, method, missing_path, extra), 404, "chat_agent_not_found")
        assert mine["message"].replace(theirs["agent_id"], "ID") == absent["message"].replace(MISSING_ID, "ID")
        assert set(mine) == set(absent)
    # Their agent was not renamed, published or deleted, and is not listed here.
    assert get_agent(other, theirs["agent_id"]) == theirs
    assert list_ids(api) == []
    assert list_ids(other) == [theirs["agent_id"]]


def test_another_workspace_id_is_404_on_every_route(api: Api, other: Api) -> None:
    mine = make_agent(api)
    llm_id = mine["response_engine"]["llm_id"]
    create = api.post(AGENTS, {"workspaceId": other.ws, "agent_name": "x", "response_engine": engine(llm_id)})
    assert_error(create, 404, "workspace_not_found")
    assert_error(api.get(AGENTS, workspaceId=other.ws), 404, "workspace_not_found")
    for method, path, extra in every_route(mine["agent_id"]):
        response = call(api, method, path, {**extra, "workspaceId": other.ws})
        error = assert_error(response, 404, "workspace_not_found")
        assert str(other.ws) in error["message"]
    assert get_agent(api, mine["agent_id"]) == mine
    assert list_ids(other) == []


def test_unknown_version_is_404_and_a_bad_one_422(api: Api) -> None:
    agent = make_agent(api)
    error = assert_error(api.get(url(agent["agent_id"]), version=2), 404, "chat_agent_not_found")
    assert "version 2" in error["message"] and agent["agent_id"] in error["message"]
    publish(api, agent["agent_id"])
    patch(api, agent["agent_id"], {"agent_name": "v2"})
    assert get_agent(api, agent["agent_id"], version=2)["agent_name"] == "v2"
    assert_error(api.get(url(agent["agent_id"]), version=3), 404, "chat_agent_not_found")
    assert_error(api.get(url(agent["agent_id"]), version=0), 422, "validation_error", "version")
    assert_error(api.get(url(agent["agent_id"]), version="latest"), 422, "validation_error", "version")


@pytest.mark.parametrize("method_suffix", [("POST", ""), ("PATCH", "/ID"), ("POST", "/ID/publish")])
def test_malformed_json_is_422(api: Api, method_suffix: tuple[str, str]) -> None:
    agent = make_agent(api)
    method, suffix = method_suffix
    path = AGENTS + suffix.replace("ID", agent["agent_id"])
    for junk in (b'{"workspaceId": 1,', b"[1, 2]", b"null"):
        response = api.http.request(method, path, content=junk, headers={"content-type": "application/json"})
        assert_error(response, 422, "validation_error")
    response = api.http.request(method, path, content=b'{"workspaceId": ', headers={"content-type": "application/json"})
    error = assert_error(response, 422, "validation_error", "body")
    assert "JSON" in error["message"]
    assert get_agent(api, agent["agent_id"]) == agent
    assert list_ids(api) == [agent["agent_id"]]


def test_patch_with_an_invalid_value_changes_nothing(api: Api) -> None:
    agent = make_agent(api, agent_name="kept")
    # One good field next to one bad one: neither is applied.
    response = api.patch(url(agent["agent_id"]), {"agent_name": "lost", "webhook_timeout_ms": 5})
    assert_error(response, 422, "validation_error", "webhook_timeout_ms")
    assert get_agent(api, agent["agent_id"]) == agent
    # On a published agent, a refused edit makes no new version.
    published = publish(api, agent["agent_id"])
    response = api.patch(url(agent["agent_id"]), {"agent_name": "lost", "timezone": "Nowhere/Land"})
    assert_error(response, 422, "validation_error", "timezone")
    response = api.patch(url(agent["agent_id"]), {"agent_name": "lost", "post_chat_analysis_model": "nope"})
    assert_error(response, 422, "validation_error", "post_chat_analysis_model")
    assert versions(api, agent["agent_id"]) == [published]
    assert get_agent(api, agent["agent_id"]) == published


def test_patch_with_null_for_a_checked_field_is_422(api: Api) -> None:
    # Found by schemathesis: the time-zone check ran on the null itself and
    # failed inside zoneinfo, a 500. A null is "not a time zone" like any other.
    agent = make_agent(api)
    assert_error(api.patch(url(agent["agent_id"]), {"timezone": None}), 422, "validation_error", "timezone")
    assert get_agent(api, agent["agent_id"]) == agent


def test_publish_body_is_checked(api: Api) -> None:
    agent = make_agent(api)
    assert_error(api.http.post(url(agent["agent_id"], "/publish"), json={}), 422, "validation_error", "workspaceId")
    assert_error(api.post(url(agent["agent_id"], "/publish"), {"force": True}), 422, "validation_error", "force")
    assert get_agent(api, agent["agent_id"])["is_published"] is False


def test_delete_removes_every_version(api: Api) -> None:
    agent = make_agent(api)
    agent_id = agent["agent_id"]
    publish(api, agent_id)
    patch(api, agent_id, {"agent_name": "v2"})
    response = api.delete(url(agent_id))
    assert response.status_code == 204
    assert response.content == b""
    for method, path, extra in every_route(agent_id):
        assert_error(call(api, method, path, extra), 404, "chat_agent_not_found")
    assert_error(api.get(url(agent_id), version=2), 404, "chat_agent_not_found")
    assert list_ids(api) == []
    # The LLM it used is free again.
    assert api.delete(f"{LLMS}/{agent['response_engine']['llm_id']}").status_code == 204


def test_delete_leaves_other_agents_alone(api: Api) -> None:
    llm = make_llm(api)
    keep = make_agent(api, llm["llm_id"], agent_name="keep")
    gone = make_agent(api, llm["llm_id"], agent_name="gone")
    assert api.delete(url(gone["agent_id"])).status_code == 204
    assert get_agent(api, keep["agent_id"]) == keep
    assert list_ids(api) == [keep["agent_id"]]
    assert_error(api.delete(f"{LLMS}/{llm['llm_id']}"), 409, "llm_in_use")


@pytest.mark.parametrize("method_suffix", [("POST", ""), ("PATCH", "/ID"), ("POST", "/ID/publish")])
def test_oversized_body_is_413(api: Api, method_suffix: tuple[str, str]) -> None:
    agent = make_agent(api)
    method, suffix = method_suffix
    path = AGENTS + suffix.replace("ID", agent["agent_id"])
    limit = api.backend.settings.server.max_body_bytes
    body = (
        b'{"workspaceId": %d, "agent_name": "' % api.ws
        + b"x" * limit
        + b'", "response_engine": {"type": "uponai-llm", "llm_id": "%s"}}' % agent["response_engine"]["llm_id"].encode()
    )
    # A new connection for the big request: see the keep-alive test below.
    response = httpx.request(
        method, api.backend.url + path, content=body,
        headers={"Authorization": f"Bearer {api.key}", "content-type": "application/json"},
    )
    assert_error(response, 413, "payload_too_large")
    assert get_agent(api, agent["agent_id"]) == agent
    assert list_ids(api) == [agent["agent_id"]]


def test_oversized_body_is_413_on_a_kept_alive_connection(api: Api) -> None:
    limit = api.backend.settings.server.max_body_bytes
    body = b'{"workspaceId": %d, "agent_name": "' % api.ws + b"x" * limit + b'"}'
    for _ in range(20):
        assert api.get(AGENTS).status_code == 200  # the connection the next request reuses
        response = api.http.post(AGENTS, content=body, headers={"content-type": "application/json"})
        assert_error(response, 413, "payload_too_large")


# --- listing -----------------------------------------------------------------------


def test_list_pages_in_both_orders_without_gaps_or_duplicates(api: Api, other: Api) -> None:
    llm = make_llm(api)
    created = [make_agent(api, llm["llm_id"], agent_name=f"agent {i}")["agent_id"] for i in range(7)]
    deleted = [created[2], created[5]]
    for agent_id in deleted:
        assert api.delete(url(agent_id)).status_code == 204
    make_agent(other, agent_name="not mine")
    live = sorted(set(created) - set(deleted))
    assert len(live) == 5

    ids, sizes = walk(api, "descending", 2)
    assert ids == sorted(live, reverse=True)
    assert sizes == [2, 2, 1]
    ids, sizes = walk(api, "ascending", 2)
    assert ids == live
    assert sizes == [2, 2, 1]
    # A page size that divides the list exactly ends without an empty page.
    ids, sizes = walk(api, "ascending", 5)
    assert ids == live and sizes == [5]
    ids, sizes = walk(api, "descending", 1)
    assert ids == sorted(live, reverse=True) and sizes == [1] * 5
    # Newest first by default; ids sort in creation order.
    default = api.get(AGENTS).json()
    assert [a["agent_id"] for a in default["data"]] == sorted(live, reverse=True)
    assert default["pagination_key"] is None
    assert sorted(created) == created


def test_list_shows_each_agent_once_at_its_latest_version(api: Api) -> None:
    agent = make_agent(api, agent_name="v1")
    publish(api, agent["agent_id"])
    latest = patch(api, agent["agent_id"], {"agent_name": "v2"})
    draft = make_agent(api, agent_name="draft")
    data = api.get(AGENTS, sortOrder="ascending").json()["data"]
    assert data == [latest, draft]


def test_list_rejects_bad_paging_parameters(api: Api) -> None:
    llm = make_llm(api)
    for i in range(3):
        make_agent(api, llm["llm_id"], agent_name=str(i))
    key = api.get(AGENTS, limit=1).json()["pagination_key"]
    assert key
    # A key taken in one order is refused in the other.
    assert_error(api.get(AGENTS, limit=1, paginationKey=key, sortOrder="ascending"), 422, "validation_error",
                 "paginationKey")
    assert_error(api.get(AGENTS, paginationKey="not-a-key!"), 422, "validation_error", "paginationKey")
    assert_error(api.get(AGENTS, limit=0), 422, "validation_error", "limit")
    assert_error(api.get(AGENTS, limit=1001), 422, "validation_error", "limit")
    assert_error(api.get(AGENTS, sortOrder="sideways"), 422, "validation_error", "sortOrder")
