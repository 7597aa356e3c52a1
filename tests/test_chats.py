"""The seeds' chat loop: create, complete, get, list, edit, end, delete."""

from __future__ import annotations

import time
from datetime import UTC, datetime

from chatplane.testing import Reply
from tests.chat_helpers import make_agent, make_chat, make_llm, say
from tests.conftest import Api, ScriptedModel, assert_error
from tests.seed_schemas import (
    SHARED_SEEDS,
    VENDORED_SEEDS,
    assert_matches_seed,
    seed_route,
)


# --- the seeds' contract ------------------------------------------------------


def test_vendored_seeds_match_the_shared_ones() -> None:
    if not SHARED_SEEDS.is_dir():
        return  # a clone without ../shared: the vendored copy is all there is
    shared = {p.name: p.read_text() for p in SHARED_SEEDS.glob("*.txt")}
    vendored = {p.name: p.read_text() for p in VENDORED_SEEDS.glob("*.txt")}
    assert shared == vendored, "docs/seeds drifted from ../shared/seeds: copy them again"


def test_seed_status_codes_are_the_ones_we_serve() -> None:
    assert set(seed_route("post", "/api/chats")["responses"]) == {"201"}
    assert set(seed_route("post", "/api/chats/{chatId}/completions")["responses"]) == {"201"}
    assert set(seed_route("get", "/api/chats/{chatId}")["responses"]) == {"200"}


def test_every_chat_answer_matches_the_seed_schemas(api: Api, model: ScriptedModel) -> None:
    llm = make_llm(api, begin_message="Hello!")
    created = api.post("/api/chats", {"agent_id": make_agent(api, llm)["agent_id"], "metadata": {"page": "/pricing"}})
    assert created.status_code == 201
    assert_matches_seed(created.json(), "Chat")
    chat_id = created.json()["chatId"]

    model.push(Reply("Our enterprise plan is custom-priced."))
    completion = say(api, chat_id, "Can you send me pricing for the enterprise plan?")
    assert completion.status_code == 201
    assert_matches_seed(completion.json(), "ChatCompletionResponse")
    for message in completion.json()["messages"]:
        assert_matches_seed(message, "Message")

    fetched = api.get(f"/api/chats/{chat_id}")
    assert fetched.status_code == 200
    assert_matches_seed(fetched.json(), "Chat")
    for message in fetched.json()["messages"]:
        assert_matches_seed(message, "Message")

    patched = api.patch(f"/api/chats/{chat_id}", {"custom_attributes": {"tier": "gold"}})
    assert_matches_seed(patched.json(), "Chat")


def test_seed_example_request_is_accepted(api: Api) -> None:
    example = seed_route("post", "/api/chats")["requestBody"]["content"]["application/json"]["examples"]["default"][
        "value"
    ]
    agent = make_agent(api)
    body = {**example, "workspaceId": api.ws, "agent_id": agent["agent_id"]}
    response = api.http.post("/api/chats", json=body)
    assert response.status_code == 201, response.text
    assert response.json()["metadata"] == example["metadata"]
    assert response.json()["uponai_dynamic_variables"] == example["uponai_dynamic_variables"]


# --- create -------------------------------------------------------------------


def test_create_chat_pins_versions_and_starts_with_the_begin_message(api: Api) -> None:
    llm = make_llm(api, begin_message="Hi {{name}}, I'm {{agent}}.", default_dynamic_variables={"name": "there"})
    agent = make_agent(api, llm, uponai_dynamic_variables={"agent": "Ava"})
    chat = make_chat(api, agent, uponai_dynamic_variables={"name": "Sam"})
    assert chat["chatId"].startswith("chat_") and len(chat["chatId"]) == 31
    assert chat["agentId"] == agent["agent_id"] and chat["version"] == 1
    assert chat["status"] == "ongoing" and chat["type"] == "api_chat"
    assert chat["endedAt"] is None and chat["chatCost"] is None and chat["chatAnalysis"] is None
    assert [(m["role"], m["content"]) for m in chat["messages"]] == [("assistant", "Hi Sam, I'm Ava.")]
    assert chat["transcript"] == "Agent: Hi Sam, I'm Ava.\n"
    started = datetime.fromisoformat(chat["startedAt"].replace("Z", "+00:00"))
    assert abs((datetime.now(UTC) - started).total_seconds()) < 60


