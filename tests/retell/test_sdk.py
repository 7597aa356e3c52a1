"""The unchanged official Python SDK (``retell-sdk``, pinned in pyproject.toml)
against chatplane's Retell routes, sync and async, on both databases.

Every answer is also parsed strictly against the SDK's own types
(``strict``): no field the SDK does not know, every required one there, every
Literal one of its values, except the fields listed in docs/retell.md whose
values are hosted-only (the model names).
"""

from __future__ import annotations

import asyncio
import json
import uuid
from typing import Any

import httpx
import pytest
from pydantic import BaseModel
from retell import (
    AsyncRetell,
    AuthenticationError,
    BadRequestError,
    ConflictError,
    NotFoundError,
    Retell,
    UnprocessableEntityError,
)
from retell.types import (
    ChatAgentResponse,
    ChatResponse,
    LlmResponse,
)
from retell.types.agent_list_versions_response import AgentListVersionsResponse
from retell.types.chat_agent_list_response import ChatAgentListResponse
from retell.types.chat_create_chat_completion_response import ChatCreateChatCompletionResponse
from retell.types.chat_list_response import ChatListResponse
from retell.types.llm_list_response import LlmListResponse

from chatplane import auth
from chatplane.testing import Reply
from tests.conftest import SCRIPTED, Api, ScriptedModel
from tests.test_lifecycle import analysis_json, wait_for

END_CALL = {"type": "end_call", "name": "end_call", "description": "End the chat when they are done."}
REMEMBER = {
    "type": "extract_dynamic_variable", "name": "remember", "description": "Keep their city.",
    "variables": [{"type": "string", "name": "city", "description": "Their city."}],
}
# Fields the SDK types as a Literal of the hosted platform's values: a
# self-hosted server answers with its own (docs/retell.md).
HOSTED = {
    LlmResponse: ("model",), LlmListResponse: ("items.*.model",),
    ChatAgentResponse: ("post_chat_analysis_model",),
}


def _drop(data: Any, path: list[str]) -> None:
    head, rest = path[0], path[1:]
    targets = (data if head == "*" else [data.get(head)]) if isinstance(data, (dict, list)) else []
    if not rest:
        if isinstance(data, dict):
            data.pop(head, None)
        return
    for target in targets:
        if target is not None:
            _drop(target, rest)


def strict(model: type[BaseModel], data: Any) -> BaseModel:
    """``data`` parsed as ``model`` (pydantic validation: types, Literals,
    required fields), with no field the SDK's types do not declare anywhere."""
    data = json.loads(json.dumps(data))
    for path in HOSTED.get(model, ()):
        _drop(data, path.split("."))
    parsed = model.model_validate(data)
    _no_extras(parsed, model.__name__)
    return parsed


def _no_extras(value: Any, where: str) -> None:
    if isinstance(value, BaseModel):
        extra = value.model_extra or {}
        assert not extra, f"{where}: fields the SDK does not know: {sorted(extra)}"
        for name in type(value).model_fields:
            _no_extras(getattr(value, name), f"{where}.{name}")
    elif isinstance(value, list):
        for i, item in enumerate(value):
            _no_extras(item, f"{where}[{i}]")
    elif isinstance(value, dict):
        for key, item in value.items():
            _no_extras(item, f"{where}.{key}")


def raw(response: Any, model: type[BaseModel]) -> Any:
    """A ``with_raw_response`` call: its JSON checked strictly, then parsed as the SDK does."""
    strict(model, response.http_response.json())
    return response.parse()


def client(api: Api, **kw: Any) -> Retell:
    return Retell(api_key=api.key, base_url=api.backend.url, max_retries=0, **kw)


