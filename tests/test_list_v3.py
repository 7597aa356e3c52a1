"""POST /v3/list-chats: every filter and operator, paging, totals, tenancy, errors.

Every test runs against the real server on SQLite and on PostgreSQL. Chats
are made through the HTTP API; the columns only post-chat analysis will fill
(cost, sentiment, success, analysis data), and chat types and statuses no
route can make yet, are set in the database.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy import update
from sqlalchemy.dialects import sqlite

from chatplane.chats.filters import id_at
from chatplane.chats.list_v3 import conditions
from chatplane.chats.list_v3_schemas import START_ID_SLACK_MS, ChatFilterCriteria
from chatplane.models import Chat
from chatplane.pagination import encode_cursor
from tests.chat_helpers import make_agent, make_chat, make_llm
from tests.conftest import Api, assert_error

V3 = "/v3/list-chats"
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
NAMES = ("c0", "c1", "c2", "c3", "c4", "c5")


def ms(iso: str) -> int:
    """A chat's timestamp as the filters see it: Unix ms, truncated."""
    return (datetime.fromisoformat(iso.replace("Z", "+00:00")) - EPOCH) // timedelta(milliseconds=1)


def set_columns(api: Api, chat_id: str, **values: Any) -> None:
    async def work(session):  # type: ignore[no-untyped-def]
        await session.execute(update(Chat).where(Chat.id == chat_id).values(**values))

    api.backend.run(work)


def end(api: Api, chat_id: str) -> None:
    response = api.post(f"/api/chats/{chat_id}/end")
    assert response.status_code == 204, response.text


def set_attributes(api: Api, chat_id: str, attributes: dict[str, str]) -> None:
    response = api.patch(f"/api/chats/{chat_id}", {"custom_attributes": attributes})
    assert response.status_code == 200, response.text


def get(api: Api, chat_id: str) -> dict[str, Any]:
    response = api.get(f"/api/chats/{chat_id}")
    assert response.status_code == 200, response.text
    return response.json()


@dataclass
class World:
    api: Api
    agent_a: str
    agent_b: str
    chats: dict[str, dict[str, Any]] = field(default_factory=dict)

    def id(self, name: str) -> str:
        return self.chats[name]["chatId"]

    def ids(self, *names: str) -> set[str]:
        return {self.id(n) for n in names}

    def all_but(self, *names: str) -> set[str]:
        return self.ids(*(n for n in NAMES if n not in names))

    def start(self, name: str) -> int:
        return ms(self.chats[name]["startedAt"])

    def end(self, name: str) -> int:
        return ms(self.chats[name]["endedAt"])

    def names(self, ids: set[str]) -> list[str]:
        by_id = {c["chatId"]: n for n, c in self.chats.items()}
        return sorted(by_id.get(i, i) for i in ids)


def build(api: Api) -> World:
    """Six chats on two agents (one with two versions), started 1 ms apart or more.

    | chat | agent | status  | type     | cost | sentiment | success | attributes                                  | analysis data                          |
    | c0   | A v1  | ongoing | api_chat | 0.5  | Positive  | true    | tier gold, score 12, flag true, name Alice Smith | intent refund, items 3, vip true, note null |
    | c1   | A v1  | ended   | api_chat | 2.0  | Negative  | false   | tier silver, score 7.5, name alice           | intent billing question, items 10.5, vip false |
    | c2   | A v2  | ongoing | api_chat | 10.0 | Neutral   | true    | tier Gold, score abc, flag false             | intent refund, items "4"               |
    | c3   | B v1  | ended   | api_chat | 0.0  | Positive  | null    | score -3                                     | (analysis without customAnalysisData)  |
    | c4   | B v1  | ongoing | web_chat | null | Unknown   | null    | tier "", "é k.ey" x"y                        | items 10**400                          |
    | c5   | A v2  | error   | api_chat | null | null      | null    | (none)                                       | (no analysis)                          |
    """
    llm = make_llm(api)
    agent_a = make_agent(api, llm)
    agent_b = make_agent(api, llm, agent_name="Sales")
    world = World(api, agent_a["agent_id"], agent_b["agent_id"])

    def chat(name: str, agent: dict[str, Any]) -> None:
        time.sleep(0.003)
        world.chats[name] = make_chat(api, agent)

    chat("c0", agent_a)
    chat("c1", agent_a)
    assert api.post(f"/api/chat-agents/{agent_a['agent_id']}/publish").status_code == 200
    patched = api.patch(f"/api/chat-agents/{agent_a['agent_id']}", {"agent_name": "Support 2"})
    assert patched.json()["version"] == 2, patched.text
    chat("c2", agent_a)
    chat("c3", agent_b)
    chat("c4", agent_b)
    chat("c5", agent_a)
    assert [world.chats[n]["version"] for n in NAMES] == [1, 1, 2, 1, 1, 2]

    end(api, world.id("c1"))
    time.sleep(0.003)
    end(api, world.id("c3"))
    # Ending a chat queues its analysis, which writes cost, sentiment and
    # success: let it finish before those columns are set by hand below.
    for name in ("c1", "c3"):
        deadline = time.monotonic() + 30
        while not api.get(f"/api/chats/{world.id(name)}").json()["chatAnalysis"]:
            assert time.monotonic() < deadline, f"analysis of {name} did not finish"
            time.sleep(0.05)
    set_attributes(api, world.id("c0"), {"tier": "gold", "score": "12", "flag": "true", "name": "Alice Smith"})
    set_attributes(api, world.id("c1"), {"tier": "silver", "score": "7.5", "name": "alice"})
    set_attributes(api, world.id("c2"), {"tier": "Gold", "score": "abc", "flag": "false"})
    set_attributes(api, world.id("c3"), {"score": "-3"})
    set_attributes(api, world.id("c4"), {"tier": "", "é k.ey": 'x"y'})

    def analysis(data: dict[str, Any] | None) -> dict[str, Any]:
        out: dict[str, Any] = {"chatSummary": "summary", "userSentiment": "Neutral", "chatSuccessful": True}
        if data is not None:
            out["customAnalysisData"] = data
        return out

    rows = {
        "c0": dict(combined_cost=0.5, user_sentiment="Positive", chat_successful=True,
                   chat_analysis=analysis({"intent": "refund", "items": 3, "vip": True, "note": None})),
        "c1": dict(combined_cost=2.0, user_sentiment="Negative", chat_successful=False,
                   chat_analysis=analysis({"intent": "billing question", "items": 10.5, "vip": False})),
        "c2": dict(combined_cost=10.0, user_sentiment="Neutral", chat_successful=True,
                   chat_analysis=analysis({"intent": "refund", "items": "4"})),
        "c3": dict(combined_cost=0.0, user_sentiment="Positive", chat_analysis=analysis(None)),
        "c4": dict(user_sentiment="Unknown", type="web_chat", chat_analysis=analysis({"items": 10**400})),
        "c5": dict(status="error"),
    }

    async def work(session):  # type: ignore[no-untyped-def]
        for name, values in rows.items():
            await session.execute(update(Chat).where(Chat.id == world.id(name)).values(**values))

    api.backend.run(work)
    for name in NAMES:
        world.chats[name] = get(api, world.id(name))
    starts = [world.start(n) for n in NAMES]
    assert starts == sorted(set(starts)), "chats must start in distinct milliseconds"
    assert world.end("c1") < world.end("c3")
    return world


