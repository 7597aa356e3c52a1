"""After the turns: cost, post-chat analysis, and closing idle chats."""

from __future__ import annotations

import json
import time
import uuid
from datetime import timedelta
from typing import Any

from sqlalchemy import func, select

from chatplane.chats import idle
from chatplane.db import utcnow
from chatplane.models import Job
from chatplane.testing import Reply
from tests.chat_helpers import make_agent, make_chat, make_llm, say
from tests.conftest import Api, ScriptedModel, assert_error

FIELDS = [
    {"type": "string", "name": "product", "description": "What the user asked about", "required": True},
    {"type": "enum", "name": "intent", "description": "Why they came", "choices": ["buy", "support"]},
    {"type": "boolean", "name": "callback", "description": "Wants a call back"},
    {"type": "number", "name": "seats", "description": "How many seats"},
]


def wait_for(api: Api, chat_id: str, check, timeout: float = 15.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        chat = api.get(f"/api/chats/{chat_id}").json()
        if check(chat):
            return chat
        assert time.monotonic() < deadline, chat
        time.sleep(0.05)


def analysis_json(**over: Any) -> str:
    return json.dumps({
        "chat_summary": "The user asked about seats.",
        "user_sentiment": "Positive",
        "chat_successful": True,
        "custom_analysis_data": {"product": "Pro plan", "intent": "buy", "callback": False, "seats": 12},
        **over,
    })


def ended_chat(api: Api, model: ScriptedModel, **agent_fields: Any) -> tuple[str, str]:
    """A chat with one turn, whose transcript carries a token unique to this test."""
    token = uuid.uuid4().hex
    chat = make_chat(api, make_agent(api, post_chat_analysis_data=FIELDS, **agent_fields))
    model.push(Reply("Sure.", prompt_tokens=1000, completion_tokens=500))
    say(api, chat["chatId"], f"I need 12 seats {token}")
    return chat["chatId"], token


def test_cost_is_computed_from_recorded_usage_when_the_chat_ends(api: Api, model: ScriptedModel) -> None:
    token = uuid.uuid4().hex
    chat = make_chat(api, make_agent(api, post_chat_analysis_data=FIELDS))
    model.push(Reply("a", prompt_tokens=1000, completion_tokens=100), Reply("b", prompt_tokens=3000, completion_tokens=400))
    model.push_structured(Reply(analysis_json(), when=token, prompt_tokens=200, completion_tokens=50))
    say(api, chat["chatId"], f"one {token}")
    say(api, chat["chatId"], "two")
    api.post(f"/api/chats/{chat['chatId']}/end")
    # The end computes the cost of the replies; the analysis then adds its own tokens.
    done = wait_for(api, chat["chatId"], lambda c: c["chatAnalysis"] and c["chatAnalysis"].get("analysisStatus"))
    cost = done["chatCost"]
    lines = {p["product"]: p for p in cost["productCosts"]}
    # scripted-model is priced at $1 / $2 per million input / output tokens (tests/conftest.py).
    assert lines["scripted-model input tokens"]["quantity"] == 4000 + 200
    assert lines["scripted-model input tokens"]["unitPrice"] == 1e-6
    assert lines["scripted-model output tokens"]["quantity"] == 500 + 50
    assert abs(cost["combinedCost"] - (4200 * 1e-6 + 550 * 2e-6)) < 1e-12
    assert done["chatAnalysis"]["analysisStatus"] == "succeeded"


def test_analysis_runs_when_a_chat_ends(api: Api, model: ScriptedModel) -> None:
    chat_id, token = ended_chat(api, model)
    model.push_structured(Reply(analysis_json(), when=token, prompt_tokens=200, completion_tokens=50))
    api.post(f"/api/chats/{chat_id}/end")
    chat = wait_for(api, chat_id, lambda c: c["chatAnalysis"] and c["chatAnalysis"].get("analysisStatus"))
    analysis = chat["chatAnalysis"]
    assert analysis["analysisStatus"] == "succeeded"
    assert analysis["chatSummary"] == "The user asked about seats."
    assert analysis["userSentiment"] == "Positive" and analysis["chatSuccessful"] is True
    assert analysis["customAnalysisData"] == {"product": "Pro plan", "intent": "buy", "callback": False, "seats": 12}
    # The analysis asked for JSON matching a schema built from the agent's fields.
    [request] = [r for r in model.structured_requests if token in json.dumps(r["messages"])]
    schema = request["response_format"]["json_schema"]["schema"]
    assert schema["properties"]["custom_analysis_data"]["properties"]["intent"]["enum"] == ["buy", "support"]
    assert schema["properties"]["custom_analysis_data"]["required"] == ["product"]
    # Its tokens are in the cost too.
    lines = {p["product"]: p for p in chat["chatCost"]["productCosts"]}
    assert lines["scripted-model input tokens"]["quantity"] == 1000 + 200


def test_invalid_analysis_is_asked_again(api: Api, model: ScriptedModel) -> None:
    chat_id, token = ended_chat(api, model)
    model.push_structured(
        Reply("this is not json", when=token),
        Reply(analysis_json(user_sentiment="Ecstatic"), when=token),
        Reply(analysis_json(), when=token),
    )
    api.post(f"/api/chats/{chat_id}/end")
    chat = wait_for(api, chat_id, lambda c: c["chatAnalysis"] and c["chatAnalysis"].get("analysisStatus"))
    assert chat["chatAnalysis"]["analysisStatus"] == "succeeded"
    assert len([r for r in model.structured_requests if token in json.dumps(r["messages"])]) == 3


def test_always_invalid_analysis_is_recorded_as_failed_never_half_stored(api: Api, model: ScriptedModel) -> None:
    chat_id, token = ended_chat(api, model)
    broken = analysis_json(custom_analysis_data={"product": "x", "intent": "complain"})
    model.push_structured(*[Reply(broken, when=token)] * 3)
    api.post(f"/api/chats/{chat_id}/end")
    chat = wait_for(api, chat_id, lambda c: c["chatAnalysis"] and c["chatAnalysis"].get("analysisStatus"))
    analysis = chat["chatAnalysis"]
    assert analysis["analysisStatus"] == "failed"
    assert "intent" in analysis["analysisError"]
    assert "chatSummary" not in analysis and "customAnalysisData" not in analysis


def test_missing_required_field_marks_the_chat_unsuccessful(api: Api, model: ScriptedModel) -> None:
    chat_id, token = ended_chat(api, model)
    model.push_structured(Reply(analysis_json(custom_analysis_data={"intent": "buy"}), when=token))
    api.post(f"/api/chats/{chat_id}/end")
    chat = wait_for(api, chat_id, lambda c: c["chatAnalysis"] and c["chatAnalysis"].get("analysisStatus"))
    # "product" is required: the schema demands it, so this answer is invalid and retried, then failed.
    assert chat["chatAnalysis"]["analysisStatus"] == "failed"


def test_rerun_analysis_route(api: Api, other: Api, model: ScriptedModel) -> None:
    chat_id, token = ended_chat(api, model)
    assert_error(api.post(f"/api/chats/{chat_id}/analysis"), 409, "chat_ongoing")
    api.post(f"/api/chats/{chat_id}/end")
    wait_for(api, chat_id, lambda c: c["chatAnalysis"] and c["chatAnalysis"].get("analysisStatus"))
    model.push_structured(Reply(analysis_json(chat_summary="Second look."), when=token))
    response = api.post(f"/api/chats/{chat_id}/analysis")
    assert response.status_code == 200
    assert response.json()["chatAnalysis"]["chatSummary"] == "Second look."
    assert_error(api.post("/api/chats/chat_nope/analysis"), 404, "chat_not_found")
    assert_error(other.post(f"/api/chats/{chat_id}/analysis"), 404, "chat_not_found")


def _queue_idle(api: Api, *, after_s: float) -> int:
    now = utcnow() + timedelta(seconds=after_s)
    return api.backend.server.call(lambda services: idle.queue_idle_chats(services, now=now))


def test_idle_chats_are_closed_with_the_auto_close_message(api: Api, model: ScriptedModel) -> None:
    quick = make_agent(api, end_chat_after_silence_ms=120_000, auto_close_message="Closing this chat. Bye!")
    patient = make_agent(api, end_chat_after_silence_ms=3_600_000)
    idle = make_chat(api, quick)
    say(api, idle["chatId"], "hello")
    slow = make_chat(api, patient)
    say(api, slow["chatId"], "hello")
    _queue_idle(api, after_s=60)  # not silent long enough for anyone
    time.sleep(0.3)
    assert api.get(f"/api/chats/{idle['chatId']}").json()["status"] == "ongoing"
    _queue_idle(api, after_s=121)  # the clock moved on two minutes
    chat = wait_for(api, idle["chatId"], lambda c: c["status"] == "ended")
    assert chat["messages"][-1] == {**chat["messages"][-1], "role": "assistant", "content": "Closing this chat. Bye!"}
    assert chat["transcript"].endswith("Agent: Closing this chat. Bye!\n")
    assert api.get(f"/api/chats/{slow['chatId']}").json()["status"] == "ongoing"
    assert_error(say(api, idle["chatId"], "wait!"), 409, "chat_ended")


def test_each_idle_chat_is_closed_once(api: Api, model: ScriptedModel) -> None:
    agent = make_agent(api, end_chat_after_silence_ms=120_000, auto_close_message="Bye.")
    chat = make_chat(api, agent)
    for _ in range(3):  # three monitor passes (or three workers) see the same idle chat
        _queue_idle(api, after_s=200)
    ended = wait_for(api, chat["chatId"], lambda c: c["status"] == "ended")
    time.sleep(0.3)
    assert [m["content"] for m in ended["messages"]] == ["Bye."]
    assert api.get(f"/api/chats/{chat['chatId']}").json()["messages"] == ended["messages"]

    async def jobs_for(session):
        return await session.scalar(
            select(func.count()).where(Job.kind == idle.AUTO_CLOSE_JOB, Job.dedupe_key == f"auto_close:{chat['chatId']}")
        )

    assert api.backend.run(jobs_for) == 1


def test_a_user_who_spoke_is_not_idle(api: Api, model: ScriptedModel) -> None:
    agent = make_agent(api, end_chat_after_silence_ms=120_000)
    chat = make_chat(api, agent)
    say(api, chat["chatId"], "hi")
    # The agent's last message is "now"; 100 s of silence is not enough.
    assert chat["chatId"] not in api.backend.server.call(
        lambda services: _idle_ids(services, after_s=100)
    )
    assert chat["chatId"] in api.backend.server.call(lambda services: _idle_ids(services, after_s=130))


async def _idle_ids(services, *, after_s: float, page: int = 500) -> list[str]:
    async with services.sessions() as session:
        return await idle.find_idle_chats(
            session, now=utcnow() + timedelta(seconds=after_s), limit=100_000, page=page
        )


def test_patient_agents_chats_do_not_hide_an_idle_one(api: Api, model: ScriptedModel) -> None:
    """More not-yet-idle candidates than one page holds come first (older
    ids); the quick agent's idle chat after them is still found."""
    patient = make_agent(api, end_chat_after_silence_ms=3_600_000)
    waiting = [make_chat(api, patient)["chatId"] for _ in range(3)]
    quick = make_chat(api, make_agent(api, end_chat_after_silence_ms=120_000))["chatId"]
    found = api.backend.server.call(lambda services: _idle_ids(services, after_s=130, page=2))
    assert quick in found
    assert not set(waiting) & set(found)


def test_embedded_model_analyses_a_chat_end_to_end(api: Api, model: ScriptedModel) -> None:
    embedded = api.backend.settings.embedded.name
    llm = make_llm(api)
    agent = make_agent(api, llm, post_chat_analysis_model=embedded, post_chat_analysis_data=FIELDS[1:3])
    chat = make_chat(api, agent)
    model.push(Reply("We sell the Pro plan at $20 a seat."))
    say(api, chat["chatId"], "Hi, how much is the Pro plan?")
    api.post(f"/api/chats/{chat['chatId']}/end")
    done = wait_for(api, chat["chatId"], lambda c: c["chatAnalysis"] and c["chatAnalysis"].get("analysisStatus"),
                    timeout=120)
    analysis = done["chatAnalysis"]
    assert analysis["analysisStatus"] == "succeeded", analysis
    assert isinstance(analysis["chatSummary"], str)
    assert analysis["userSentiment"] in ("Positive", "Neutral", "Negative", "Unknown")
    assert isinstance(analysis["chatSuccessful"], bool)
    assert set(analysis["customAnalysisData"]) <= {"intent", "callback"}
    if "intent" in analysis["customAnalysisData"]:
        assert analysis["customAnalysisData"]["intent"] in ("buy", "support")
