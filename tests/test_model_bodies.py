"""The request body chatplane writes itself for OpenAI-compatible endpoints."""

from __future__ import annotations

import json

from chatplane.chats.tools import history_messages
from chatplane.providers.base import Message, dumps, messages_json
from chatplane.providers.openai_compat import _body


def test_the_body_is_the_json_of_the_request_whatever_its_messages_are() -> None:
    calls = [{"id": "c1", "type": "function", "function": {"name": "lookup", "arguments": "{\"q\": \"é\"}"},
              "result": {"content": "found: «ok»"}}]
    messages = [
        {"role": "system", "content": "You are Ava. Time: 10:00 \u2028 \"quoted\""},  # rendered per turn: plain
        *history_messages("user", "héllo 👋", None),
        *history_messages("assistant", "", calls),  # the call, then its tool message
        Message(role="user", content="and now?"),
    ]
    kwargs = {"model": "m", "messages": messages, "temperature": 0.2,
              "response_format": {"type": "json_object"}, "tools": [{"type": "function", "function": {"name": "x"}}]}
    body = _body(kwargs)
    assert json.loads(body) == kwargs
    assert [m["role"] for m in json.loads(body)["messages"]] == ["system", "user", "assistant", "tool", "user"]
    assert "👋".encode() in body  # UTF-8 as it is, like the client's own encoder


def test_a_history_message_keeps_the_json_it_was_made_with() -> None:
    message = Message(role="assistant", content="hi", tool_calls=[{"id": "c1"}])
    assert message == {"role": "assistant", "content": "hi", "tool_calls": [{"id": "c1"}]}
    assert json.loads(message.json) == message and message.json == dumps(message)
    # The kept JSON is what goes out, not a fresh encoding of the dict.
    message.json = '{"role":"assistant","content":"kept"}'
    assert json.loads(messages_json([message, {"role": "user", "content": "plain"}])) == [
        {"role": "assistant", "content": "kept"}, {"role": "user", "content": "plain"}]