def test_no_begin_message_means_no_first_message(api: Api) -> None:
    chat = make_chat(api, make_agent(api, make_llm(api, begin_message="   ")))
    assert chat["messages"] == [] and chat["transcript"] == ""


def test_chat_runs_on_the_version_it_started_on(api: Api, model: ScriptedModel) -> None:
    llm = make_llm(api, general_prompt="version one")
    agent = make_agent(api, llm)
    assert api.post(f"/api/chat-agents/{agent['agent_id']}/publish").status_code == 200
    chat = make_chat(api, agent)
    # Editing the published LLM makes version 2; the chat stays on version 1.
    assert api.patch(f"/api/llms/{llm['llm_id']}", {"general_prompt": "version two"}).json()["version"] == 2
    say(api, chat["chatId"], "hi")
    assert model.requests[-1]["messages"][0] == {"role": "system", "content": "version one"}


def test_agent_version_can_be_chosen(api: Api) -> None:
    agent = make_agent(api, agent_name="first")
    api.post(f"/api/chat-agents/{agent['agent_id']}/publish")
    api.patch(f"/api/chat-agents/{agent['agent_id']}", {"agent_name": "second"})
    assert make_chat(api, agent)["version"] == 2
    assert make_chat(api, agent, agent_version=1)["version"] == 1
    response = api.post("/api/chats", {"agent_id": agent["agent_id"], "agent_version": 9})
    assert_error(response, 404, "chat_agent_not_found")


def test_agent_version_beyond_a_32_bit_integer_is_422(api: Api) -> None:
    # Found by schemathesis: PostgreSQL's driver refused the number, a 500.
    agent = make_agent(api)
    response = api.post("/api/chats", {"agent_id": agent["agent_id"], "agent_version": 2**31})
    assert_error(response, 422, "validation_error", "agent_version")


def test_create_chat_errors(api: Api, other: Api) -> None:
    assert_error(api.post("/api/chats", {"agent_id": "chat_agent_nope"}), 404, "chat_agent_not_found")
    theirs = make_agent(other)
    assert_error(api.post("/api/chats", {"agent_id": theirs["agent_id"]}), 404, "chat_agent_not_found")
    agent = make_agent(api)
    assert_error(api.post("/api/chats", {"agent_id": agent["agent_id"], "metadata": {"n": 1}}), 422, field="metadata.n")
    assert_error(api.post("/api/chats", {"agent_id": agent["agent_id"], "uponai_dynamic_variables": []}), 422,
                 field="uponai_dynamic_variables")
    assert_error(api.post("/api/chats", {}), 422, field="agent_id")
    assert_error(api.post("/api/chats", {"agent_id": agent["agent_id"], "surprise": 1}), 422, field="surprise")
    assert_error(api.post("/api/chats", {"agent_id": agent["agent_id"], "agent_version": 0}), 422,
                 field="agent_version")
    deleted = make_agent(api)
    api.delete(f"/api/chat-agents/{deleted['agent_id']}")
    assert_error(api.post("/api/chats", {"agent_id": deleted["agent_id"]}), 404, "chat_agent_not_found")


# --- the turn -----------------------------------------------------------------


def test_completion_returns_only_the_agents_new_messages(api: Api, model: ScriptedModel) -> None:
    chat = make_chat(api)
    model.push(Reply("First answer"), Reply("Second answer"))
    first = say(api, chat["chatId"], "question one")
    assert first.status_code == 201
    [message] = first.json()["messages"]
    assert message["role"] == "assistant" and message["content"] == "First answer"
    assert message["messageId"].startswith("msg_") and message["tool_calls"] == []
    second = say(api, chat["chatId"], "question two")
    assert [m["content"] for m in second.json()["messages"]] == ["Second answer"]
    # History is kept server-side: the model saw the whole conversation.
    assert model.requests[-1]["messages"][-3:] == [
        {"role": "user", "content": "question one"},
        {"role": "assistant", "content": "First answer"},
        {"role": "user", "content": "question two"},
    ]
    fetched = api.get(f"/api/chats/{chat['chatId']}").json()
    assert fetched["transcript"] == (
        "User: question one\nAgent: First answer\nUser: question two\nAgent: Second answer\n"
    )
    assert [m["role"] for m in fetched["messages"]] == ["user", "assistant", "user", "assistant"]
    assert fetched["messages"][1]["messageId"] == message["messageId"]
    # The answer's message, written by hand (text.iso), as the response model writes it.
    assert fetched["messages"][1] == message


