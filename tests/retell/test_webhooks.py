"""Webhooks a Retell handler can parse: an agent made through the Retell routes
sends Retell's ``ChatResponse`` in its events, signed so ``Retell.verify``
accepts them; an agent made through ``/api`` keeps chatplane's Chat, and the
``webhook_format`` field switches either way."""

from __future__ import annotations

import json

from retell import Retell
from retell.types import ChatResponse

from tests.chat_helpers import make_agent
from tests.conftest import SCRIPTED, Api
from tests.retell.test_sdk import strict
from tests.test_webhooks import hooks, hooks_model, mine, receiver, webhook_key  # noqa: F401 - fixtures
from tests.webhook_receiver import Receiver, eventually


def test_a_retell_agent_s_webhooks_verify_and_parse_as_the_sdk_s_chat(mine: Api, receiver: Receiver) -> None:  # noqa: F811
    retell = Retell(api_key=mine.key, base_url=mine.backend.url, max_retries=0)
    llm = retell.llm.create(model=SCRIPTED, begin_message="Hello!")
    agent = retell.chat_agent.create(response_engine={"type": "retell-llm", "llm_id": llm.llm_id},
                                     webhook_url=receiver.url, webhook_events=["chat_started", "chat_ended"])
    assert mine.get(f"/api/chat-agents/{agent.agent_id}").json()["webhook_format"] == "retell"
    chat = retell.chat.create(agent_id=agent.agent_id, metadata={"who": "Zoë"})
    retell.chat.end(chat.chat_id)

    key = webhook_key(mine)
    for event in ("chat_started", "chat_ended"):
        request = eventually(lambda event=event: receiver.received(event), what=event)[0]
        assert retell.verify(request.body, key, request.headers["x-retell-signature"])
        body = json.loads(request.body)
        assert set(body) == {"event", "chat"} and body["event"] == event
        parsed = strict(ChatResponse, body["chat"])
        assert parsed.chat_id == chat.chat_id and parsed.metadata == {"who": "Zoë"}
        assert [(m.role, m.content) for m in parsed.message_with_tool_calls] == [("agent", "Hello!")]
    ended = strict(ChatResponse, json.loads(receiver.received("chat_ended")[0].body)["chat"])
    assert ended.chat_status == "ended" and ended.end_timestamp is not None


def test_the_webhook_format_is_the_agent_s_choice(mine: Api, receiver: Receiver) -> None:  # noqa: F811
    agent = make_agent(mine, webhook_url=receiver.url, webhook_events=["chat_started"])
    assert agent["webhook_format"] == "chatplane"
    first = mine.post("/api/chats", {"agent_id": agent["agent_id"]}).json()
    ours = eventually(lambda: receiver.received("chat_started"), what="chat_started")[0].json["chat"]
    assert ours["chatId"] == first["chatId"] and "chat_id" not in ours

    assert mine.patch(f"/api/chat-agents/{agent['agent_id']}", {"webhook_format": "retell"}).status_code == 200
    second = mine.post("/api/chats", {"agent_id": agent["agent_id"]}).json()
    sent = eventually(lambda: [r for r in receiver.received("chat_started") if "chat_id" in r.json["chat"]],
                      what="a Retell-shaped chat_started")[0].json["chat"]
    assert sent["chat_id"] == second["chatId"]
    strict(ChatResponse, sent)
    bad = mine.patch(f"/api/chat-agents/{agent['agent_id']}", {"webhook_format": "xml"})
    assert bad.status_code == 422 and bad.json()["error"]["field"] == "webhook_format"