def listing(api: Api, **body: Any) -> dict[str, Any]:
    response = api.post(V3, body)
    assert response.status_code == 200, response.text
    return response.json()


def matching(world: World, criteria: dict[str, Any] | None) -> set[str]:
    """The ids the filter selects, checking the page and its total on the way."""
    body = listing(world.api, filter_criteria=criteria, limit=1000, include_total=True)
    ids = [item["chatId"] for item in body["items"]]
    assert ids == sorted(ids, reverse=True), "newest first"
    assert len(ids) == len(set(ids))
    assert body["has_more"] is False and body["pagination_key"] is None
    assert body["total"] == len(ids)
    return set(ids)


def check(world: World, cases: list[tuple[dict[str, Any], set[str]]]) -> None:
    failures = []
    for criteria, expected in cases:
        got = matching(world, criteria)
        if got != expected:
            failures.append(f"{criteria}: got {world.names(got)}, expected {world.names(expected)}")
    assert not failures, "\n".join(failures)


def key_filter(key: str, op: str, value: Any = None, **extra: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"key": key, "op": op, **extra}
    if op not in ("pr", "np"):
        out["value"] = value
    return out


# --- the answer --------------------------------------------------------------


def test_items_are_chats_without_messages_and_the_answer_has_the_v3_shape(api: Api) -> None:
    agent = make_agent(api, make_llm(api, begin_message="Hello"))
    chat = make_chat(api, agent)
    set_attributes(api, chat["chatId"], {"tier": "gold"})
    body = listing(api)
    assert set(body) == {"items", "has_more", "pagination_key"}
    assert body["has_more"] is False and body["pagination_key"] is None
    [item] = body["items"]
    full = get(api, chat["chatId"])
    assert full["messages"] and full["transcript"]
    assert item == {k: v for k, v in full.items() if k not in ("messages", "transcript")}
    assert item["customAttributes"] == {"tier": "gold"}


def test_empty_workspace_and_empty_filter(api: Api) -> None:
    assert listing(api) == {"items": [], "has_more": False, "pagination_key": None}
    assert listing(api, include_total=True, filter_criteria={}) == {
        "items": [], "has_more": False, "pagination_key": None, "total": 0,
    }


def test_no_filter_lists_every_chat_newest_first(api: Api) -> None:
    world = build(api)
    body = listing(api)
    assert [c["chatId"] for c in body["items"]] == [world.id(n) for n in reversed(NAMES)]
    body = listing(api, sort_order="ascending", filter_criteria=None)
    assert [c["chatId"] for c in body["items"]] == [world.id(n) for n in NAMES]
    assert matching(world, None) == matching(world, {}) == world.ids(*NAMES)


# --- each filter ---------------------------------------------------------------


def test_agent_filter_ors_its_entries_and_narrows_by_version(api: Api, other: Api) -> None:
    w = build(api)
    theirs = make_agent(other)
    check(w, [
        ({"agent": [{"agent_id": w.agent_a}]}, w.ids("c0", "c1", "c2", "c5")),
        ({"agent": [{"agent_id": w.agent_a, "version": []}]}, w.ids("c0", "c1", "c2", "c5")),
        ({"agent": [{"agent_id": w.agent_a, "version": [1]}]}, w.ids("c0", "c1")),
        ({"agent": [{"agent_id": w.agent_a, "version": [2, 3]}]}, w.ids("c2", "c5")),
        ({"agent": [{"agent_id": w.agent_a, "version": [2.0]}]}, w.ids("c2", "c5")),  # the SDK sends floats
        ({"agent": [{"agent_id": w.agent_a, "version": [2]}, {"agent_id": w.agent_b}]}, w.ids("c2", "c3", "c4", "c5")),
        ({"agent": [{"agent_id": w.agent_b, "version": [2]}]}, set()),
        ({"agent": [{"agent_id": theirs["agent_id"]}]}, set()),
        ({"agent": [{"agent_id": "chat_agent_01jzzzzzzzzzzzzzzzzzzzzzzz"}]}, set()),
    ])