def test_variable_precedence_and_system_variables(api: Api, model: ScriptedModel) -> None:
    prompt = (
        "a={{a}} b={{b}} c={{c}} d={{d}} id={{chat_id}} unknown={{nope}} "
        "now={{current_time}} paris={{current_time_Europe/Paris}} bad={{current_time_Nowhere/Land}}"
        f" long={{{{current_time_{'x' * 300}}}}}"  # a name the file system refuses (too long): no zone either
    )
    llm = make_llm(api, general_prompt=prompt, default_dynamic_variables={"a": "llm", "b": "llm", "c": "llm", "d": "llm"})
    agent = make_agent(api, llm, uponai_dynamic_variables={"b": "agent", "c": "agent", "d": "agent"},
                       timezone="Asia/Tokyo")
    chat = make_chat(api, agent, uponai_dynamic_variables={"c": "chat", "d": "chat"})
    api.patch(f"/api/chats/{chat['chatId']}", {"override_dynamic_variables": {"d": "override"}})
    say(api, chat["chatId"], "hi")
    system = model.requests[-1]["messages"][0]["content"]
    assert system.startswith(f"a=llm b=agent c=chat d=override id={chat['chatId']} unknown={{{{nope}}}} now=")
    assert "JST" in system.split("paris=")[0]
    assert "CET" in system.split("paris=")[1] or "CEST" in system.split("paris=")[1]
    assert system.endswith(f"bad={{{{current_time_Nowhere/Land}}}} long={{{{current_time_{'x' * 300}}}}}")


def test_state_prompt_is_added_to_the_general_prompt(api: Api, model: ScriptedModel) -> None:
    llm = make_llm(api, general_prompt="General.", states=[{"name": "greet", "state_prompt": "Greet {{who}}."}],
                   starting_state="greet", default_dynamic_variables={"who": "them"})
    say(api, make_chat(api, make_agent(api, llm))["chatId"], "hi")
    assert model.requests[-1]["messages"][0]["content"] == "General.\n\nGreet them."


def test_model_settings_reach_the_model(api: Api, model: ScriptedModel) -> None:
    chat = make_chat(api, make_agent(api, make_llm(api, model_temperature=0.7)))
    say(api, chat["chatId"], "hi")
    request = model.requests[-1]
    assert request["model"] == "scripted-model" and request["temperature"] == 0.7
    assert "stream" not in request or request["stream"] is False


def test_completion_errors(api: Api, other: Api, model: ScriptedModel) -> None:
    chat = make_chat(api)
    assert_error(say(api, "chat_nope", "hi"), 404, "chat_not_found")
    theirs = make_chat(other)
    assert_error(say(api, theirs["chatId"], "hi"), 404, "chat_not_found")
    assert_error(api.post(f"/api/chats/{chat['chatId']}/completions", {"content": ""}), 422, field="content")
    assert_error(api.post(f"/api/chats/{chat['chatId']}/completions", {}), 422, field="content")
    assert_error(api.post(f"/api/chats/{chat['chatId']}/completions", {"content": 5}), 422, field="content")
    assert model.requests == []  # none of that reached the model
    assert api.post(f"/api/chats/{chat['chatId']}/end").status_code == 204
    assert_error(say(api, chat["chatId"], "anyone there?"), 409, "chat_ended")


