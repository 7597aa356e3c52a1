"""Schemathesis against the real app's own /openapi.json, on both databases.

Every operation of the document gets generated requests, valid and invalid
ones (schemathesis' positive and negative modes), with a valid key. The
checks: no 5xx, ever, and every response is one the document describes: its
status code, its content type and its body's schema.

A request is only worth sending if it reaches the code behind the route, so
most name real things: the tenant starts with LLMs, agents, chats (ongoing
and ended), phone numbers and webhook deliveries, and schema hooks put their
ids into the generated paths, queries and bodies, and the tenant's
``workspaceId`` everywhere. Operations that use things up (delete, end) get
ids of their own, so the rest of the run still finds live ones.
``test_the_run_reached_real_resources`` then checks that the run was as big
as intended and that every operation succeeded some of the time.

Schemathesis is driven through ``APIOperation.as_strategy`` and Hypothesis,
not its pytest plugin: the plugin's ``from_fixture`` (the only way to load a
schema from a server that a fixture starts) does not run on pytest 9.2
(schemathesis 4.32 reads ``request.node._nodeid``, which pytest 9.2 removed).

The server runs without a job worker: generated agents carry generated
webhook URLs, generated numbers generated Twilio credentials, and this test
must not send webhooks or texts to anyone.
"""

from __future__ import annotations

import os
from collections import Counter, defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode

from chatplane.app import create_app
from chatplane.settings import JobSettings, Settings
from chatplane.testing import ScriptedModel
from tests.conftest import BACKENDS, SCRIPTED, Api, Backend, scripted_providers, served, tenant

pytestmark = pytest.mark.reliability

# Requests per operation (fewer where there are not that many different
# ones). Most are valid: invalid ones mostly stop at validation (a 422), and
# cost four times as much to generate. The environment variable can raise
# it; the run must still make MIN_REQUESTS per database.
POSITIVE_EXAMPLES = int(os.environ.get("CHATPLANE_SCHEMATHESIS_EXAMPLES", 64))
NEGATIVE_EXAMPLES = POSITIVE_EXAMPLES // 4
MIN_REQUESTS = 2_500
CHECKS = ["not_a_server_error", "status_code_conformance", "content_type_conformance", "response_schema_conformance"]
KEEP = None  # among real ids: keep the generated value instead (an unknown id)


@dataclass
class World:
    """The tenant under test, the real things its requests name, and what they got."""

    backend: Backend
    api: Api
    ids: dict[str, list[str]]  # parameter name (llm_id, chat_id, …) -> real ids
    # "METHOD /path" -> parameter name -> the ids that operation names instead
    # (what it may delete or end, or the chats in the state it needs).
    ids_of_operation: dict[str, dict[str, list[str]]]
    schema: schemathesis.BaseSchema | None = None
    session: requests.Session = field(default_factory=requests.Session)
    statuses: Counter = field(default_factory=Counter)  # ("METHOD /path", status) -> responses

    def choices(self, operation: str, name: str) -> list[Any]:
        """What ``name`` may be in a request to ``operation``: mostly real ids, sometimes ``KEEP``."""
        ids = self.ids_of_operation.get(operation, {}).get(name, self.ids.get(name, []))
        return [*ids, KEEP]


def _created(response: httpx.Response) -> dict[str, Any]:
    assert response.status_code == 201, response.text
    return response.json()