def test_the_sdk_runs_a_chat_end_to_end(api: Api, model: ScriptedModel) -> None:
    retell = client(api)
    llm = raw(retell.llm.with_raw_response.create(
        general_prompt="You help {{name}}.", begin_message="Hi {{name}}!", model=SCRIPTED,
        general_tools=[END_CALL, REMEMBER], default_dynamic_variables={"name": "friend"},
        start_speaker="agent", model_high_priority=True,  # accepted, not used in chat
    ), LlmResponse)
    assert llm.llm_id.startswith("llm_") and llm.version == 1 and llm.is_published is False
    assert [tool.type for tool in llm.general_tools] == ["end_call", "extract_dynamic_variable"]
    assert raw(retell.llm.with_raw_response.retrieve(llm.llm_id), LlmResponse).general_prompt == "You help {{name}}."
    updated = raw(retell.llm.with_raw_response.update(llm.llm_id, general_prompt="You help {{name}} well."),
                  LlmResponse)
    assert updated.general_prompt == "You help {{name}} well." and updated.begin_message == "Hi {{name}}!"

    agent = raw(retell.chat_agent.with_raw_response.create(
        response_engine={"type": "retell-llm", "llm_id": llm.llm_id}, agent_name="Support",
        webhook_events=["chat_started"], timezone="Europe/Oslo", guardrail_config={},
    ), ChatAgentResponse)
    assert agent.agent_id.startswith("chat_agent_") and agent.response_engine.type == "retell-llm"
    assert agent.response_engine.llm_id == llm.llm_id and agent.timezone == "Europe/Oslo"
    renamed = raw(retell.chat_agent.with_raw_response.update(agent.agent_id, agent_name="Support desk"),
                  ChatAgentResponse)
    assert renamed.agent_name == "Support desk"
    retell.chat_agent.publish(agent.agent_id, version=renamed.version)
    published = raw(retell.chat_agent.with_raw_response.retrieve(agent.agent_id), ChatAgentResponse)
    assert published.is_published is True and published.response_engine.version == updated.version  # pinned

    chat = raw(retell.chat.with_raw_response.create(
        agent_id=agent.agent_id, retell_llm_dynamic_variables={"name": "Ada"}, metadata={"ticket": "T-1"},
    ), ChatResponse)
    assert chat.chat_status == "ongoing" and chat.chat_type == "api_chat" and chat.metadata == {"ticket": "T-1"}
    assert [(m.role, m.content) for m in chat.message_with_tool_calls] == [("agent", "Hi Ada!")]
    assert chat.start_timestamp > 1_700_000_000_000 and chat.end_timestamp is None

    model.push(Reply("", tool_calls=[{"id": "call_1", "type": "function",
                                      "function": {"name": "remember", "arguments": '{"city": "Oslo"}'}}]),
               Reply("Oslo it is."))
    answer = raw(retell.chat.with_raw_response.create_chat_completion(chat_id=chat.chat_id, content="Oslo"),
                 ChatCreateChatCompletionResponse)
    assert [m.role for m in answer.messages] == ["tool_call_invocation", "tool_call_result", "agent"]
    invocation, result, said = answer.messages
    assert invocation.name == "remember" and json.loads(invocation.arguments) == {"city": "Oslo"}
    assert result.tool_call_id == invocation.tool_call_id and result.successful is True
    assert said.content == "Oslo it is."
    assert model.requests[0]["messages"][0]["content"] == "You help Ada well."

    got = raw(retell.chat.with_raw_response.retrieve(chat.chat_id), ChatResponse)
    assert got.transcript == "Agent: Hi Ada!\nUser: Oslo\nAgent: Oslo it is.\n"
    assert got.collected_dynamic_variables == {"city": "Oslo"}
    assert [m.role for m in got.message_with_tool_calls] == [
        "agent", "user", "tool_call_invocation", "tool_call_result", "agent"]

    changed = raw(retell.chat.with_raw_response.update(chat.chat_id, metadata={"ticket": "T-2"},
                                                       custom_attributes={"tier": "gold"}), ChatResponse)
    assert changed.metadata == {"ticket": "T-2"} and changed.custom_attributes == {"tier": "gold"}

    assert retell.chat.end(chat.chat_id) is None
    ended = raw(retell.chat.with_raw_response.retrieve(chat.chat_id), ChatResponse)
    assert ended.chat_status == "ended" and ended.end_timestamp >= ended.start_timestamp
    assert ended.chat_cost.combined_cost > 0 and ended.chat_cost.product_costs  # priced when it ends
    with pytest.raises(ConflictError):
        retell.chat.create_chat_completion(chat_id=chat.chat_id, content="still there?")
    with pytest.raises(ConflictError):
        retell.chat.end(chat.chat_id)

    retell.chat.delete(chat.chat_id)
    with pytest.raises(NotFoundError):
        retell.chat.retrieve(chat.chat_id)
    with pytest.raises(ConflictError):  # the agent still uses it
        retell.llm.delete(llm.llm_id)
    retell.chat_agent.delete(agent.agent_id)
    retell.llm.delete(llm.llm_id)
    with pytest.raises(NotFoundError):
        retell.chat_agent.retrieve(agent.agent_id)
    with pytest.raises(NotFoundError):
        retell.llm.retrieve(llm.llm_id)