def test_idempotency_key_replays_the_first_answer(api: Api, model: ScriptedModel) -> None:
    chat = make_chat(api)
    model.push(Reply("only once"), Reply("a second turn"))
    first = say(api, chat["chatId"], "hello", headers={"Idempotency-Key": "k-1"})
    retry = say(api, chat["chatId"], "hello", headers={"Idempotency-Key": "k-1"})
    assert first.status_code == retry.status_code == 201
    assert retry.json() == first.json()
    assert retry.headers.get("idempotent-replayed") == "true"
    assert len(model.requests) == 1
    assert len(api.get(f"/api/chats/{chat['chatId']}").json()["messages"]) == 2
    # The same key for another message is refused, not silently replayed.
    assert_error(say(api, chat["chatId"], "something else", headers={"Idempotency-Key": "k-1"}), 409,
                 "idempotency_key_reused")
    # Keys are per chat.
    other_chat = make_chat(api)
    assert say(api, other_chat["chatId"], "hello", headers={"Idempotency-Key": "k-1"}).json()["messages"][0][
        "content"] == "a second turn"


def test_idempotent_retry_after_the_chat_ended_still_replays(api: Api, model: ScriptedModel) -> None:
    chat = make_chat(api)
    first = say(api, chat["chatId"], "bye", headers={"Idempotency-Key": "k-end"})
    api.post(f"/api/chats/{chat['chatId']}/end")
    assert say(api, chat["chatId"], "bye", headers={"Idempotency-Key": "k-end"}).json() == first.json()


def test_token_usage_is_recorded_per_message(api: Api, model: ScriptedModel) -> None:
    from sqlalchemy import select

    from chatplane.models import ChatMessage

    chat = make_chat(api)
    model.push(Reply("counted", prompt_tokens=123, completion_tokens=45))
    say(api, chat["chatId"], "count me")

    async def usage(session):
        rows = await session.execute(
            select(ChatMessage.role, ChatMessage.model, ChatMessage.prompt_tokens, ChatMessage.completion_tokens)
            .where(ChatMessage.chat_id == chat["chatId"]).order_by(ChatMessage.seq)
        )
        return [tuple(r) for r in rows]

    assert api.backend.run(usage) == [("user", None, 0, 0), ("assistant", "scripted-model", 123, 45)]


# --- list, get, patch, end, delete ----------------------------------------------


def test_get_chat_errors(api: Api, other: Api) -> None:
    assert_error(api.get("/api/chats/chat_nope"), 404, "chat_not_found")
    theirs = make_chat(other)
    assert_error(api.get(f"/api/chats/{theirs['chatId']}"), 404, "chat_not_found")
    assert other.get(f"/api/chats/{theirs['chatId']}").status_code == 200


def test_list_chats_filters_and_pages_without_gaps(api: Api, other: Api) -> None:
    agent_a, agent_b = make_agent(api), make_agent(api)
    ids_a = [make_chat(api, agent_a)["chatId"] for _ in range(5)]
    ids_b = [make_chat(api, agent_b)["chatId"] for _ in range(2)]
    make_chat(other)
    api.post(f"/api/chats/{ids_a[0]}/end")

    def collect(**params) -> list[str]:
        seen, key = [], None
        while True:
            query = {**params, **({"paginationKey": key} if key else {})}
            page = api.get("/api/chats", **query).json()
            assert all("messages" not in c and "transcript" not in c for c in page["data"])
            seen += [c["chatId"] for c in page["data"]]
            key = page["pagination_key"]
            if key is None:
                return seen

    assert collect(limit=2) == list(reversed(ids_a + ids_b))
    assert collect(limit=3, sortOrder="ascending") == ids_a + ids_b
    assert collect(agentId=agent_b["agent_id"]) == list(reversed(ids_b))
    assert collect(status="ended") == [ids_a[0]]
    assert collect(status="ongoing", agentId=agent_a["agent_id"]) == list(reversed(ids_a[1:]))
    assert collect(type="sms_chat") == []


def test_list_pages_stay_whole_while_chats_are_added(api: Api) -> None:
    agent = make_agent(api)
    before = [make_chat(api, agent)["chatId"] for _ in range(6)]
    first = api.get("/api/chats", limit=3, sortOrder="ascending").json()
    added = [make_chat(api, agent)["chatId"] for _ in range(2)]
    seen, key = [c["chatId"] for c in first["data"]], first["pagination_key"]
    while key:
        page = api.get("/api/chats", limit=3, sortOrder="ascending", paginationKey=key).json()
        seen += [c["chatId"] for c in page["data"]]
        key = page["pagination_key"]
    assert seen == before + added