def test_chat_id_string_and_enum_operators(api: Api) -> None:
    w = build(api)
    c2 = w.id("c2")
    check(w, [
        ({"chat_id": {"op": "eq", "type": "string", "value": c2}}, w.ids("c2")),
        ({"chat_id": {"op": "eq", "value": c2.upper()}}, set()),  # case-sensitive
        ({"chat_id": {"op": "ne", "value": c2}}, w.all_but("c2")),
        ({"chat_id": {"op": "sw", "value": "chat_"}}, w.ids(*NAMES)),
        ({"chat_id": {"op": "sw", "value": c2[:-1]}}, w.ids("c2")),
        ({"chat_id": {"op": "sw", "value": c2 + "x"}}, set()),
        ({"chat_id": {"op": "sw", "value": ""}}, w.ids(*NAMES)),
        ({"chat_id": {"op": "ew", "value": c2[-8:]}}, w.ids("c2")),
        ({"chat_id": {"op": "ew", "value": "x" + c2}}, set()),
        ({"chat_id": {"op": "co", "value": c2[12:24]}}, w.ids("c2")),
        ({"chat_id": {"op": "co", "value": "chat_01"}}, w.ids(*NAMES)),
        ({"chat_id": {"op": "co", "value": "%"}}, set()),  # no LIKE wildcards
        ({"chat_id": {"op": "co", "value": "_"}}, w.ids(*NAMES)),
        ({"chat_id": {"op": "in", "type": "enum", "value": [w.id("c1"), w.id("c3"), "chat_unknown"]}},
         w.ids("c1", "c3")),
    ])


def test_status_type_sentiment_and_success(api: Api) -> None:
    w = build(api)
    check(w, [
        ({"chat_status": {"op": "in", "type": "enum", "value": ["ended"]}}, w.ids("c1", "c3")),
        ({"chat_status": {"op": "in", "value": ["ongoing", "error"]}}, w.ids("c0", "c2", "c4", "c5")),
        ({"chat_status": {"op": "in", "value": ["error"]}}, w.ids("c5")),
        ({"chat_type": {"op": "in", "value": ["web_chat"]}}, w.ids("c4")),
        ({"chat_type": {"op": "in", "value": ["api_chat", "sms_chat"]}}, w.all_but("c4")),
        ({"chat_type": {"op": "in", "value": ["sms_chat"]}}, set()),
        ({"user_sentiment": {"op": "in", "value": ["Positive"]}}, w.ids("c0", "c3")),
        ({"user_sentiment": {"op": "in", "value": ["Negative", "Unknown"]}}, w.ids("c1", "c4")),
        ({"chat_successful": {"op": "eq", "type": "boolean", "value": True}}, w.ids("c0", "c2")),
        ({"chat_successful": {"op": "eq", "value": False}}, w.ids("c1")),
    ])


def test_combined_cost_number_range_and_presence(api: Api) -> None:
    w = build(api)
    cost = lambda op, value=None: {"combined_cost": {"op": op, **({} if value is None else {"value": value})}}  # noqa: E731
    check(w, [
        (cost("eq", 0.5), w.ids("c0")),
        (cost("eq", 0), w.ids("c3")),
        (cost("ne", 0.5), w.all_but("c0")),  # chats without a cost too
        (cost("gt", 0.5), w.ids("c1", "c2")),
        (cost("ge", 0.5), w.ids("c0", "c1", "c2")),
        (cost("lt", 2), w.ids("c0", "c3")),
        (cost("le", 2), w.ids("c0", "c1", "c3")),
        (cost("bt", [0.5, 2]), w.ids("c0", "c1")),
        (cost("bt", [0, 0]), w.ids("c3")),
        (cost("bt", [10.5, 100]), set()),
        (cost("pr"), w.ids("c0", "c1", "c2", "c3")),
        (cost("np"), w.ids("c4", "c5")),
        ({"combined_cost": {"op": "gt", "type": "number", "value": 1}}, w.ids("c1", "c2")),
        ({"combined_cost": {"op": "bt", "type": "range", "value": [1, 10]}}, w.ids("c1", "c2")),
        ({"combined_cost": {"op": "pr", "type": "present"}}, w.ids("c0", "c1", "c2", "c3")),
    ])


def test_start_timestamp_in_milliseconds(api: Api) -> None:
    w = build(api)
    t = w.start("c2")
    start = lambda op, value: {"start_timestamp": {"op": op, "value": value}}  # noqa: E731
    hour = 3_600_000
    check(w, [
        (start("eq", t), w.ids("c2")),
        (start("eq", t + 0.5), set()),
        (start("ne", t), w.all_but("c2")),
        (start("gt", t), w.ids("c3", "c4", "c5")),
        (start("gt", t - 0.5), w.ids("c2", "c3", "c4", "c5")),
        (start("ge", t), w.ids("c2", "c3", "c4", "c5")),
        (start("ge", t + 0.5), w.ids("c3", "c4", "c5")),
        (start("lt", t), w.ids("c0", "c1")),
        (start("lt", t + 0.5), w.ids("c0", "c1", "c2")),
        (start("le", t), w.ids("c0", "c1", "c2")),
        (start("bt", [w.start("c1"), w.start("c3")]), w.ids("c1", "c2", "c3")),
        (start("bt", [t, t]), w.ids("c2")),
        (start("bt", [w.start("c1") + 0.5, w.start("c3") - 0.5]), w.ids("c2")),
        ({"start_timestamp": {"op": "bt", "type": "range", "value": [t - hour, t + hour]}}, w.ids(*NAMES)),
        ({"start_timestamp": {"op": "gt", "type": "number", "value": t + hour}}, set()),
        (start("lt", t - hour), set()),
        (start("ge", 0), w.ids(*NAMES)),
        (start("le", 253_402_300_799_999), w.ids(*NAMES)),
        (start("gt", 253_402_300_799_999), set()),
    ])