def test_lists_page_with_pagination_key_as_the_sdk_sends_it(api: Api, model: ScriptedModel) -> None:
    retell = client(api)
    llms = [retell.llm.create(model=SCRIPTED, general_prompt=f"llm {i}") for i in range(3)]
    pages, key = [], None
    while True:
        page = raw(retell.llm.with_raw_response.list(limit=2, **({"pagination_key": key} if key else {})),
                   LlmListResponse)
        pages.append([item.llm_id for item in page.items])
        if not page.has_more:
            break
        key = page.pagination_key
    assert pages == [[llms[2].llm_id, llms[1].llm_id], [llms[0].llm_id]]  # newest first

    agents = [retell.chat_agent.create(response_engine={"type": "retell-llm", "llm_id": llms[0].llm_id},
                                       agent_name=name) for name in ("Billing", "Sales desk", "Support")]
    listed = raw(retell.chat_agent.with_raw_response.list(limit=2, sort_order="ascending"), ChatAgentListResponse)
    assert [a.agent_id for a in listed.items] == [agents[0].agent_id, agents[1].agent_id] and listed.has_more
    rest = retell.chat_agent.list(limit=2, sort_order="ascending", pagination_key=listed.pagination_key)
    assert [a.agent_id for a in rest.items] == [agents[2].agent_id] and not rest.has_more
    assert {a.channel for a in listed.items} == {"chat"}
    found = retell.chat_agent.list(filter_criteria={"query": "DESK"})
    assert [a.agent_name for a in found.items] == ["Sales desk"]
    voice = retell.chat_agent.list(filter_criteria={"channel": {"op": "eq", "type": "string", "value": "voice"}})
    assert voice.items == [] and not voice.has_more

    chats = [retell.chat.create(agent_id=agents[0].agent_id) for _ in range(3)]
    retell.chat.end(chats[0].chat_id)
    ongoing = {"chat_status": {"op": "in", "type": "enum", "value": ["ongoing"]}}
    first = raw(retell.chat.with_raw_response.list(filter_criteria=ongoing, limit=1, include_total=True),
                ChatListResponse)
    assert first.total == 2 and first.has_more and first.items[0].chat_id == chats[2].chat_id
    second = retell.chat.list(filter_criteria=ongoing, limit=1, pagination_key=first.pagination_key)
    assert [c.chat_id for c in second.items] == [chats[1].chat_id] and not second.has_more
    skipped = retell.chat.list(limit=10, skip=1)
    assert [c.chat_id for c in skipped.items] == [chats[1].chat_id, chats[0].chat_id]
    with pytest.raises(UnprocessableEntityError):
        retell.chat.list(pagination_key="not-a-key")
    with pytest.raises(UnprocessableEntityError):
        retell.llm.list(pagination_key="not-a-key")


