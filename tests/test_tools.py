"""Tools in the turn: end_chat, custom (HTTP), extract_dynamic_variable, state transitions.

Custom tools call a real HTTP server on loopback. Loopback is refused by
default (``allow_private_networks`` off), so the happy paths run
against a second app on the same database with the setting on
(``tools_api``); the refusals run against the ordinary one (``api``).
"""

from __future__ import annotations

import dataclasses
import json
import threading
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import pytest

from chatplane import signing
from chatplane.chats.tools import MAX_RESPONSE_BYTES
from chatplane.chats.turn.respond import MAX_TOOL_ROUNDS
from chatplane.testing import Reply
from tests.chat_helpers import make_agent, make_chat, make_llm, say
from tests.conftest import Api, Backend, ScriptedModel, ServerThread, assert_error, hold_locks_over
from tests.seed_schemas import assert_matches_seed
from tests.test_streaming import stream_events

# --- a tool endpoint on loopback ---------------------------------------------------


@dataclass
class Answer:
    status: int = 200
    body: Any = field(default_factory=lambda: {"ok": True})  # dict/list: JSON; str/bytes: as is
    delay_s: float = 0.0
    content_type: str = "application/json"
    declare_length: bool = True  # False: no Content-Length, the body ends when the connection closes


@dataclass
class Drop:
    """Close the connection without answering."""


class ToolServer:
    """Answers each request with the next scripted step; records every request."""

    def __init__(self) -> None:
        self.script: deque[Answer | Drop] = deque()
        self.requests: list[dict[str, Any]] = []
        self.lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def handle_any(self) -> None:
                length = int(self.headers.get("content-length") or 0)
                body = self.rfile.read(length).decode() if length else ""
                parts = urlsplit(self.path)
                with server.lock:
                    server.requests.append({
                        "method": self.command, "path": parts.path, "query": dict(parse_qsl(parts.query)),
                        "headers": {k.lower(): v for k, v in self.headers.items()}, "body": body,
                    })
                    step = server.script.popleft() if server.script else Answer()
                if isinstance(step, Drop):
                    self.close_connection = True
                    return
                time.sleep(step.delay_s)
                raw = step.body if isinstance(step.body, bytes) else (
                    step.body.encode() if isinstance(step.body, str) else json.dumps(step.body).encode()
                )
                try:
                    self.send_response(step.status)
                    self.send_header("Content-Type", step.content_type)
                    if step.declare_length:
                        self.send_header("Content-Length", str(len(raw)))
                    else:
                        self.send_header("Connection", "close")
                        self.close_connection = True
                    self.end_headers()
                    self.wfile.write(raw)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (timeout, size cap): what the test wanted

            do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = handle_any

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def url(self, path: str = "/tools/lookup") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def push(self, *steps: Answer | Drop) -> None:
        with self.lock:
            self.script.extend(steps)

    def reset(self) -> None:
        with self.lock:
            self.script.clear()
            self.requests.clear()

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture(scope="session")
def tool_server_session() -> Iterator[ToolServer]:
    server = ToolServer()
    yield server
    server.stop()


@pytest.fixture
def tool_server(tool_server_session: ToolServer) -> Iterator[ToolServer]:
    tool_server_session.reset()
    yield tool_server_session
    tool_server_session.reset()


@pytest.fixture(scope="module")
def open_backend(backend: Backend) -> Iterator[Backend]:
    """The same database served by a second app that lets tools reach loopback."""
    settings = backend.settings.model_copy(update={"allow_private_networks": True})
    with ServerThread(settings) as server:
        yield dataclasses.replace(backend, url=server.url, server=server)


@pytest.fixture
def tools_api(api: Api, open_backend: Backend) -> Iterator[Api]:
    """``api``'s workspace and key, through the app whose tools may call loopback."""
    client = Api(open_backend, api.ws, api.key)
    yield client
    client.close()


# --- helpers -------------------------------------------------------------------------


def call(name: str, args: Any = None, *, id: str = "call_1", raw: str | None = None) -> dict[str, Any]:
    arguments = raw if raw is not None else json.dumps(args if args is not None else {})
    return {"id": id, "type": "function", "function": {"name": name, "arguments": arguments}}