def test_start_timestamp_bounds_become_chat_id_bounds() -> None:
    """The (workspace_id, id) index serves a start-time range: the filter carries id bounds."""
    t = 1_767_225_600_000  # 2026-01-01T00:00:00Z
    criteria = ChatFilterCriteria.model_validate({"start_timestamp": {"op": "bt", "value": [t, t + 999]}})
    compiled = [c.compile(dialect=sqlite.dialect()) for c in conditions(criteria, dialect="sqlite")]
    id_bounds = {(str(c).split(" ")[1], *c.params.values()) for c in compiled if str(c).startswith("chats.id ")}
    assert id_bounds == {
        (">=", id_at(EPOCH + timedelta(milliseconds=t - START_ID_SLACK_MS))),
        ("<", id_at(EPOCH + timedelta(milliseconds=t + 1000 + START_ID_SLACK_MS))),
    }
    criteria = ChatFilterCriteria.model_validate({"start_timestamp": {"op": "ne", "value": t}})
    assert "chats.id" not in " ".join(str(c) for c in conditions(criteria, dialect="sqlite"))


def test_end_timestamp_and_chats_not_ended(api: Api) -> None:
    w = build(api)
    e1, e3 = w.end("c1"), w.end("c3")
    end_ts = lambda op, value=None: {"end_timestamp": {"op": op, **({} if value is None else {"value": value})}}  # noqa: E731
    check(w, [
        (end_ts("eq", e1), w.ids("c1")),
        (end_ts("ne", e1), w.all_but("c1")),  # chats still going too
        (end_ts("gt", e1), w.ids("c3")),
        (end_ts("ge", e1), w.ids("c1", "c3")),
        (end_ts("lt", e3), w.ids("c1")),
        (end_ts("le", e3), w.ids("c1", "c3")),
        (end_ts("lt", e1), set()),
        (end_ts("bt", [e1, e3]), w.ids("c1", "c3")),
        (end_ts("bt", [e1 + 0.5, e3]), w.ids("c3")),
        (end_ts("pr"), w.ids("c1", "c3")),
        (end_ts("np"), w.ids("c0", "c2", "c4", "c5")),
        ({"end_timestamp": {"op": "np", "type": "present"}}, w.ids("c0", "c2", "c4", "c5")),
    ])


def test_custom_attributes_string_operators(api: Api) -> None:
    w = build(api)
    attr = lambda *a, **k: {"custom_attributes": [key_filter(*a, **k)]}  # noqa: E731
    check(w, [
        (attr("tier", "eq", "gold"), w.ids("c0")),
        (attr("tier", "eq", "gold", type="string"), w.ids("c0")),
        (attr("tier", "eq", ""), w.ids("c4")),
        (attr("tier", "ne", "gold"), w.all_but("c0")),  # with the chats that have no tier
        (attr("tier", "sw", "go"), w.ids("c0")),
        (attr("tier", "sw", "Go"), w.ids("c2")),
        (attr("name", "ew", "Smith"), w.ids("c0")),
        (attr("name", "ew", "alice"), w.ids("c1")),
        (attr("name", "co", "lic"), w.ids("c0", "c1")),
        (attr("name", "co", ""), w.ids("c0", "c1")),
        (attr("score", "eq", "12"), w.ids("c0")),
        (attr("é k.ey", "eq", 'x"y'), w.ids("c4")),
        (attr("é k.ey", "co", '"'), w.ids("c4")),
        (attr("missing", "eq", ""), set()),
    ])


def test_custom_attributes_number_boolean_enum_range_and_presence(api: Api) -> None:
    w = build(api)
    attr = lambda *a, **k: {"custom_attributes": [key_filter(*a, **k)]}  # noqa: E731
    check(w, [
        # Attribute values are strings; number filters read those written as numbers ("abc" is not).
        (attr("score", "eq", 12), w.ids("c0")),
        (attr("score", "ne", 12), w.all_but("c0")),
        (attr("score", "gt", 7), w.ids("c0", "c1")),
        (attr("score", "ge", 7.5), w.ids("c0", "c1")),
        (attr("score", "lt", 0), w.ids("c3")),
        (attr("score", "le", 7.5), w.ids("c1", "c3")),
        (attr("score", "gt", -1000, type="number"), w.ids("c0", "c1", "c3")),
        (attr("score", "bt", [-5, 8]), w.ids("c1", "c3")),
        (attr("score", "bt", [-3, -3], type="range"), w.ids("c3")),
        (attr("tier", "gt", 0), set()),
        (attr("flag", "eq", True), w.ids("c0")),
        (attr("flag", "eq", False, type="boolean"), w.ids("c2")),
        (attr("tier", "in", ["gold", "silver"]), w.ids("c0", "c1")),
        (attr("tier", "in", ["GOLD"], type="enum"), set()),
        (attr("tier", "pr"), w.ids("c0", "c1", "c2", "c4")),
        (attr("tier", "np", type="present"), w.ids("c3", "c5")),
        (attr("nobody-has-this", "np"), w.ids(*NAMES)),
        # Several filters: all must hold.
        ({"custom_attributes": [key_filter("tier", "pr"), key_filter("tier", "ne", "gold")]},
         w.ids("c1", "c2", "c4")),
        ({"custom_attributes": [key_filter("score", "gt", 0), key_filter("name", "co", "Alice")]}, w.ids("c0")),
    ])