def test_the_sdk_s_exceptions(api: Api, other: Api) -> None:
    retell = client(api)
    with pytest.raises(AuthenticationError):
        Retell(api_key="key_wrong", base_url=api.backend.url, max_retries=0).llm.list()
    with pytest.raises(NotFoundError):
        retell.chat.retrieve("chat_01jzzzzzzzzzzzzzzzzzzzzzzz")
    theirs = client(other).llm.create(model=SCRIPTED)
    with pytest.raises(NotFoundError):  # another workspace's is not there at all
        retell.llm.retrieve(theirs.llm_id)
    with pytest.raises(UnprocessableEntityError) as bad:
        retell.llm.create(model_temperature=5)
    assert bad.value.body["error"]["field"] == "model_temperature"
    with pytest.raises(UnprocessableEntityError) as unknown:
        retell.llm.create(extra_body={"not_a_retell_field": 1})
    assert unknown.value.body["error"]["field"] == "not_a_retell_field"
    with pytest.raises(UnprocessableEntityError) as tool:
        retell.llm.create(general_tools=[{"type": "transfer_call", "name": "transfer"}])
    assert tool.value.body["error"]["field"].startswith("general_tools[0]")
    with pytest.raises(UnprocessableEntityError) as engine:
        retell.chat_agent.create(response_engine={"type": "custom-llm", "llm_websocket_url": "wss://x"})
    assert engine.value.body["error"]["field"] == "response_engine.type"
    with pytest.raises(UnprocessableEntityError):  # the LLM named is not this workspace's
        retell.chat_agent.create(response_engine={"type": "retell-llm", "llm_id": theirs.llm_id})
    with pytest.raises(UnprocessableEntityError):
        retell.chat.create(agent_id="chat_agent_x", agent_version="latest")
    with pytest.raises(UnprocessableEntityError):  # found by schemathesis: a digit to str.isdigit, a 500 in int()
        retell.chat.create(agent_id="chat_agent_x", agent_version="\u00b9")
    with pytest.raises(NotFoundError):
        retell.chat.create(agent_id="chat_agent_01jzzzzzzzzzzzzzzzzzzzzzzz")


def test_a_hosted_model_name_runs_on_the_server_s_default_model(api: Api) -> None:
    retell = client(api)
    llm = retell.llm.create(model="gpt-4.1")
    assert llm.model == api.backend.settings.default_model
    assert retell.llm.update(llm.llm_id, model=SCRIPTED).model == SCRIPTED
    agent = retell.chat_agent.create(response_engine={"type": "retell-llm", "llm_id": llm.llm_id},
                                     post_chat_analysis_model="claude-4.5-haiku")
    assert agent.post_chat_analysis_model == api.backend.settings.default_model


def test_a_key_granted_several_workspaces_names_one_in_a_header(api: Api, other: Api) -> None:
    async def grant(session):  # type: ignore[no-untyped-def]
        _, secret = await auth.create_key(session, workspace_ids=[api.ws, other.ws], name="both")
        return secret

    both = api.backend.run(grant)
    with pytest.raises(BadRequestError) as unsure:
        Retell(api_key=both, base_url=api.backend.url, max_retries=0).llm.list()
    assert unsure.value.body["error"]["code"] == "workspace_required"
    assert "X-Chatplane-Workspace" in unsure.value.body["error"]["message"]
    mine = Retell(api_key=both, base_url=api.backend.url, max_retries=0,
                  default_headers={"X-Chatplane-Workspace": str(api.ws)})
    made = mine.llm.create(model=SCRIPTED)
    assert client(api).llm.retrieve(made.llm_id).llm_id == made.llm_id
    with pytest.raises(NotFoundError):
        client(other).llm.retrieve(made.llm_id)
    stranger = Retell(api_key=api.key, base_url=api.backend.url, max_retries=0,
                      default_headers={"X-Chatplane-Workspace": str(other.ws)})
    with pytest.raises(NotFoundError):  # a workspace the key was not granted
        stranger.llm.list()