def test_list_time_range(api: Api) -> None:
    agent = make_agent(api)
    early = make_chat(api, agent)["chatId"]
    time.sleep(0.01)
    middle_time = datetime.now(UTC).isoformat()
    time.sleep(0.01)
    late = make_chat(api, agent)["chatId"]
    after = [c["chatId"] for c in api.get("/api/chats", startedAfter=middle_time).json()["data"]]
    before = [c["chatId"] for c in api.get("/api/chats", startedBefore=middle_time).json()["data"]]
    assert after == [late] and before == [early]
    assert_error(api.get("/api/chats", startedAfter="yesterday"), 422, field="startedAfter")


def test_list_chats_bad_queries(api: Api) -> None:
    assert_error(api.get("/api/chats", status="paused"), 422, field="status")
    assert_error(api.get("/api/chats", limit=0), 422, field="limit")
    assert_error(api.get("/api/chats", paginationKey="garbage!"), 422, field="paginationKey")


def test_patch_chat_replaces_what_it_is_given(api: Api, other: Api, model: ScriptedModel) -> None:
    chat = make_chat(api, metadata={"a": "1"})
    patched = api.patch(f"/api/chats/{chat['chatId']}", {"custom_attributes": {"tier": "gold"}})
    assert patched.status_code == 200
    assert patched.json()["metadata"] == {"a": "1"}
    assert patched.json()["customAttributes"] == {"tier": "gold"}
    patched = api.patch(f"/api/chats/{chat['chatId']}", {"metadata": {"b": "2"}, "override_dynamic_variables": {"x": "y"}})
    assert patched.json()["metadata"] == {"b": "2"}
    assert patched.json()["overrideDynamicVariables"] == {"x": "y"}
    assert patched.json()["customAttributes"] == {"tier": "gold"}
    assert_error(api.patch(f"/api/chats/{chat['chatId']}", {"metadata": {"n": 1}}), 422, field="metadata.n")
    assert_error(api.patch(f"/api/chats/{chat['chatId']}", {"status": "ended"}), 422, field="status")
    assert_error(api.patch("/api/chats/chat_nope", {"metadata": {}}), 404, "chat_not_found")
    assert_error(other.patch(f"/api/chats/{chat['chatId']}", {"metadata": {}}), 404, "chat_not_found")
    assert api.get(f"/api/chats/{chat['chatId']}").json()["metadata"] == {"b": "2"}


def test_end_chat(api: Api, other: Api) -> None:
    chat = make_chat(api)
    assert_error(other.post(f"/api/chats/{chat['chatId']}/end"), 404, "chat_not_found")
    assert_error(api.post("/api/chats/chat_nope/end"), 404, "chat_not_found")
    response = api.post(f"/api/chats/{chat['chatId']}/end")
    assert response.status_code == 204 and response.content == b""
    ended = api.get(f"/api/chats/{chat['chatId']}").json()
    assert ended["status"] == "ended" and ended["endedAt"] is not None
    assert_error(api.post(f"/api/chats/{chat['chatId']}/end"), 409, "chat_ended")


def test_delete_chat(api: Api, other: Api, model: ScriptedModel) -> None:
    chat = make_chat(api)
    say(api, chat["chatId"], "hi")
    assert_error(other.delete(f"/api/chats/{chat['chatId']}"), 404, "chat_not_found")
    assert api.delete(f"/api/chats/{chat['chatId']}").status_code == 204
    assert_error(api.get(f"/api/chats/{chat['chatId']}"), 404, "chat_not_found")
    assert_error(api.delete(f"/api/chats/{chat['chatId']}"), 404, "chat_not_found")
    assert_error(say(api, chat["chatId"], "hello?"), 404, "chat_not_found")

    from sqlalchemy import func, select

    from chatplane.models import ChatMessage

    async def count(session):
        return await session.scalar(select(func.count()).where(ChatMessage.chat_id == chat["chatId"]))

    assert api.backend.run(count) == 0
