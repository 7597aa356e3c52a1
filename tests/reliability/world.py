"""The tenant that the generated-request tests send their requests to.

Real LLMs, agents, chats (ongoing and ended), phone numbers, knowledge bases and webhook
deliveries, and schemathesis schema hooks that put their ids into generated
paths, queries and bodies (and the tenant's ``workspaceId`` everywhere), so
that a generated request reaches the code behind its route. Operations that
use things up (delete, end) get ids of their own, so the rest of a run still
finds live ones. Used by ``test_schemathesis`` and ``test_fuzz_text``.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import requests
import schemathesis
from hypothesis import strategies as st

from chatplane.app import create_app
from chatplane.retell.common import WORKSPACE_HEADER
from chatplane.settings import JobSettings, Settings
from chatplane.testing import ScriptedModel
from tests.conftest import SCRIPTED, Api, Backend, scripted_providers, served, tenant

KEEP = None  # among real ids: keep the generated value instead (an unknown id)


@dataclass
class World:
    """The tenant under test, the real things its requests name, and what they got."""

    backend: Backend
    api: Api
    ids: dict[str, list[Any]]  # parameter name (llm_id, chat_id, …) -> real ids
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

    def versioned(*, draft: bool) -> str:
        """An agent whose version 1 is published, and (``draft``) version 2 a draft."""
        agent_id = agent(main)
        assert api.post(f"/api/chat-agents/{agent_id}/publish").status_code == 200
        if draft:
            assert api.patch(f"/api/chat-agents/{agent_id}", {"agent_name": "fuzz draft"}).status_code == 200
        return agent_id

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

    def knowledge_base() -> tuple[str, str]:
        made = _created(api.post("/api/knowledge-bases", {
            "knowledge_base_name": "fuzz", "knowledge_base_texts": [{"title": "Refunds", "text": "Paid in 14 days."}],
        }))
        return made["knowledge_base_id"], made["knowledge_base_sources"][0]["source_id"]

    kbs = [knowledge_base() for _ in range(2)]
    doomed = [knowledge_base() for _ in range(3)]  # their sources are deleted
    doomed_by_retell = [knowledge_base() for _ in range(3)]
    page = _created(api.post("/api/knowledge-bases", {  # never fetched: no worker runs
        "knowledge_base_name": "fuzz", "knowledge_base_urls": ["https://example.com/faq"],
    }))
    page_source = (page["knowledge_base_id"], page["knowledge_base_sources"][0]["source_id"])
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
            "version": [1],
            "knowledge_base_id": [kb for kb, _ in kbs],
            "source_id": [source for _, source in kbs],
        },
        ids_of_operation={
            "DELETE /api/llms/{llm_id}": {"llm_id": [main, *(llm() for _ in range(4))]},  # main is in use: 409
            "DELETE /api/chat-agents/{agent_id}": {"agent_id": [agent(main) for _ in range(4)]},
            "DELETE /api/chats/{chat_id}": {"chat_id": chats(hooked, 8)},
            "POST /api/knowledge-bases/{knowledge_base_id}/sources/{source_id}/refresh": {
                "knowledge_base_id": [page_source[0]], "source_id": [page_source[1]],
            },
            "DELETE /api/knowledge-bases/{knowledge_base_id}/sources/{source_id}": {
                "knowledge_base_id": [kb for kb, _ in doomed], "source_id": [source for _, source in doomed],
            },
            "DELETE /api/knowledge-bases/{knowledge_base_id}": {
                "knowledge_base_id": [knowledge_base()[0] for _ in range(3)],
            },
            "POST /api/chats/{chat_id}/end": {"chat_id": chats(hooked, 8)},
            "POST /api/chats/{chat_id}/analysis": {"chat_id": ended},
            "POST /api/chats/{chat_id}/completions": {"chat_id": ongoing},
            "DELETE /api/phone-numbers/{phone_number}": {
                "phone_number": [number(f"+1555000200{i}", hooked) for i in range(3)],
            },
            "POST /api/chats/sms": {"phone_number": [number("+15550003000", texter)], "agent_id": [texter]},
            # The Retell routes: the same resources under Retell's names.
            "DELETE /delete-retell-llm/{llm_id}": {"llm_id": [main, *(llm() for _ in range(4))]},
            "DELETE /delete-chat-agent/{agent_id}": {"agent_id": [agent(main) for _ in range(4)]},
            "DELETE /delete-knowledge-base-source/{knowledge_base_id}/source/{source_id}": {
                "knowledge_base_id": [kb for kb, _ in doomed_by_retell],
                "source_id": [source for _, source in doomed_by_retell],
            },
            "DELETE /delete-chat/{chat_id}": {"chat_id": chats(hooked, 8)},
            "PATCH /end-chat/{chat_id}": {"chat_id": chats(hooked, 8)},
            "PUT /rerun-chat-analysis/{chat_id}": {"chat_id": ended},
            "POST /create-chat-completion": {"chat_id": ongoing},
            "DELETE /delete-phone-number/{phone_number}": {
                "phone_number": [number(f"+1555000400{i}", hooked) for i in range(3)],
            },
            "POST /create-sms-chat": {"phone_number": [number("+15550005000", texter)], "agent_id": [texter]},
            "POST /create-agent-version/{agent_id}": {"agent_id": [versioned(draft=False) for _ in range(4)]},
            "DELETE /delete-agent-version/{agent_id}": {
                "agent_id": [versioned(draft=True) for _ in range(4)], "version": [2],
            },
        },
    )


def aim_at_real_things(schema: schemathesis.BaseSchema, world: World) -> None:
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
        return aimed(context, query, {"agentId": "agent_id", "chatId": "chat_id", "version": "version"})

    @schema.hook
    def flatmap_body(context, body):  # type: ignore[no-untyped-def]
        if not isinstance(body, dict):
            return st.just(body)
        names = {"agent_id": "agent_id", "override_agent_id": "agent_id", "from_number": "phone_number",
                 "chat_id": "chat_id", "base_version": "version"}
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
        if headers and WORKSPACE_HEADER in headers:  # Retell's routes: the tenant's workspace, named
            headers = {**headers, WORKSPACE_HEADER: str(world.api.ws)}
        if not context.operation.path.endswith("/completions"):
            return st.just(headers)
        # Half the turns stream: the same statuses, in another content type.
        return st.sampled_from(["application/json", "text/event-stream"]).map(
            lambda accept: {**(headers or {}), "Accept": accept}
        )


def operations() -> list[str]:
    spec = create_app(Settings()).openapi()
    return [f"{method.upper()} {path}" for path, item in spec["paths"].items() for method in item]


OPERATIONS = operations()


@contextmanager
def served_world(kind: str, tmp: Path, scripted_model: ScriptedModel, checks: list[str],
                 generation: dict[str, Any] | None = None) -> Iterator[World]:
    """A server of its own on a fresh ``kind`` database, without a job worker
    (generated agents carry generated webhook URLs, generated numbers
    generated Twilio credentials: nothing may be sent to anyone), the tenant
    built, and its OpenAPI document loaded with the schema hooks, ``checks``
    and schemathesis' ``generation`` settings."""
    scripted_model.reset()  # its default reply answers every turn
    with served(
        kind, tmp,
        providers=scripted_providers(scripted_model),
        default_model=SCRIPTED,  # an LLM without a model must not load the embedded one
        jobs=JobSettings(in_server=False),
    ) as backend, tenant(backend, "fuzz") as api:
        world = build_world(backend, api)
        config = schemathesis.Config.from_dict({
            "headers": {"Authorization": f"Bearer {api.key}"},
            "checks": {"enabled": False, **{name: {"enabled": True} for name in checks}},
            **({"generation": generation} if generation else {}),
        })
        world.schema = schemathesis.openapi.from_url(f"{backend.url}/openapi.json", config=config)
        aim_at_real_things(world.schema, world)
        with world.session:
            yield world