def test_the_async_client(api: Api, model: ScriptedModel) -> None:
    async def scenario() -> None:
        async with AsyncRetell(api_key=api.key, base_url=api.backend.url, max_retries=0) as retell:
            llm = await retell.llm.create(model=SCRIPTED, begin_message="Hello")
            agent = await retell.chat_agent.create(response_engine={"type": "retell-llm", "llm_id": llm.llm_id})
            chat = await retell.chat.create(agent_id=agent.agent_id)
            model.push(Reply("one"), Reply("two"))
            answers = await asyncio.gather(
                *(retell.chat.create_chat_completion(chat_id=chat.chat_id, content=text) for text in ("a", "b"))
            )
            assert sorted(a.messages[0].content for a in answers) == ["one", "two"]
            got = await retell.chat.retrieve(chat.chat_id)
            assert len(got.message_with_tool_calls) == 5  # one turn at a time: none lost
            listed = await retell.chat.list()
            assert [c.chat_id for c in listed.items] == [chat.chat_id]
            await retell.chat.end(chat.chat_id)
            with pytest.raises(ConflictError):
                await retell.chat.end(chat.chat_id)
            await retell.chat.delete(chat.chat_id)
            with pytest.raises(NotFoundError):
                await retell.chat.retrieve(chat.chat_id)

    asyncio.run(scenario())


def test_one_list_route_serves_both_shapes(api: Api) -> None:
    """``/v3/list-chats`` with ``workspaceId``: chatplane's items; without: Retell's."""
    retell = client(api)
    llm = retell.llm.create(model=SCRIPTED)
    agent = retell.chat_agent.create(response_engine={"type": "retell-llm", "llm_id": llm.llm_id})
    chat = retell.chat.create(agent_id=agent.agent_id)
    ours = api.post("/v3/list-chats", {}).json()["items"][0]
    assert ours["chatId"] == chat.chat_id and "chat_id" not in ours
    theirs = httpx.post(api.backend.url + "/v3/list-chats", json={},
                        headers={"Authorization": f"Bearer {api.key}"}).json()["items"][0]
    assert theirs["chat_id"] == chat.chat_id and "chatId" not in theirs


def test_agent_versions_as_the_sdk_makes_lists_and_deletes_them(api: Api) -> None:
    retell = client(api)
    llm = retell.llm.create(model=SCRIPTED)
    agent = retell.chat_agent.create(response_engine={"type": "retell-llm", "llm_id": llm.llm_id}, agent_name="v1")
    with pytest.raises(ConflictError):  # one draft at a time: version 1 is it
        retell.chat_agent.create_version(agent.agent_id, base_version=1)
    with pytest.raises(ConflictError):  # the only version
        retell.chat_agent.delete_version(agent.agent_id, version=1)
    retell.chat_agent.publish(agent.agent_id, version=1)
    retell.chat_agent.update(agent.agent_id, agent_name="v2")  # a published latest: version 2, a draft
    retell.chat_agent.publish(agent.agent_id, version=2)
    made = retell.chat_agent.create_version(agent.agent_id, base_version=1)
    strict(ChatAgentResponse, made.to_dict())
    assert made.version == 3 and made.agent_name == "v1" and made.is_published is False
    assert retell.chat_agent.retrieve(agent.agent_id).version == 3

    versions = raw(retell.agent.with_raw_response.list_versions(agent.agent_id, limit=2), AgentListVersionsResponse)
    assert [(v.version, v.is_published) for v in versions.items] == [(1, True), (2, True)] and versions.has_more
    rest = retell.agent.list_versions(agent.agent_id, limit=2, pagination_key=versions.pagination_key)
    assert [(v.version, v.is_published) for v in rest.items] == [(3, False)] and not rest.has_more
    newest = retell.agent.list_versions(agent.agent_id, sort_order="descending", limit=1)
    assert [v.version for v in newest.items] == [3]

    with pytest.raises(ConflictError):  # published versions stay
        retell.chat_agent.delete_version(agent.agent_id, version=2)
    with pytest.raises(NotFoundError):
        retell.chat_agent.delete_version(agent.agent_id, version=9)
    retell.chat_agent.delete_version(agent.agent_id, version=3)
    assert retell.chat_agent.retrieve(agent.agent_id).version == 2  # the latest again
    with pytest.raises(NotFoundError):
        retell.chat_agent.retrieve(agent.agent_id, version=3)

    draft = retell.chat_agent.update(agent.agent_id, agent_name="v3 again")
    retell.chat.create(agent_id=agent.agent_id)  # runs on the draft
    with pytest.raises(ConflictError):
        retell.chat_agent.delete_version(agent.agent_id, version=draft.version)
    with pytest.raises(NotFoundError):
        retell.agent.list_versions("chat_agent_01jzzzzzzzzzzzzzzzzzzzzzzz")