def test_custom_analysis_data_filters(api: Api) -> None:
    w = build(api)
    data = lambda *a, **k: {"custom_analysis_data": [key_filter(*a, **k)]}  # noqa: E731
    check(w, [
        (data("intent", "eq", "refund"), w.ids("c0", "c2")),
        (data("intent", "ne", "refund"), w.all_but("c0", "c2")),
        (data("intent", "sw", "bill"), w.ids("c1")),
        (data("intent", "ew", "question"), w.ids("c1")),
        (data("intent", "co", "fun"), w.ids("c0", "c2")),
        (data("intent", "in", ["refund", "other"]), w.ids("c0", "c2")),
        (data("intent", "pr"), w.ids("c0", "c1", "c2")),
        (data("intent", "np"), w.ids("c3", "c4", "c5")),
        # Numbers: JSON numbers and a string written as one; 10**400 is not an error.
        (data("items", "eq", 3), w.ids("c0")),
        (data("items", "ne", 3), w.all_but("c0")),
        (data("items", "gt", 3), w.ids("c1", "c2", "c4")),
        (data("items", "ge", 4), w.ids("c1", "c2", "c4")),
        (data("items", "lt", 10.5), w.ids("c0", "c2")),
        (data("items", "le", 10.5), w.ids("c0", "c1", "c2")),
        (data("items", "bt", [3, 4]), w.ids("c0", "c2")),
        (data("items", "gt", 1e300), w.ids("c4")),
        (data("items", "eq", "3"), set()),  # a string filter matches strings only
        (data("vip", "eq", True), w.ids("c0")),
        (data("vip", "eq", False), w.ids("c1")),
        # A null value is not a value.
        (data("note", "pr"), set()),
        (data("note", "np"), w.ids(*NAMES)),
        (data("note", "ne", "x"), w.ids(*NAMES)),
        ({"custom_analysis_data": [key_filter("intent", "eq", "refund"), key_filter("items", "gt", 3)]},
         w.ids("c2")),
    ])


def test_filters_are_anded(api: Api) -> None:
    w = build(api)
    check(w, [
        ({"agent": [{"agent_id": w.agent_a}], "chat_status": {"op": "in", "value": ["ongoing"]}}, w.ids("c0", "c2")),
        ({"agent": [{"agent_id": w.agent_a}], "combined_cost": {"op": "pr"},
          "custom_attributes": [key_filter("tier", "np")]}, set()),
        ({"user_sentiment": {"op": "in", "value": ["Positive"]}, "combined_cost": {"op": "lt", "value": 0.1},
          "end_timestamp": {"op": "pr"}, "chat_id": {"op": "sw", "value": "chat_"}}, w.ids("c3")),
        ({"chat_successful": {"op": "eq", "value": True}, "custom_analysis_data": [key_filter("items", "eq", 4)],
          "start_timestamp": {"op": "ge", "value": w.start("c0")}}, w.ids("c2")),
    ])


# --- paging and totals --------------------------------------------------------


def walk(api: Api, between: Any = None, **body: Any) -> tuple[list[str], list[dict[str, Any]]]:
    """Every page, following pagination_key; ``between()`` runs before each next page."""
    ids: list[str] = []
    pages: list[dict[str, Any]] = []
    key = None
    while True:
        page = listing(api, pagination_key=key, **body)
        pages.append(page)
        ids += [c["chatId"] for c in page["items"]]
        assert page["has_more"] == (page["pagination_key"] is not None)
        key = page["pagination_key"]
        if key is None:
            return ids, pages
        assert len(pages) < 100
        if between:
            between()


