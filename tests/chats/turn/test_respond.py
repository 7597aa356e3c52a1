"""Provider failures of every kind: a clear 502/504, and the chat untouched."""

from __future__ import annotations

import time

import pytest

from chatplane.testing import Fail, Hang, Junk, Reply, Reset, Step
from tests.chat_helpers import make_agent, make_chat, make_llm, say
from tests.conftest import SCRIPTED_NO_RETRY, Api, ScriptedModel, assert_error


def _messages(api: Api, chat_id: str) -> list[tuple[str, str]]:
    return [(m["role"], m["content"]) for m in api.get(f"/api/chats/{chat_id}").json()["messages"]]


def _fast_chat(api: Api) -> str:
    return make_chat(api, make_agent(api, make_llm(api, model=SCRIPTED_NO_RETRY)))["chatId"]


@pytest.mark.parametrize(
    ("step", "status", "code", "reason"),
    [
        (Fail(400, "context too long"), 502, "provider_error", "400: context too long"),
        (Fail(401, "bad key"), 502, "provider_error", "401: bad key"),
        (Fail(500, "internal"), 502, "provider_error", "500: internal"),
        (Fail(503, "overloaded"), 502, "provider_error", "503: overloaded"),
        (Fail(429, "rate limited", {"retry-after": "1"}), 502, "provider_error", "429: rate limited"),
        (Hang(), 504, "provider_timeout", "did not answer"),
        (Reset(), 502, "provider_error", "scripted-fast"),
        (Junk(b"<html>oops</html>"), 502, "provider_error", "scripted-fast"),
        (Junk(b'{"choices": []}'), 502, "provider_error", "without choices"),
        (Junk(b'{"choices": [{"message": {"role": "assi'), 502, "provider_error", "scripted-fast"),
    ],
)
def test_failure_is_a_clear_error_and_leaves_the_chat_as_it_was(
    api: Api, model: ScriptedModel, step: Step, status: int, code: str, reason: str
) -> None:
    chat_id = _fast_chat(api)
    model.push(step)
    error = assert_error(say(api, chat_id, "hello?"), status, code)
    assert reason in error["message"]
    assert _messages(api, chat_id) == []
    # The chat is usable afterwards.
    model.push(Reply("back again"))
    assert say(api, chat_id, "hello?").json()["messages"][0]["content"] == "back again"
    assert _messages(api, chat_id) == [("user", "hello?"), ("assistant", "back again")]


def test_5xx_is_retried_with_backoff_then_succeeds(api: Api, model: ScriptedModel) -> None:
    chat_id = make_chat(api)["chatId"]
    model.push(Fail(500, "blip", {"retry-after-ms": "10"}), Fail(502, "blip", {"retry-after-ms": "10"}), Reply("fine"))
    response = say(api, chat_id, "hi")
    assert response.status_code == 201
    assert response.json()["messages"][0]["content"] == "fine"
    assert len(model.requests) == 3


def test_429_honours_retry_after(api: Api, model: ScriptedModel) -> None:
    chat_id = make_chat(api)["chatId"]
    model.push(Fail(429, "slow down", {"retry-after-ms": "300"}), Reply("ok now"))
    started = time.monotonic()
    response = say(api, chat_id, "hi")
    assert response.status_code == 201
    assert time.monotonic() - started >= 0.3
    assert len(model.requests) == 2


@pytest.mark.parametrize("status", [500, 429])
def test_retries_are_bounded(api: Api, model: ScriptedModel, status: int) -> None:
    chat_id = make_chat(api)["chatId"]
    model.push(*[Fail(status, "down", {"retry-after-ms": "10"})] * 5)
    error = assert_error(say(api, chat_id, "hi"), 502, "provider_error")
    assert f"{status}: down" in error["message"]
    assert len(model.requests) == 3  # one try + max_retries=2
    assert _messages(api, chat_id) == []
    model.reset()
    model.push(Reply("recovered"))
    assert say(api, chat_id, "hi").status_code == 201
    assert _messages(api, chat_id) == [("user", "hi"), ("assistant", "recovered")]


def test_a_model_the_settings_no_longer_offer_is_a_clear_502(api: Api, model: ScriptedModel) -> None:
    from sqlalchemy import update

    from chatplane.models import Llm

    llm = make_llm(api)
    chat_id = make_chat(api, make_agent(api, llm))["chatId"]

    async def retire(session):
        await session.execute(
            update(Llm).where(Llm.id == llm["llm_id"]).values(config={**llm_config(llm), "model": "retired-model"})
        )

    api.backend.run(retire)
    error = assert_error(say(api, chat_id, "hi"), 502, "model_unavailable")
    assert "retired-model" in error["message"]


def llm_config(llm: dict) -> dict:
    keys = ("display_name", "model", "model_temperature", "general_prompt", "begin_message", "general_tools",
            "states", "starting_state", "knowledge_base_ids", "kb_config", "default_dynamic_variables")
    return {k: llm[k] for k in keys}