LOOKUP_PARAMETERS = {
    "type": "object",
    "properties": {"q": {"type": "integer", "description": "What to look up."}},
    "required": ["q"],
}


def custom_tool(url: str, **fields: Any) -> dict[str, Any]:
    return {"type": "custom", "name": "lookup", "description": "Look something up.", "url": url,
            "parameters": LOOKUP_PARAMETERS, **fields}


def tool_chat(api: Api, tools: list[dict[str, Any]], **llm_fields: Any) -> str:
    return make_chat(api, make_agent(api, make_llm(api, general_tools=tools, **llm_fields)))["chatId"]


def result_of(message: dict[str, Any], index: int = 0) -> dict[str, Any]:
    return message["tool_calls"][index]["result"]


def run_lookup(api: Api, model: ScriptedModel, tool_server: ToolServer, *, args: Any = None,
               **tool_fields: Any) -> tuple[str, list[dict[str, Any]]]:
    """One turn: the model calls ``lookup`` once, then says "done"; the agent's messages."""
    chat_id = tool_chat(api, [custom_tool(tool_server.url(), **tool_fields)])
    model.push(Reply("", tool_calls=[call("lookup", args if args is not None else {"q": 1})]), Reply("done"))
    response = say(api, chat_id, "look it up")
    assert response.status_code == 201, response.text
    messages = response.json()["messages"]
    assert [m["content"] for m in messages] == ["", "done"]
    return chat_id, messages


def workspace_key(api: Api) -> str:
    from sqlalchemy import select

    from chatplane.models import Workspace

    async def work(session):  # type: ignore[no-untyped-def]
        return await session.scalar(select(Workspace.webhook_key).where(Workspace.id == api.ws))

    return api.backend.run(work)


# --- what the model is offered -----------------------------------------------------------


def test_the_model_is_offered_general_state_and_transition_tools(api: Api, model: ScriptedModel) -> None:
    llm = make_llm(
        api,
        general_tools=[
            {"type": "end_chat", "name": "hang_up", "description": "Say goodbye first."},
            custom_tool("https://tools.example.com/lookup"),
        ],
        states=[
            {"name": "intake", "state_prompt": "Collect.", "edges": [
                {"destination_state_name": "billing", "description": "When they ask about money.",
                 "parameters": {"type": "object", "properties": {"why": {"type": "string"}}}},
            ], "tools": [{"type": "extract_dynamic_variable", "name": "remember", "description": "Keep the plan.",
                          "variables": [{"type": "enum", "name": "plan", "description": "Their plan.",
                                         "choices": ["free", "pro"], "required": True},
                                        {"type": "number", "name": "seats", "description": "Seats."}]}]},
            {"name": "billing", "state_prompt": "Bill."},
        ],
        starting_state="intake",
    )
    say(api, make_chat(api, make_agent(api, llm))["chatId"], "hi")
    request = model.requests[-1]
    functions = {t["function"]["name"]: t["function"] for t in request["tools"]}
    assert all(t["type"] == "function" for t in request["tools"])
    assert list(functions) == ["hang_up", "lookup", "remember", "transition_to_billing"]
    assert functions["hang_up"] == {"name": "hang_up", "description": "Say goodbye first.",
                                    "parameters": {"type": "object", "properties": {}}}
    assert functions["lookup"]["parameters"] == LOOKUP_PARAMETERS
    assert functions["remember"]["parameters"] == {
        "type": "object",
        "properties": {"plan": {"type": "string", "enum": ["free", "pro"], "description": "Their plan."},
                       "seats": {"type": "number", "description": "Seats."}},
        "required": ["plan"],
        "additionalProperties": False,
    }
    assert functions["transition_to_billing"] == {
        "name": "transition_to_billing", "description": "When they ask about money.",
        "parameters": {"type": "object", "properties": {"why": {"type": "string"}}},
    }
    assert "tool_choice" not in request


def test_an_llm_without_tools_sends_none(api: Api, model: ScriptedModel) -> None:
    say(api, make_chat(api)["chatId"], "hi")
    assert "tools" not in model.requests[-1] and "tool_choice" not in model.requests[-1]


# --- custom tools: the happy path ----------------------------------------------------------