def test_rerun_analysis_answers_the_chat_with_its_analysis(api: Api, model: ScriptedModel) -> None:
    retell = client(api)
    llm = retell.llm.create(model=SCRIPTED)
    agent = retell.chat_agent.create(
        response_engine={"type": "retell-llm", "llm_id": llm.llm_id},
        post_chat_analysis_data=[
            {"type": "system-presets", "name": "chat_summary"},  # always analysed here: dropped
            {"type": "string", "name": "product", "description": "What they bought."},
        ],
    )
    assert [item.name for item in agent.post_chat_analysis_data] == ["product"]
    chat = retell.chat.create(agent_id=agent.agent_id)
    token = uuid.uuid4().hex
    retell.chat.create_chat_completion(chat_id=chat.chat_id, content=f"one Pro plan please {token}")
    with pytest.raises(ConflictError):  # analysis is of ended chats
        retell.chat.rerun_analysis(chat.chat_id)
    first = analysis_json(custom_analysis_data={"product": "Pro plan"})
    again = analysis_json(chat_summary="Asked twice.", custom_analysis_data={"product": "Pro plan"})
    model.push_structured(Reply(first, when=token))
    retell.chat.end(chat.chat_id)
    wait_for(api, chat.chat_id, lambda c: (c["chatAnalysis"] or {}).get("analysisStatus") == "succeeded")
    model.push_structured(Reply(again, when=token))
    rerun = raw(retell.chat.with_raw_response.rerun_analysis(chat.chat_id), ChatResponse)
    assert rerun.chat_analysis.chat_summary == "Asked twice." and rerun.chat_analysis.user_sentiment == "Positive"
    assert rerun.chat_analysis.custom_analysis_data == {"product": "Pro plan"}
    with pytest.raises(NotFoundError):
        retell.chat.rerun_analysis("chat_01jzzzzzzzzzzzzzzzzzzzzzzz")


def test_the_async_client_on_every_llm_agent_and_chat_route(api: Api, model: ScriptedModel) -> None:
    async def scenario() -> None:
        async with AsyncRetell(api_key=api.key, base_url=api.backend.url, max_retries=0) as retell:
            llm = await retell.llm.create(model=SCRIPTED, general_prompt="one")
            assert (await retell.llm.retrieve(llm.llm_id)).general_prompt == "one"
            assert (await retell.llm.update(llm.llm_id, general_prompt="two")).general_prompt == "two"
            assert [item.llm_id for item in (await retell.llm.list()).items] == [llm.llm_id]
            agent = await retell.chat_agent.create(response_engine={"type": "retell-llm", "llm_id": llm.llm_id})
            assert (await retell.chat_agent.retrieve(agent.agent_id, version=1)).agent_id == agent.agent_id
            assert (await retell.chat_agent.update(agent.agent_id, agent_name="A")).agent_name == "A"
            assert [item.agent_name for item in (await retell.chat_agent.list()).items] == ["A"]
            await retell.chat_agent.publish(agent.agent_id, version=1)
            draft = await retell.chat_agent.update(agent.agent_id, agent_name="B")
            await retell.chat_agent.delete_version(agent.agent_id, version=draft.version)
            assert (await retell.chat_agent.create_version(agent.agent_id, base_version=1)).version == 2
            assert len((await retell.agent.list_versions(agent.agent_id)).items) == 2
            chat = await retell.chat.create(agent_id=agent.agent_id)
            updated = await retell.chat.update(chat.chat_id, override_dynamic_variables={"x": "1"})
            assert updated.chat_id == chat.chat_id
            await retell.chat.delete(chat.chat_id)
            with pytest.raises(NotFoundError):
                await retell.chat.update(chat.chat_id, metadata={})
            await retell.chat_agent.delete(agent.agent_id)
            await retell.llm.delete(llm.llm_id)
            with pytest.raises(NotFoundError):
                await retell.llm.retrieve(llm.llm_id)

    asyncio.run(scenario())