def build_world(backend: Backend, api: Api) -> World:
    def llm(**fields: Any) -> str:
        return _created(api.post("/api/llms", {"display_name": "fuzz", "model": SCRIPTED, **fields}))["llm_id"]

    def agent(llm_id: str, **fields: Any) -> str:
        body = {"agent_name": "fuzz", "response_engine": {"type": "uponai-llm", "llm_id": llm_id}, **fields}
        return _created(api.post("/api/chat-agents", body))["agent_id"]

    def chats(agent_id: str, count: int, *, ended: bool = False) -> list[str]:
        ids = [_created(api.post("/api/chats", {"agent_id": agent_id}))["chatId"] for _ in range(count)]
        for chat_id in ids if ended else []:
            assert api.post(f"/api/chats/{chat_id}/completions", {"content": "hello"}).status_code == 201
            assert api.post(f"/api/chats/{chat_id}/end").status_code == 204
        return ids

    def number(phone: str, agent_id: str) -> str:
        body = {
            "phone_number": phone, "twilio_account_sid": "AC" + "0" * 32, "twilio_auth_token": "x" * 32,
            "inbound_sms_agents": [{"agent_id": agent_id, "weight": 1}],
            "outbound_sms_agents": [{"agent_id": agent_id, "weight": 1}],
        }
        return _created(api.post("/api/phone-numbers", body))["phone_number"]

    main = llm(begin_message="Hi!", general_prompt="You help {{customer_name}}.")
    staged = llm(
        general_tools=[{"type": "end_chat"}],
        states=[{"name": "a", "edges": [{"destination_state_name": "b", "description": "on"}]}, {"name": "b"}],
        starting_state="a",
    )
    # Its chats leave webhook deliveries to read and redeliver (never sent: no worker runs).
    hooked = agent(main, webhook_url="https://example.com/hooks", webhook_events=["chat_started", "chat_ended"])
    published = agent(staged)
    assert api.post(f"/api/chat-agents/{published}/publish").status_code == 200
    ongoing = chats(hooked, 3) + chats(published, 1)
    ended = chats(hooked, 2, ended=True)
    numbers = [number("+15550001000", hooked), number("+15550001001", published)]
    # Texting first needs a begin message: an agent and number of its own,
    # out of reach of the generated edits.
    texter = agent(llm(begin_message="Hi, by text!"))
    deliveries = [d["id"] for d in api.get("/api/webhook-deliveries").json()["data"]]
    assert deliveries
    return World(
        backend=backend,
        api=api,
        ids={
            "workspace_id": [str(api.ws)],
            "llm_id": [main, staged],
            "agent_id": [hooked, published],
            "chat_id": ongoing + ended,
            "phone_number": numbers,
            "delivery_id": deliveries,
        },
        ids_of_operation={
            "DELETE /api/llms/{llm_id}": {"llm_id": [main, *(llm() for _ in range(4))]},  # main is in use: 409
            "DELETE /api/chat-agents/{agent_id}": {"agent_id": [agent(main) for _ in range(4)]},
            "DELETE /api/chats/{chat_id}": {"chat_id": chats(hooked, 8)},
            "POST /api/chats/{chat_id}/end": {"chat_id": chats(hooked, 8)},
            "POST /api/chats/{chat_id}/analysis": {"chat_id": ended},
            "POST /api/chats/{chat_id}/completions": {"chat_id": ongoing},
            "DELETE /api/phone-numbers/{phone_number}": {
                "phone_number": [number(f"+1555000200{i}", hooked) for i in range(3)],
            },
            "POST /api/chats/sms": {"phone_number": [number("+15550003000", texter)], "agent_id": [texter]},
        },
    )


@pytest.fixture(scope="module", params=BACKENDS)
def world(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, scripted_model: ScriptedModel
) -> Iterator[World]:
    scripted_model.reset()  # its default reply answers every turn
    with served(
        request.param,
        tmp_path_factory.mktemp(f"schemathesis-{request.param}"),
        providers=scripted_providers(scripted_model),
        default_model=SCRIPTED,  # an LLM without a model must not load the embedded one
        jobs=JobSettings(in_server=False),
    ) as backend, tenant(backend, "fuzz") as api:
        world = build_world(backend, api)
        config = schemathesis.Config.from_dict({
            "headers": {"Authorization": f"Bearer {api.key}"},
            "checks": {"enabled": False, **{name: {"enabled": True} for name in CHECKS}},
        })
        world.schema = schemathesis.openapi.from_url(f"{backend.url}/openapi.json", config=config)
        _aim_at_real_things(world.schema, world)
        with world.session:
            yield world