def test_custom_tool_call_signed_with_chat_context_and_result_back_to_the_model(
    tools_api: Api, model: ScriptedModel, tool_server: ToolServer
) -> None:
    tool_server.push(Answer(body={"data": {"user": {"name": "Ada", "age": 36}, "tags": ["a", "b"]}}))
    chat_id, messages = run_lookup(
        tools_api, model, tool_server,
        headers={"X-Api-Token": "t0k"}, query_params={"region": "eu"},
        response_variables={"user_name": "data.user.name", "user_age": "data.user.age",
                            "first_tag": "data.tags[0]", "absent": "data.nope",
                            # A digit to str.isdigit that int() refuses: absent, not a 500.
                            "superscript": "data.tags.\u00b9"},
    )
    [request] = tool_server.requests
    assert request["method"] == "POST" and request["path"] == "/tools/lookup"
    assert request["query"] == {"region": "eu"}
    assert request["headers"]["x-api-token"] == "t0k"
    assert request["headers"]["content-type"] == "application/json"
    assert request["headers"]["host"] == f"127.0.0.1:{tool_server.port}"
    body = json.loads(request["body"])
    assert body["name"] == "lookup" and body["args"] == {"q": 1}
    assert body["chat"]["chat_id"] == chat_id and body["chat"]["agent_id"].startswith("chat_agent_")
    assert body["chat"]["variables"]["chat_id"] == chat_id
    # Signed like webhooks, with the workspace's key.
    signature = request["headers"]["x-retell-signature"]
    assert signing.verify(request["body"], workspace_key(tools_api), signature)
    assert not signing.verify(request["body"], "another key", signature)

    # The answer: the call with its result, then the final words.
    tool_message = messages[0]
    assert tool_message["role"] == "assistant"
    [stored_call] = tool_message["tool_calls"]
    assert stored_call["id"] == "call_1" and stored_call["type"] == "function"
    assert stored_call["function"] == {"name": "lookup", "arguments": '{"q": 1}'}
    assert stored_call["result"]["successful"] is True
    assert json.loads(stored_call["result"]["content"])["data"]["user"]["name"] == "Ada"
    # The model's second request carries the call and its result.
    assert len(model.requests) == 2
    assert model.requests[1]["messages"][-2:] == [
        {"role": "assistant", "content": "",
         "tool_calls": [{"id": "call_1", "type": "function", "function": {"name": "lookup", "arguments": '{"q": 1}'}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": stored_call["result"]["content"]},
    ]
    # GET chat shows the same messages, and the variables the answer gave.
    chat = tools_api.get(f"/api/chats/{chat_id}").json()
    assert chat["messages"][1:] == messages
    assert chat["collectedDynamicVariables"] == {"user_name": "Ada", "user_age": "36", "first_tag": "a"}
    assert chat["transcript"] == "User: look it up\nAgent: done\n"
    assert_matches_seed(chat, "Chat")


def test_arguments_at_root_and_a_get_request(tools_api: Api, model: ScriptedModel, tool_server: ToolServer) -> None:
    run_lookup(tools_api, model, tool_server, args_at_root=True)
    assert json.loads(tool_server.requests[-1]["body"]) == {"q": 1}

    tool_server.reset()
    run_lookup(tools_api, model, tool_server, method="GET", query_params={"q": "configured", "v": "2"},
               args={"q": 7, "name": "x"}, parameters={"type": "object", "properties": {}})
    [request] = tool_server.requests
    assert request["method"] == "GET" and request["body"] == ""
    # The arguments travel in the query; a configured parameter wins.
    assert request["query"] == {"q": "configured", "name": "x", "v": "2"}
    assert signing.verify("", workspace_key(tools_api), request["headers"]["x-retell-signature"])


def test_a_plain_text_answer_is_fine_without_response_variables(
    tools_api: Api, model: ScriptedModel, tool_server: ToolServer
) -> None:
    tool_server.push(Answer(body="It is sunny.", content_type="text/plain"))
    _, messages = run_lookup(tools_api, model, tool_server)
    assert result_of(messages[0]) == {"content": "It is sunny.", "successful": True}


def test_every_model_call_records_its_tokens(tools_api: Api, model: ScriptedModel, tool_server: ToolServer) -> None:
    from sqlalchemy import select

    from chatplane.models import ChatMessage

    chat_id = tool_chat(tools_api, [custom_tool(tool_server.url())])
    model.push(Reply("", tool_calls=[call("lookup", {"q": 1})], prompt_tokens=100, completion_tokens=7),
               Reply("done", prompt_tokens=130, completion_tokens=3))
    say(tools_api, chat_id, "go")

    async def usage(session):  # type: ignore[no-untyped-def]
        rows = await session.execute(
            select(ChatMessage.role, ChatMessage.model, ChatMessage.prompt_tokens, ChatMessage.completion_tokens)
            .where(ChatMessage.chat_id == chat_id).order_by(ChatMessage.seq)
        )
        return [tuple(r) for r in rows]

    assert tools_api.backend.run(usage) == [
        ("user", None, 0, 0), ("assistant", "scripted-model", 100, 7), ("assistant", "scripted-model", 130, 3),
    ]


# --- custom tools: every way they fail ----------------------------------------------------


def test_a_5xx_is_retried_and_then_succeeds(tools_api: Api, model: ScriptedModel, tool_server: ToolServer) -> None:
    tool_server.push(Answer(500, {"error": "blip"}), Answer(200, {"fine": True}))
    _, messages = run_lookup(tools_api, model, tool_server)
    assert result_of(messages[0]) == {"content": '{"fine": true}', "successful": True}
    assert len(tool_server.requests) == 2
    # Each attempt is signed afresh.
    key = workspace_key(tools_api)
    assert all(signing.verify(r["body"], key, r["headers"]["x-retell-signature"]) for r in tool_server.requests)


def test_a_dropped_connection_is_retried(tools_api: Api, model: ScriptedModel, tool_server: ToolServer) -> None:
    tool_server.push(Drop(), Answer(200, {"fine": True}))
    _, messages = run_lookup(tools_api, model, tool_server)
    assert result_of(messages[0])["successful"] is True
    assert len(tool_server.requests) == 2


def test_5xx_until_the_retries_run_out(tools_api: Api, model: ScriptedModel, tool_server: ToolServer) -> None:
    tool_server.push(*[Answer(503, "overloaded", content_type="text/plain")] * 3)
    _, messages = run_lookup(tools_api, model, tool_server, max_retry=1)
    result = result_of(messages[0])
    assert result["successful"] is False
    assert result["content"] == "lookup: answered HTTP 503: overloaded (after 2 attempts)"
    assert len(tool_server.requests) == 2
    # The model heard about it and the turn went on.
    assert model.requests[1]["messages"][-1] == {"role": "tool", "tool_call_id": "call_1", "content": result["content"]}


def test_a_4xx_is_not_retried(tools_api: Api, model: ScriptedModel, tool_server: ToolServer) -> None:
    tool_server.push(Answer(404, {"error": "no such thing"}))
    _, messages = run_lookup(tools_api, model, tool_server)
    assert result_of(messages[0]) == {"content": 'lookup: answered HTTP 404: {"error": "no such thing"}',
                                      "successful": False}
    assert len(tool_server.requests) == 1


def test_a_timeout(tools_api: Api, model: ScriptedModel, tool_server: ToolServer) -> None:
    tool_server.push(Answer(delay_s=3))
    started = time.monotonic()
    _, messages = run_lookup(tools_api, model, tool_server, timeout_ms=1000, max_retry=0)
    assert time.monotonic() - started < 2.5
    assert result_of(messages[0]) == {"content": "lookup: no answer within 1000 ms (after 1 attempt)",
                                      "successful": False}


def test_an_answer_that_is_not_json_when_variables_are_wanted(
    tools_api: Api, model: ScriptedModel, tool_server: ToolServer
) -> None:
    tool_server.push(Answer(body="<html>oops</html>", content_type="text/html"))
    chat_id, messages = run_lookup(tools_api, model, tool_server, response_variables={"name": "data.name"})
    result = result_of(messages[0])
    assert result["successful"] is False
    assert "not JSON" in result["content"] and "name" in result["content"] and "<html>oops" in result["content"]
    assert tools_api.get(f"/api/chats/{chat_id}").json()["collectedDynamicVariables"] == {}


@pytest.mark.parametrize("declared", [True, False], ids=["content-length", "until-close"])
def test_an_oversized_answer(tools_api: Api, model: ScriptedModel, tool_server: ToolServer, declared: bool) -> None:
    tool_server.push(Answer(body=b"x" * (MAX_RESPONSE_BYTES + 10), content_type="text/plain", declare_length=declared))
    _, messages = run_lookup(tools_api, model, tool_server)
    result = result_of(messages[0])
    assert result["successful"] is False and "response too large" in result["content"]
    assert len(tool_server.requests) == 1  # not retried


@pytest.mark.parametrize(
    "host", ["127.0.0.1:{port}", "localhost:{port}", "[::1]:{port}", "169.254.169.254", "10.1.2.3", "0.0.0.0:{port}"]
)
def test_private_addresses_are_refused_by_default(
    api: Api, model: ScriptedModel, tool_server: ToolServer, host: str
) -> None:
    url = f"http://{host.format(port=tool_server.port)}/tools/lookup"
    chat_id = tool_chat(api, [custom_tool(url, max_retry=2)])
    model.push(Reply("", tool_calls=[call("lookup", {"q": 1})]), Reply("done"))
    messages = say(api, chat_id, "look it up").json()["messages"]
    result = result_of(messages[0])
    assert result["successful"] is False
    # Never what the host resolved to: that would map the internal network for a tenant.
    assert result["content"] == "lookup: refused: not a public address"
    assert tool_server.requests == []


def test_invalid_arguments_make_no_call(tools_api: Api, model: ScriptedModel, tool_server: ToolServer) -> None:
    chat_id = tool_chat(tools_api, [custom_tool(tool_server.url())])
    model.push(
        Reply("", tool_calls=[call("lookup", {"q": "one"}, id="a"), call("lookup", {}, id="b"),
                              call("lookup", raw="{not json", id="c"), call("lookup", raw="[1]", id="d")]),
        Reply("done"),
    )
    messages = say(tools_api, chat_id, "look it up").json()["messages"]
    results = [c["result"] for c in messages[0]["tool_calls"]]
    assert [r["successful"] for r in results] == [False] * 4
    assert results[0]["content"] == "lookup: invalid arguments: q: 'one' is not of type 'integer'"
    assert results[1]["content"] == "lookup: invalid arguments: 'q' is a required property"
    assert results[2]["content"].startswith("lookup: the arguments are not valid JSON")
    assert results[3]["content"] == "lookup: the arguments must be a JSON object"
    assert tool_server.requests == []


def test_a_tool_the_model_made_up(tools_api: Api, model: ScriptedModel, tool_server: ToolServer) -> None:
    chat_id = tool_chat(tools_api, [custom_tool(tool_server.url())])
    model.push(Reply("", tool_calls=[call("launch_rockets", {})]), Reply("done"))
    messages = say(tools_api, chat_id, "go").json()["messages"]
    assert result_of(messages[0]) == {
        "content": "there is no tool named 'launch_rockets' (tools: lookup)", "successful": False,
    }
    assert tool_server.requests == []


# --- extract_dynamic_variable ------------------------------------------------------------

REMEMBER = {
    "type": "extract_dynamic_variable", "name": "remember", "description": "Keep what they said.",
    "variables": [
        {"type": "enum", "name": "plan", "description": "Their plan.", "choices": ["free", "pro"]},
        {"type": "boolean", "name": "callback", "description": "Wants a call back."},
        {"type": "number", "name": "seats", "description": "Seats."},
        {"type": "string", "name": "city", "description": "Their city."},
    ],
}


def test_extracted_variables_are_collected_and_win_over_every_other_variable(
    api: Api, model: ScriptedModel
) -> None:
    llm = make_llm(api, general_prompt="plan={{plan}} city={{city}} seats={{seats}}", general_tools=[REMEMBER],
                   default_dynamic_variables={"plan": "llm", "city": "llm", "seats": "llm"})
    agent = make_agent(api, llm, uponai_dynamic_variables={"plan": "agent"})
    chat_id = make_chat(api, agent, uponai_dynamic_variables={"plan": "chat"})["chatId"]
    api.patch(f"/api/chats/{chat_id}", {"override_dynamic_variables": {"plan": "override", "city": "override"}})
    model.push(
        Reply("", tool_calls=[call("remember", {"plan": "pro", "callback": True, "seats": 12, "city": "Oslo"})]),
        Reply("noted"),
        Reply("next turn"),
    )
    messages = say(api, chat_id, "pro plan, 12 seats, Oslo, call me back").json()["messages"]
    assert result_of(messages[0]) == {"content": "stored plan=pro, callback=true, seats=12, city=Oslo",
                                      "successful": True}
    collected = {"plan": "pro", "callback": "true", "seats": "12", "city": "Oslo"}
    assert api.get(f"/api/chats/{chat_id}").json()["collectedDynamicVariables"] == collected
    # The very next model call of the turn already sees them...
    assert model.requests[0]["messages"][0]["content"] == "plan=override city=override seats=llm"
    assert model.requests[1]["messages"][0]["content"] == "plan=pro city=Oslo seats=12"
    # ...and so does the next turn, after every other layer.
    say(api, chat_id, "thanks")
    assert model.requests[2]["messages"][0]["content"] == "plan=pro city=Oslo seats=12"


def test_extracted_values_must_fit_their_declaration(api: Api, model: ScriptedModel) -> None:
    chat_id = tool_chat(api, [REMEMBER])
    model.push(
        Reply("", tool_calls=[call("remember", {"plan": "platinum", "seats": "many"}, id="a"),
                              call("remember", {"favourite": "blue"}, id="b"),
                              call("remember", {"callback": "yes"}, id="c"),
                              call("remember", {}, id="d")]),
        Reply("hm"),
    )
    messages = say(api, chat_id, "platinum, lots").json()["messages"]
    results = [c["result"] for c in messages[0]["tool_calls"]]
    assert [r["successful"] for r in results] == [False] * 4
    assert results[0]["content"] == (
        "remember: invalid arguments: plan: 'platinum' is not one of ['free', 'pro']; "
        "seats: 'many' is not of type 'number'"
    )
    assert "'favourite' was unexpected" in results[1]["content"]
    assert results[2]["content"] == "remember: invalid arguments: callback: 'yes' is not of type 'boolean'"
    assert results[3]["content"] == "remember: no variables given, nothing stored"
    assert api.get(f"/api/chats/{chat_id}").json()["collectedDynamicVariables"] == {}


# --- state transitions --------------------------------------------------------------------

STATES = [
    {"name": "intake", "state_prompt": "Find out what they need.",
     "edges": [{"destination_state_name": "billing", "description": "Money questions.",
                "parameters": {"type": "object", "properties": {"topic": {"type": "string"}}, "required": ["topic"]}}],
     "tools": [{"type": "end_chat", "name": "intake_done"}]},
    {"name": "billing", "state_prompt": "Talk about {{topic_hint}}.",
     "tools": [{"type": "extract_dynamic_variable", "name": "note_invoice", "description": "Invoice number.",
                "variables": [{"type": "string", "name": "invoice", "description": "The invoice."}]}]},
]


def test_a_transition_changes_the_prompt_and_tools_of_the_next_call(api: Api, model: ScriptedModel) -> None:
    llm = make_llm(api, general_prompt="General.", states=STATES, starting_state="intake",
                   default_dynamic_variables={"topic_hint": "invoices"})
    chat_id = make_chat(api, make_agent(api, llm))["chatId"]
    model.push(
        Reply("", tool_calls=[call("transition_to_billing", {}, id="bad"),
                              call("transition_to_billing", {"topic": "refund"}, id="good"),
                              call("transition_to_billing", {"topic": "again"}, id="twice")]),
        Reply("Billing here."),
        Reply("Still billing."),
    )
    messages = say(api, chat_id, "I want a refund").json()["messages"]
    results = [c["result"] for c in messages[0]["tool_calls"]]
    assert results == [
        {"content": "transition_to_billing: invalid arguments: 'topic' is a required property", "successful": False},
        {"content": "moved to state billing", "successful": True},
        {"content": "transition_to_billing: the chat already moved to state 'billing' in this step",
         "successful": False},
    ]
    before, after = model.requests[0], model.requests[1]
    assert before["messages"][0]["content"] == "General.\n\nFind out what they need."
    assert [t["function"]["name"] for t in before["tools"]] == ["intake_done", "transition_to_billing"]
    assert after["messages"][0]["content"] == "General.\n\nTalk about invoices."
    assert [t["function"]["name"] for t in after["tools"]] == ["note_invoice"]
    # The state is kept for the next turn.
    say(api, chat_id, "so?")
    assert model.requests[2]["messages"][0]["content"] == "General.\n\nTalk about invoices."


# --- end_chat ----------------------------------------------------------------------------------


def test_end_chat_ends_the_chat_after_the_agents_last_words(api: Api, model: ScriptedModel) -> None:
    chat_id = tool_chat(api, [{"type": "end_chat", "name": "end_chat"}])
    model.push(Reply("", tool_calls=[call("end_chat")]), Reply("Goodbye!"))
    response = say(api, chat_id, "that's all, bye")
    assert response.status_code == 201
    assert_matches_seed(response.json(), "ChatCompletionResponse")
    messages = response.json()["messages"]
    assert [m["content"] for m in messages] == ["", "Goodbye!"]
    assert result_of(messages[0]) == {"content": "ending the chat", "successful": True}
    # The last call may only speak.
    assert model.requests[1]["tool_choice"] == "none"
    chat = api.get(f"/api/chats/{chat_id}").json()
    assert chat["status"] == "ended" and chat["endedAt"] is not None
    assert chat["messages"][1:] == messages
    assert chat["transcript"].endswith("Agent: Goodbye!\n")
    assert_error(say(api, chat_id, "wait"), 409, "chat_ended")
    assert api.post(f"/api/chats/{chat_id}/end").status_code == 409


def test_end_chat_queues_what_an_ending_causes_with_the_turn(api: Api, model: ScriptedModel) -> None:
    from sqlalchemy import select

    from chatplane.models import Chat, Job, WebhookDelivery

    llm = make_llm(api, general_tools=[{"type": "end_chat", "name": "end_chat"}])
    # A closed local port: the delivery itself is not what this test is about.
    agent = make_agent(api, llm, webhook_url="http://127.0.0.1:9/hook", webhook_events=["chat_ended"])
    chat_id = make_chat(api, agent)["chatId"]
    model.push(Reply("Bye!", tool_calls=[call("end_chat")]), Reply(""))
    messages = say(api, chat_id, "bye").json()["messages"]
    assert [m["content"] for m in messages] == ["Bye!", ""]

    async def state(session):  # type: ignore[no-untyped-def]
        chat = await session.get(Chat, chat_id)
        events = (await session.scalars(select(WebhookDelivery.event).where(WebhookDelivery.chat_id == chat_id))).all()
        analysis = (await session.scalars(select(Job.kind).where(Job.dedupe_key == f"analyze:{chat_id}"))).all()
        return chat.status, chat.end_reason, list(events), list(analysis)

    assert api.backend.run(state) == ("ended", "end_chat_tool", ["chat_ended"], ["chat.analyze"])


# --- the loop itself ---------------------------------------------------------------------------------


def test_tool_rounds_are_bounded(api: Api, model: ScriptedModel) -> None:
    chat_id = tool_chat(api, [REMEMBER])
    model.push(*[Reply("", tool_calls=[call("remember", {"city": f"c{i}"}, id=f"call_{i}")])
                 for i in range(MAX_TOOL_ROUNDS + 1)])
    messages = say(api, chat_id, "loop").json()["messages"]
    assert len(model.requests) == MAX_TOOL_ROUNDS + 1
    assert [r.get("tool_choice") for r in model.requests] == [None] * MAX_TOOL_ROUNDS + ["none"]
    assert len(messages) == MAX_TOOL_ROUNDS + 1
    assert all(result_of(m)["successful"] for m in messages[:-1])
    # A provider that ignores tool_choice: the last calls are kept, not run.
    assert result_of(messages[-1]) == {
        "content": f"not run: this turn reached its limit of {MAX_TOOL_ROUNDS} tool rounds", "successful": False,
    }
    assert api.get(f"/api/chats/{chat_id}").json()["collectedDynamicVariables"] == {"city": f"c{MAX_TOOL_ROUNDS - 1}"}
    # The history stays well formed for the next turn: every call has its tool message.
    model.push(Reply("ok"))
    say(api, chat_id, "and?")
    history = model.requests[-1]["messages"]
    assert sum(1 for m in history if m["role"] == "tool") == MAX_TOOL_ROUNDS + 1


def test_later_turns_see_the_tool_traffic_from_cache_and_from_the_database(
    api: Api, tools_api: Api, model: ScriptedModel
) -> None:
    chat_id = tool_chat(api, [REMEMBER])
    model.push(Reply("Let me note that.", tool_calls=[call("remember", {"city": "Rome"})]), Reply("Noted."),
               Reply("second"), Reply("third"))
    say(api, chat_id, "Rome")
    say(api, chat_id, "again")  # this process's cache
    cached = model.requests[-1]["messages"]
    say(tools_api, chat_id, "again")  # another app: rebuilt from the stored messages
    rebuilt = model.requests[-1]["messages"]
    expected = [
        {"role": "user", "content": "Rome"},
        {"role": "assistant", "content": "Let me note that.", "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "remember", "arguments": '{"city": "Rome"}'}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "stored city=Rome"},
        {"role": "assistant", "content": "Noted."},
        {"role": "user", "content": "again"},
    ]
    assert cached == expected
    assert rebuilt[:-2] == expected
    assert rebuilt[-2:] == [{"role": "assistant", "content": "second"}, {"role": "user", "content": "again"}]


def test_streaming_a_tool_turn(api: Api, model: ScriptedModel) -> None:
    chat_id = tool_chat(api, [REMEMBER])
    model.push(Reply("One moment.", tool_calls=[call("remember", {"city": "Lima"})]), Reply("All set"))
    status, events = stream_events(api, chat_id, "Lima")
    assert status == 201
    assert [kind for kind, _ in events] == ["delta", "delta", "delta", "delta", "done"]
    assert "".join(e["content"] for k, e in events if k == "delta") == "One moment.All set"
    done = events[-1][1]
    assert [m["content"] for m in done["messages"]] == ["One moment.", "All set"]
    assert result_of(done["messages"][0]) == {"content": "stored city=Lima", "successful": True}
    assert api.get(f"/api/chats/{chat_id}").json()["messages"][1:] == done["messages"]


def test_idempotent_retry_of_a_tool_turn_replays_without_calling_again(
    tools_api: Api, model: ScriptedModel, tool_server: ToolServer
) -> None:
    chat_id = tool_chat(tools_api, [custom_tool(tool_server.url())])
    model.push(Reply("", tool_calls=[call("lookup", {"q": 1})]), Reply("done"))
    first = say(tools_api, chat_id, "go", headers={"Idempotency-Key": "t-1"})
    again = say(tools_api, chat_id, "go", headers={"Idempotency-Key": "t-1"})
    assert again.json() == first.json() and again.headers.get("idempotent-replayed") == "true"
    assert len(tool_server.requests) == 1 and len(model.requests) == 2


def test_a_tool_turn_right_after_a_draft_edit_runs_its_tool_once_with_the_new_prompt(
    tools_api: Api, api: Api, model: ScriptedModel, tool_server: ToolServer, open_backend: Backend,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """PostgreSQL: the turn right after the last one starts from that turn's
    chat row (``locks.HeldOver``); before a tool runs its configurations are
    checked, so a draft edited meanwhile (here through another process) means
    the start is thrown away before the tool is called, not after."""
    hold_locks_over(open_backend.server, monkeypatch)
    llm = make_llm(api, general_prompt="Prompt A.", general_tools=[custom_tool(tool_server.url())])
    chat_id = make_chat(api, make_agent(api, llm))["chatId"]
    assert say(tools_api, chat_id, "hello").status_code == 201
    assert api.patch(f"/api/llms/{llm['llm_id']}", {"general_prompt": "Prompt B."}).status_code == 200
    tool_server.push(Answer())
    model.push(Reply("", tool_calls=[call("lookup", {"q": 1})], when="Prompt A."),
               Reply("", tool_calls=[call("lookup", {"q": 2})], when="Prompt B."), Reply("done"))
    response = say(tools_api, chat_id, "look it up")
    assert response.status_code == 201, response.text
    [request] = tool_server.requests  # called once, with what the new prompt's call asked
    assert json.loads(request["body"])["args"] == {"q": 2}
    systems = [r["messages"][0]["content"] for r in model.requests]
    held_over = api.backend.kind == "postgresql"
    assert systems == ["Prompt A.", *(["Prompt A."] if held_over else []), "Prompt B.", "Prompt B."]
    assert [m["content"] for m in tools_api.get(f"/api/chats/{chat_id}").json()["messages"]] == [
        "hello", "ok", "look it up", "", "done"]