@pytest.mark.parametrize("order", ["ascending", "descending"])
def test_pages_cover_every_chat_once_in_order(api: Api, order: str) -> None:
    w = build(api)
    expected = [w.id(n) for n in (NAMES if order == "ascending" else reversed(NAMES))]
    for limit in (1, 2, 4, 5, 6, 7):
        ids, pages = walk(api, sort_order=order, limit=limit, include_total=True)
        assert ids == expected, limit
        assert [len(p["items"]) for p in pages[:-1]] == [limit] * (len(pages) - 1)
        assert len(pages) == max(1, -(-len(NAMES) // limit))
        assert all(p["total"] == len(NAMES) for p in pages)


def test_pages_of_a_filtered_list(api: Api) -> None:
    w = build(api)
    criteria = {"agent": [{"agent_id": w.agent_a}], "chat_status": {"op": "in", "value": ["ongoing", "ended"]}}
    ids, pages = walk(api, filter_criteria=criteria, limit=1, include_total=True)
    assert ids == [w.id("c2"), w.id("c1"), w.id("c0")]
    assert [p["total"] for p in pages] == [3, 3, 3]
    ids, _ = walk(api, filter_criteria=criteria, limit=2, sort_order="ascending")
    assert ids == [w.id("c0"), w.id("c1"), w.id("c2")]


def test_paging_while_chats_are_created(api: Api) -> None:
    w = build(api)
    agent = {"agent_id": w.agent_b}
    made: list[str] = []

    def create() -> None:
        time.sleep(0.002)  # a later millisecond than the cursor's chat
        made.append(make_chat(api, agent)["chatId"])

    # Newest first: chats made after the first page are newer than every cursor.
    ids, pages = walk(api, between=create, limit=2, include_total=True)
    assert ids == [w.id(n) for n in reversed(NAMES)]
    assert [p["total"] for p in pages] == [6, 7, 8]
    assert len(made) == 2

    # Oldest first: what existed comes once, in order, then each chat made
    # while paging, once, as it was made before the page that reached it.
    existing = [w.id(n) for n in NAMES] + made
    made = []
    ids, pages = walk(api, between=create, sort_order="ascending", limit=3)
    assert len(made) == len(pages) - 1 >= 2
    assert ids == existing + made
    assert len(ids) == len(set(ids))


def test_default_limit_is_50_and_the_limit_bounds(api: Api) -> None:
    agent = make_agent(api)
    for _ in range(52):
        make_chat(api, agent)
    body = listing(api, include_total=True)
    assert len(body["items"]) == 50 and body["has_more"] is True and body["total"] == 52
    rest = listing(api, pagination_key=body["pagination_key"])
    assert len(rest["items"]) == 2 and rest["has_more"] is False and rest["pagination_key"] is None
    assert len(listing(api, limit=1000)["items"]) == 52
    one = listing(api, limit=1)
    assert len(one["items"]) == 1 and one["has_more"] is True
    ids, _ = walk(api, limit=50)
    assert len(ids) == len(set(ids)) == 52


def test_total_only_when_asked_and_it_ignores_the_cursor(api: Api) -> None:
    w = build(api)
    first = listing(api, limit=2)
    assert "total" not in first
    assert "total" not in listing(api, limit=2, include_total=False)
    second = listing(api, limit=2, include_total=True, pagination_key=first["pagination_key"])
    assert second["total"] == 6 and len(second["items"]) == 2
    filtered = listing(api, limit=1, include_total=True,
                       filter_criteria={"chat_status": {"op": "in", "value": ["ended"]}})
    assert filtered["total"] == 2 and [c["chatId"] for c in filtered["items"]] == [w.id("c3")]
    assert listing(api, include_total=True, filter_criteria={"chat_id": {"op": "eq", "value": "x"}})["total"] == 0


def test_pagination_key_errors_name_the_field(api: Api) -> None:
    build(api)
    ascending = listing(api, sort_order="ascending", limit=2)["pagination_key"]
    descending = listing(api, limit=2)["pagination_key"]
    for body in (
        {"pagination_key": ascending},  # default order is descending
        {"pagination_key": descending, "sort_order": "ascending"},
        {"pagination_key": "not-a-cursor"},
        {"pagination_key": "e30"},  # "{}"
        {"pagination_key": encode_cursor("x", "descending")[:-2]},
        {"pagination_key": 5},
        {"pagination_key": encode_cursor("chat_\u0000", "descending")},
        {"pagination_key": encode_cursor("chat_\ud800", "descending")},
    ):
        error = assert_error(api.post(V3, body), 422, "validation_error", "pagination_key")
        assert error["details"][0]["field"] == "pagination_key"
    # An empty key is no key.
    assert len(listing(api, pagination_key="", limit=2)["items"]) == 2


# --- tenancy and auth ---------------------------------------------------------


def test_another_workspaces_chats_never_appear(api: Api, other: Api) -> None:
    w = build(api)
    theirs = make_chat(other)
    set_attributes(other, theirs["chatId"], {"tier": "gold"})
    set_columns(other, theirs["chatId"], combined_cost=0.5, user_sentiment="Positive", chat_successful=True)
    cases = [
        None,
        {"chat_id": {"op": "eq", "value": theirs["chatId"]}},
        {"chat_id": {"op": "in", "value": [theirs["chatId"], w.id("c0")]}},
        {"custom_attributes": [key_filter("tier", "eq", "gold")]},
        {"combined_cost": {"op": "eq", "value": 0.5}},
        {"agent": [{"agent_id": theirs["agentId"]}]},
    ]
    for criteria in cases:
        assert theirs["chatId"] not in matching(w, criteria), criteria
    assert matching(w, cases[2]) == matching(w, cases[3]) == w.ids("c0")
    mine = listing(other, include_total=True)
    assert [c["chatId"] for c in mine["items"]] == [theirs["chatId"]] and mine["total"] == 1
    # A cursor made from their chat pages my chats only.
    page = listing(api, pagination_key=encode_cursor(theirs["chatId"], "ascending"), sort_order="ascending")
    assert page["items"] == []  # their chat is newer than all of mine
    page = listing(api, pagination_key=encode_cursor(theirs["chatId"], "descending"))
    assert [c["chatId"] for c in page["items"]] == [w.id(n) for n in reversed(NAMES)]


def test_auth_and_workspace(api: Api, other: Api) -> None:
    make_chat(other)
    url = api.backend.url + V3
    body = {"workspaceId": api.ws}
    response = httpx.post(url, json=body)
    assert_error(response, 401, "unauthorized")
    assert response.headers["www-authenticate"] == "Bearer"
    assert_error(httpx.post(url, json=body, headers={"Authorization": "Bearer cp_nope"}), 401, "unauthorized")
    assert_error(httpx.post(url, json={"limit": "junk"}), 401, "unauthorized")
    assert_error(api.post(V3, {"workspaceId": other.ws}), 404, "workspace_not_found")
    assert_error(api.post(V3, {"workspaceId": 10_000_000}), 404, "workspace_not_found")


# --- bad input ------------------------------------------------------------------


BAD_BODIES: list[tuple[Any, str]] = [
    ({"workspaceId": "1"}, "workspaceId"),
    ({"limit": 0}, "limit"),
    ({"limit": 1001}, "limit"),
    ({"limit": "5"}, "limit"),
    ({"limit": 5.5}, "limit"),
    ({"sort_order": "newest"}, "sort_order"),
    ({"include_total": "yes"}, "include_total"),
    ({"skip": -1}, "skip"),
    ({"filter_criteria": []}, "filter_criteria"),
    ({"filter_criteria": {"duration_ms": {"op": "gt", "value": 1}}}, "filter_criteria.duration_ms"),
    ({"filter_criteria": {"agent": []}}, "filter_criteria.agent"),
    ({"filter_criteria": {"agent": [{"version": [1]}]}}, "filter_criteria.agent[0].agent_id"),
    ({"filter_criteria": {"agent": [{"agent_id": "a", "version": ["1"]}]}}, "filter_criteria.agent[0].version[0]"),
    ({"filter_criteria": {"agent": [{"agent_id": "a", "version": [0]}]}}, "filter_criteria.agent[0].version[0]"),
    ({"filter_criteria": {"agent": [{"agent_id": "a", "version": [1.5]}]}}, "filter_criteria.agent[0].version[0]"),
    ({"filter_criteria": {"agent": [{"agent_id": "a", "version": [True]}]}}, "filter_criteria.agent[0].version[0]"),
    ({"filter_criteria": {"chat_id": "chat_x"}}, "filter_criteria.chat_id"),
    ({"filter_criteria": {"chat_id": {"op": "like", "value": "x"}}}, "filter_criteria.chat_id.op"),
    ({"filter_criteria": {"chat_id": {"value": "x"}}}, "filter_criteria.chat_id.op"),
    ({"filter_criteria": {"chat_id": {"op": "gt", "value": "x"}}}, "filter_criteria.chat_id.op"),
    ({"filter_criteria": {"chat_id": {"op": "eq", "type": "number", "value": "x"}}}, "filter_criteria.chat_id.type"),
    ({"filter_criteria": {"chat_id": {"op": "in", "type": "string", "value": ["x"]}}}, "filter_criteria.chat_id.op"),
    ({"filter_criteria": {"chat_id": {"op": "eq", "value": 5}}}, "filter_criteria.chat_id.value"),
    ({"filter_criteria": {"chat_id": {"op": "eq"}}}, "filter_criteria.chat_id.value"),
    ({"filter_criteria": {"chat_id": {"op": "in", "value": []}}}, "filter_criteria.chat_id.value"),
    ({"filter_criteria": {"chat_id": {"op": "eq", "value": "x", "extra": 1}}}, "filter_criteria.chat_id.extra"),
    ({"filter_criteria": {"chat_status": {"op": "in", "value": ["closed"]}}}, "filter_criteria.chat_status.value[0]"),
    ({"filter_criteria": {"chat_status": {"op": "in", "value": "ended"}}}, "filter_criteria.chat_status.value"),
    ({"filter_criteria": {"chat_status": {"op": "eq", "value": "ended"}}}, "filter_criteria.chat_status.op"),
    ({"filter_criteria": {"chat_type": {"op": "in", "value": ["phone_call"]}}}, "filter_criteria.chat_type.value[0]"),
    ({"filter_criteria": {"user_sentiment": {"op": "in", "value": ["positive"]}}},
     "filter_criteria.user_sentiment.value[0]"),
    ({"filter_criteria": {"chat_successful": {"op": "eq", "value": "true"}}}, "filter_criteria.chat_successful.value"),
    ({"filter_criteria": {"chat_successful": {"op": "ne", "value": True}}}, "filter_criteria.chat_successful.op"),
    ({"filter_criteria": {"start_timestamp": {"op": "bt", "value": [1]}}}, "filter_criteria.start_timestamp.value"),
    ({"filter_criteria": {"start_timestamp": {"op": "bt", "value": [1, 2, 3]}}},
     "filter_criteria.start_timestamp.value"),
    ({"filter_criteria": {"start_timestamp": {"op": "bt", "value": 1}}}, "filter_criteria.start_timestamp.value"),
    ({"filter_criteria": {"start_timestamp": {"op": "bt", "value": [2, 1]}}}, "filter_criteria.start_timestamp.value"),
    ({"filter_criteria": {"start_timestamp": {"op": "gt", "value": "2026-01-01"}}},
     "filter_criteria.start_timestamp.value"),
    ({"filter_criteria": {"start_timestamp": {"op": "gt", "value": -1}}}, "filter_criteria.start_timestamp.value"),
    ({"filter_criteria": {"start_timestamp": {"op": "gt", "value": 1e20}}}, "filter_criteria.start_timestamp.value"),
    ({"filter_criteria": {"start_timestamp": {"op": "pr"}}}, "filter_criteria.start_timestamp.op"),
    ({"filter_criteria": {"end_timestamp": {"op": "bt", "value": [1, "2"]}}}, "filter_criteria.end_timestamp.value[1]"),
    ({"filter_criteria": {"end_timestamp": {"op": "np", "value": 1}}}, "filter_criteria.end_timestamp.value"),
    ({"filter_criteria": {"combined_cost": {"op": "gt", "value": True}}}, "filter_criteria.combined_cost.value"),
    ({"filter_criteria": {"combined_cost": {"op": "sw", "value": "1"}}}, "filter_criteria.combined_cost.op"),
    ({"filter_criteria": {"combined_cost": {"op": "bt", "type": "number", "value": [1, 2]}}},
     "filter_criteria.combined_cost.op"),
    ({"filter_criteria": {"custom_attributes": {"key": "a", "op": "pr"}}}, "filter_criteria.custom_attributes"),
    ({"filter_criteria": {"custom_attributes": [{"op": "pr"}]}}, "filter_criteria.custom_attributes[0].key"),
    ({"filter_criteria": {"custom_attributes": [{"key": "", "op": "pr"}]}}, "filter_criteria.custom_attributes[0].key"),
    ({"filter_criteria": {"custom_attributes": [{"key": "a", "op": "pr"}, {"key": "a", "op": "xx", "value": 1}]}},
     "filter_criteria.custom_attributes[1].op"),
    ({"filter_criteria": {"custom_attributes": [{"key": "a", "op": "eq", "value": None}]}},
     "filter_criteria.custom_attributes[0].type"),
    ({"filter_criteria": {"custom_attributes": [{"key": "a", "op": "eq", "value": [1]}]}},
     "filter_criteria.custom_attributes[0].type"),
    ({"filter_criteria": {"custom_attributes": [{"key": "a", "op": "ne", "value": True}]}},
     "filter_criteria.custom_attributes[0].op"),
    ({"filter_criteria": {"custom_attributes": [{"key": "a", "op": "gt", "type": "string", "value": "1"}]}},
     "filter_criteria.custom_attributes[0].op"),
    ({"filter_criteria": {"custom_attributes": [{"key": "a", "op": "eq", "type": "text", "value": "1"}]}},
     "filter_criteria.custom_attributes[0].type"),
    ({"filter_criteria": {"custom_attributes": [{"key": "a", "op": "pr", "value": "1"}]}},
     "filter_criteria.custom_attributes[0].value"),
    ({"filter_criteria": {"custom_analysis_data": [{"key": "a", "op": "bt", "value": [1]}]}},
     "filter_criteria.custom_analysis_data[0].value"),
    ({"filter_criteria": {"custom_analysis_data": [{"key": "a", "op": "gt", "value": "1"}]}},
     "filter_criteria.custom_analysis_data[0].value"),
    ({"filter_criteria": {"custom_analysis_data": [{"key": "a", "op": "in", "value": []}]}},
     "filter_criteria.custom_analysis_data[0].value"),
    # Beyond a 32-bit integer (found by schemathesis: a 500 on PostgreSQL).
    ({"filter_criteria": {"agent": [{"agent_id": "a", "version": [2**31]}]}}, "filter_criteria.agent[0].version[0]"),
    # PostgreSQL text cannot hold U+0000: refused on both backends, never a 500.
    ({"filter_criteria": {"chat_id": {"op": "eq", "value": "chat_\u0000"}}}, "filter_criteria.chat_id.value"),
    ({"filter_criteria": {"chat_id": {"op": "in", "value": ["a", "\u0000"]}}}, "filter_criteria.chat_id.value[1]"),
    ({"filter_criteria": {"agent": [{"agent_id": "a\u0000"}]}}, "filter_criteria.agent[0].agent_id"),
    ({"filter_criteria": {"custom_attributes": [{"key": "\u0000", "op": "pr"}]}},
     "filter_criteria.custom_attributes[0].key"),
    ({"filter_criteria": {"custom_analysis_data": [{"key": "k", "op": "co", "value": "\u0000"}]}},
     "filter_criteria.custom_analysis_data[0].value"),
    # Nor can either take a lone surrogate (JSON allows "\ud800").
    ({"filter_criteria": {"chat_id": {"op": "eq", "value": "a\ud800"}}}, "filter_criteria.chat_id.value"),
    ({"filter_criteria": {"custom_attributes": [{"key": "\udfff", "op": "pr"}]}},
     "filter_criteria.custom_attributes[0].key"),
]


@pytest.mark.parametrize(("body", "field"), BAD_BODIES, ids=[f for _, f in BAD_BODIES])
def test_bad_bodies_are_422_naming_the_field(api: Api, body: dict[str, Any], field: str) -> None:
    # json.dumps escapes to ASCII, so a lone surrogate travels as "\ud800" as any client may send it.
    content = json.dumps({"workspaceId": api.ws, **body}).encode()
    response = api.http.post(V3, content=content, headers={"content-type": "application/json"})
    assert_error(response, 422, "validation_error", field)


def test_the_largest_filter_allowed_runs(api: Api) -> None:
    """Every list at its maximum size: within both databases' bound-parameter limits."""
    chat = make_chat(api)
    agents = [{"agent_id": chat["agentId"], "version": list(range(1, 101))}]
    agents += [{"agent_id": f"chat_agent_{i:026d}", "version": list(range(1, 101))} for i in range(99)]
    many = [key_filter(f"k{i}", "in", [f"v{j}" for j in range(100)]) for i in range(20)]
    criteria = {
        "agent": agents,
        "chat_id": {"op": "in", "value": [chat["chatId"]] + [f"chat_{i:026d}" for i in range(999)]},
        "custom_attributes": many,
        "custom_analysis_data": many,
    }
    body = listing(api, filter_criteria=criteria, include_total=True)
    assert body["items"] == [] and body["total"] == 0
    criteria["custom_attributes"] = criteria["custom_analysis_data"] = [key_filter(f"k{i}", "np") for i in range(20)]
    body = listing(api, filter_criteria=criteria, include_total=True)
    assert [c["chatId"] for c in body["items"]] == [chat["chatId"]] and body["total"] == 1
    too_many = [
        ({"chat_id": {"op": "in", "value": ["x"] * 1001}}, "filter_criteria.chat_id.value"),
        ({"custom_attributes": [key_filter("k", "np")] * 21}, "filter_criteria.custom_attributes"),
        ({"custom_analysis_data": [key_filter("k", "in", ["v"] * 101)]}, "filter_criteria.custom_analysis_data[0].value"),
        ({"agent": [{"agent_id": "a"}] * 101}, "filter_criteria.agent"),
        ({"agent": [{"agent_id": "a", "version": [1] * 101}]}, "filter_criteria.agent[0].version"),
    ]
    for criteria, field_name in too_many:
        assert_error(api.post(V3, {"filter_criteria": criteria}), 422, "validation_error", field_name)


def test_bodies_that_are_not_objects_are_422(api: Api) -> None:
    headers = {"content-type": "application/json"}
    for junk in (b"{", b"[]", b'"text"', b"null", b'{"workspaceId": 1, "limit": NaN}'):
        assert_error(api.http.post(V3, content=junk, headers=headers), 422, "validation_error")
    nan = api.http.post(V3, content=f'{{"workspaceId": {api.ws}, "filter_criteria": {{"combined_cost": '
                        '{"op": "gt", "value": NaN}}}'.encode(), headers=headers)
    # NaN is not JSON: refused at the edge (limits.InputGuard), for the whole body.
    assert "NaN" in assert_error(nan, 422, "validation_error", "body")["message"]


def test_oversized_body_is_413(api: Api) -> None:
    limit = api.backend.settings.server.max_body_bytes
    body = {"workspaceId": api.ws, "filter_criteria": {"chat_id": {"op": "eq", "value": "x" * (limit + 1)}}}
    assert_error(api.http.post(V3, json=body), 413, "payload_too_large")


def test_openapi_documents_the_route_and_its_filter_shapes(api: Api) -> None:
    spec = httpx.get(f"{api.backend.url}/openapi.json").json()
    operation = spec["paths"]["/v3/list-chats"]["post"]
    assert "Chats" in operation["tags"]
    schemas = spec["components"]["schemas"]
    criteria = schemas["ChatFilterCriteria"]["properties"]
    assert set(criteria) == {
        "agent", "chat_id", "chat_status", "chat_type", "chat_successful", "user_sentiment",
        "start_timestamp", "end_timestamp", "combined_cost", "custom_attributes", "custom_analysis_data",
    }
    assert schemas["ChatRangeFilter"]["properties"]["op"]["const"] == "bt"
    assert set(schemas["ChatKeyStringFilter"]["properties"]["op"]["enum"]) == {"eq", "ne", "sw", "ew", "co"}
    assert schemas["ListChatsV3Response"]["required"] == ["items", "has_more", "pagination_key"]