def _aim_at_real_things(schema: schemathesis.BaseSchema, world: World) -> None:
    """Schema hooks: the tenant's workspace everywhere, real ids in most requests."""

    def name_or_keep(context: schemathesis.HookContext, name: str, generated: Any) -> st.SearchStrategy[Any]:
        operation = f"{context.operation.method.upper()} {context.operation.path}"
        choices = world.choices(operation, name)
        return st.sampled_from(choices).map(lambda value: generated if value is KEEP else value)

    def aimed(context: schemathesis.HookContext, values: dict[str, Any], names: dict[str, str]) -> st.SearchStrategy:
        """``values`` with ``workspaceId`` set, and each key of ``names`` (key -> id kind) drawn."""
        values = {**values, "workspaceId": world.api.ws} if "workspaceId" in values else values
        return st.fixed_dictionaries({
            key: name_or_keep(context, names[key], value) if key in names else st.just(value)
            for key, value in values.items()
        })

    @schema.hook
    def flatmap_path_parameters(context, path_parameters):  # type: ignore[no-untyped-def]
        if not path_parameters:
            return st.just(path_parameters)
        return aimed(context, path_parameters, {name: name for name in path_parameters})

    @schema.hook
    def flatmap_query(context, query):  # type: ignore[no-untyped-def]
        if not isinstance(query, dict):
            return st.just(query)
        return aimed(context, query, {"agentId": "agent_id", "chatId": "chat_id"})

    @schema.hook
    def flatmap_body(context, body):  # type: ignore[no-untyped-def]
        if not isinstance(body, dict):
            return st.just(body)
        names = {"agent_id": "agent_id", "override_agent_id": "agent_id", "from_number": "phone_number"}
        strategy = aimed(context, body, names)
        engine = body.get("response_engine")
        if isinstance(engine, dict) and "llm_id" in engine:
            llm = name_or_keep(context, "llm_id", engine["llm_id"])
            strategy = st.tuples(strategy, llm).map(
                lambda drawn: {**drawn[0], "response_engine": {**engine, "llm_id": drawn[1]}}
            )
        return strategy

    @schema.hook
    def flatmap_headers(context, headers):  # type: ignore[no-untyped-def]
        if not context.operation.path.endswith("/completions"):
            return st.just(headers)
        # Half the turns stream: the same statuses, in another content type.
        return st.sampled_from(["application/json", "text/event-stream"]).map(
            lambda accept: {**(headers or {}), "Accept": accept}
        )


def _operations() -> list[str]:
    spec = create_app(Settings()).openapi()
    return [f"{method.upper()} {path}" for path, item in spec["paths"].items() for method in item]


OPERATIONS = _operations()


@pytest.mark.parametrize("operation", OPERATIONS)
def test_operation(world: World, operation: str) -> None:
    method, path = operation.split(" ", 1)
    schema_operation = world.schema[path][method]
    budgets = {GenerationMode.POSITIVE: POSITIVE_EXAMPLES, GenerationMode.NEGATIVE: NEGATIVE_EXAMPLES}
    for mode, examples in budgets.items():

        @settings(
            max_examples=examples, deadline=None, database=None, print_blob=True,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
        )
        @given(case=schema_operation.as_strategy(mode))
        def send(case: schemathesis.Case) -> None:
            response = case.call_and_validate(session=world.session)
            world.statuses[(operation, response.status_code)] += 1

        try:
            send()
        except Unsatisfiable:
            # Only when no request can be invalid: no parameters or body, or
            # only a path parameter that takes any string.
            assert mode is GenerationMode.NEGATIVE
            assert not schema_operation.body and not any(schema_operation.query)


def test_the_run_reached_real_resources(world: World) -> None:
    """After every test_operation on this database: the run was as big as
    intended, and every operation answered success some of the time, so
    requests got past the lookups and the validation to the work."""
    by_operation: dict[str, Counter] = defaultdict(Counter)
    for (operation, status), count in world.statuses.items():
        by_operation[operation][status] += count
    total = sum(world.statuses.values())
    print(f"\n{world.backend.kind}: {total} requests")
    for operation, statuses in by_operation.items():
        print(f"  {operation}: {dict(sorted(statuses.items()))}")
    assert total >= MIN_REQUESTS
    assert set(by_operation) == set(OPERATIONS)
    never_succeeded = [op for op, statuses in by_operation.items() if not any(200 <= s < 300 for s in statuses)]
    # Twilio's webhook takes only what Twilio signed (tests/test_sms.py signs it).
    assert never_succeeded == ["POST /webhooks/twilio/sms"]
