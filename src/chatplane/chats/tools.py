"""Tools the model may call during a turn: what it is offered, and running a call.

What the model is offered in a state (``toolbox``): the LLM's ``general_tools``,
the current state's ``tools`` and one ``transition_to_<state>`` function per
edge of that state, as OpenAI ``tools`` definitions.

Running a call (``ToolRunner.run``) never raises for anything the model, the
configuration or the remote endpoint did: every failure is an unsuccessful
``ToolResult`` whose content says what went wrong, and the model reads it like
any other result. What a call changes in the chat (its state, its collected
variables, whether it ends) is gathered in ``TurnEffects`` and written by the
turn, with its messages, in one transaction.

Custom tools are the only calls that leave the process. They are signed like
webhooks (``X-Retell-Signature``, the workspace's webhook key), bounded in
time (``timeout_ms`` per attempt), in retries (``max_retry``, on 5xx,
connection errors and timeouts) and in size (``MAX_RESPONSE_BYTES``), and they
may not reach loopback, private, link-local or reserved addresses unless the
``allow_private_networks`` setting says so (``chatplane.outbound``).
"""

from __future__ import annotations

import asyncio
import json
import math
import re
from dataclasses import dataclass, field
from typing import Any

import httpx
from jsonschema import Draft202012Validator
from referencing.exceptions import Unresolvable

from chatplane import outbound, signing
from chatplane.providers.base import Message

TRANSITION_PREFIX = "transition_to_"
NO_ARGUMENTS: dict[str, Any] = {"type": "object", "properties": {}}
# A custom tool's answer is read up to this many bytes; a bigger one fails.
MAX_RESPONSE_BYTES = 64 * 1024
# What of an answer goes back to the model (Retell caps results at 15,000
# characters); response_variables are still read from the whole answer.
MAX_RESULT_CHARS = 15_000
RETRY_BASE_S = 0.2
RETRY_CAP_S = 2.0
BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})


@dataclass(frozen=True, slots=True)
class ToolResult:
    content: str
    successful: bool

    def as_json(self) -> dict[str, Any]:
        return {"content": self.content, "successful": self.successful}


def _failed(message: str) -> ToolResult:
    return ToolResult(message, False)


@dataclass(slots=True)
class TurnEffects:
    """What the turn's tool calls changed; the turn writes it with its messages."""

    state: str | None
    collected: dict[str, str]
    end_chat: bool = False
    changed: bool = False  # state or collected variables differ from what was read


@dataclass(frozen=True, slots=True)
class ChatContext:
    """The little of the chat a custom tool is told, and the key it is signed with."""

    chat_id: str
    agent_id: str
    variables: dict[str, str]
    webhook_key: str | None

    def as_json(self) -> dict[str, Any]:
        return {"chat_id": self.chat_id, "agent_id": self.agent_id, "variables": self.variables}


@dataclass(frozen=True, slots=True)
class Toolbox:
    """The tools offered in one state: OpenAI definitions, and each tool's configuration by name."""

    state: str | None
    definitions: list[dict[str, Any]]
    by_name: dict[str, dict[str, Any]] = field(default_factory=dict)


# --- what the model is offered ------------------------------------------------


def has_tools(llm: dict[str, Any]) -> bool:
    """Cheap test for the hot path: can this LLM offer any tool at all?"""
    return bool(llm.get("general_tools") or llm.get("states"))


def toolbox(llm: dict[str, Any], state_name: str | None) -> Toolbox | None:
    """The tools of ``state_name`` (general ones included); None when there are none."""
    tools: list[dict[str, Any]] = list(llm.get("general_tools") or [])
    edges: list[dict[str, Any]] = []
    for state in llm.get("states") or []:
        if state["name"] == state_name:
            tools.extend(state.get("tools") or [])
            edges = state.get("edges") or []
            break
    by_name: dict[str, dict[str, Any]] = {}
    for tool in tools:
        by_name[tool["name"]] = tool
    for edge in edges:
        name = TRANSITION_PREFIX + edge["destination_state_name"]
        # A configured tool that happens to have this name wins over the edge.
        by_name.setdefault(name, {
            "type": "transition", "name": name, "description": edge.get("description"),
            "destination": edge["destination_state_name"], "parameters": edge.get("parameters"),
        })
    if not by_name:
        return None
    definitions = [_definition(tool) for tool in by_name.values()]
    return Toolbox(state=state_name, definitions=definitions, by_name=by_name)


def _definition(tool: dict[str, Any]) -> dict[str, Any]:
    function: dict[str, Any] = {"name": tool["name"]}
    description = tool.get("description")
    if tool["type"] == "end_chat" and not description:
        description = "End the chat once the conversation is over."
    if description:
        function["description"] = description
    function["parameters"] = _parameters(tool)
    return {"type": "function", "function": function}


def _parameters(tool: dict[str, Any]) -> dict[str, Any]:
    if tool["type"] == "extract_dynamic_variable":
        return _variables_schema(tool["variables"])
    if tool["type"] == "end_chat":
        return NO_ARGUMENTS
    return tool.get("parameters") or NO_ARGUMENTS


def _variables_schema(variables: list[dict[str, Any]]) -> dict[str, Any]:
    properties: dict[str, Any] = {}
    for variable in variables:
        kind = variable["type"]
        schema: dict[str, Any] = {"type": "string" if kind == "enum" else kind,
                                  "description": variable["description"]}
        if kind == "enum":
            schema["enum"] = variable["choices"]
        if kind == "string" and variable.get("examples"):
            schema["examples"] = variable["examples"]
        properties[variable["name"]] = schema
    return {
        "type": "object",
        "properties": properties,
        "required": [v["name"] for v in variables if v.get("required")],
        "additionalProperties": False,
    }


# --- the model's history --------------------------------------------------------


def history_messages(role: str, content: str, tool_calls: list[dict[str, Any]] | None) -> list[dict[str, Any]]:
    """The model-facing messages of one stored message: itself, then (for an
    assistant message that called tools) one ``tool`` message per call."""
    if not tool_calls:
        return [Message(role=role, content=content)]
    calls = [{"id": c["id"], "type": "function", "function": c["function"]} for c in tool_calls]
    return [
        Message(role=role, content=content, tool_calls=calls),
        *(Message(role="tool", tool_call_id=c["id"], content=c["result"]["content"]) for c in tool_calls),
    ]


def not_run(call: dict[str, Any], reason: str) -> dict[str, Any]:
    """A call stored with the reason it was not run (it still needs a result)."""
    return {**call, "result": _failed(reason).as_json()}


# --- running a call ---------------------------------------------------------------


class ToolRefused(Exception):
    """The call may not be made at all (a private address); not retried."""


class _TooLarge(Exception):
    pass


class ToolRunner:
    """Runs the model's tool calls; holds the HTTP client custom tools go through."""

    def __init__(self, http: httpx.AsyncClient | None, *, allow_private_networks: bool = False) -> None:
        self.http = http
        self.allow_private_networks = allow_private_networks

    async def run(
        self, call: dict[str, Any], tools: Toolbox | None, effects: TurnEffects, context: ChatContext
    ) -> ToolResult:
        function = call.get("function") or {}
        name = function.get("name") or ""
        tool = tools.by_name.get(name) if tools else None
        if tool is None:
            offered = ", ".join(tools.by_name) if tools else "none"
            return _failed(f"there is no tool named {name!r} (tools: {offered})")
        try:
            args = json.loads(function.get("arguments") or "{}")
        except ValueError as exc:
            return _failed(f"{name}: the arguments are not valid JSON ({exc})")
        if not isinstance(args, dict):
            return _failed(f"{name}: the arguments must be a JSON object")
        problem = _invalid(_parameters(tool), args)
        if problem:
            return _failed(f"{name}: invalid arguments: {problem}")

        kind = tool["type"]
        if kind == "end_chat":
            effects.end_chat = True
            return ToolResult("ending the chat", True)
        if kind == "transition":
            if effects.state != tools.state:  # type: ignore[union-attr]
                return _failed(f"{name}: the chat already moved to state {effects.state!r} in this step")
            effects.state = tool["destination"]
            effects.changed = True
            return ToolResult(f"moved to state {tool['destination']}", True)
        if kind == "extract_dynamic_variable":
            if not args:
                return _failed(f"{name}: no variables given, nothing stored")
            stored = {key: _as_variable(value) for key, value in args.items()}
            effects.collected.update(stored)
            effects.changed = True
            return ToolResult("stored " + ", ".join(f"{k}={v}" for k, v in stored.items()), True)
        return await self._custom(tool, args, effects, context)

    # --- custom tools -----------------------------------------------------------

    async def _custom(
        self, tool: dict[str, Any], args: dict[str, Any], effects: TurnEffects, context: ChatContext
    ) -> ToolResult:
        name = tool["name"]
        if self.http is None:
            return _failed(f"{name}: custom tools cannot be called by this server")
        method = tool.get("method", "POST")
        params = dict(tool.get("query_params") or {})
        if method in BODY_METHODS:
            payload = args if tool.get("args_at_root") else {"name": name, "args": args, "chat": context.as_json()}
            body = json.dumps(payload, separators=(",", ":"), ensure_ascii=False)
        else:
            # GET and DELETE carry no body (Retell signs the empty string for
            # them): the arguments travel in the query, the configured
            # query_params winning over an argument of the same name.
            body = ""
            params = {**{k: v if isinstance(v, str) else json.dumps(v) for k, v in args.items()}, **params}
        try:
            url = outbound.parse_url(tool["url"]).copy_merge_params(params)
        except (outbound.BadURL, httpx.InvalidURL, ValueError) as exc:
            return _failed(f"{name}: bad URL: {exc}")
        timeout_s = tool.get("timeout_ms", 120_000) / 1000
        attempts = tool.get("max_retry", 2) + 1
        failure = ""
        # A bounded loop of our own: httpx's transport retries cover only
        # failed connects, not 5xx answers or timeouts, and no retry library
        # is installed. Each attempt resolves, checks and signs afresh.
        for attempt in range(attempts):
            if attempt:
                await asyncio.sleep(min(RETRY_BASE_S * 2 ** (attempt - 1), RETRY_CAP_S))
            headers = {**(tool.get("headers") or {})}
            if body:
                headers["Content-Type"] = "application/json"
            if context.webhook_key:
                headers[signing.HEADER] = signing.sign(body, context.webhook_key)
            try:
                async with asyncio.timeout(timeout_s):
                    status, text = await self._send(method, url, body, headers, timeout_s)
            except ToolRefused as exc:
                return _failed(f"{name}: {exc}")  # outbound.REFUSED: never what the host resolved to
            except _TooLarge:
                return _failed(f"{name}: response too large (over {MAX_RESPONSE_BYTES} bytes)")
            except (TimeoutError, httpx.TimeoutException):
                failure = f"no answer within {tool.get('timeout_ms', 120_000)} ms"
                continue
            except (httpx.RequestError, OSError) as exc:
                failure = f"request failed: {str(exc) or type(exc).__name__}"
                continue
            except ValueError as exc:  # e.g. a header value that cannot be sent
                return _failed(f"{name}: cannot send the request: {exc}")
            if status >= 500:
                failure = f"answered HTTP {status}: {text[:200]}"
                continue
            if status >= 300:  # 3xx (redirects are not followed) and 4xx: retrying will not help
                return _failed(f"{name}: answered HTTP {status}: {text[:200]}")
            return self._answer(tool, text, effects)
        tries = f"{attempts} attempts" if attempts > 1 else "1 attempt"
        return _failed(f"{name}: {failure} (after {tries})")

    async def _send(
        self, method: str, url: httpx.URL, body: str, headers: dict[str, str], timeout_s: float
    ) -> tuple[int, str]:
        assert self.http is not None
        try:
            answer = await outbound.send(
                self.http, method, url, allow_private=self.allow_private_networks, max_bytes=MAX_RESPONSE_BYTES,
                timeout_s=timeout_s, content=body.encode() if body else None, headers=headers,
            )
        except outbound.PrivateAddress as exc:
            raise ToolRefused(str(exc)) from None
        except outbound.TooLarge:
            raise _TooLarge from None
        return answer.status, answer.body.decode(answer.charset or "utf-8", errors="replace")

    @staticmethod
    def _answer(tool: dict[str, Any], text: str, effects: TurnEffects) -> ToolResult:
        wanted = tool.get("response_variables") or {}
        if wanted:
            try:
                data = json.loads(text)
            except ValueError:
                return _failed(
                    f"{tool['name']}: the answer is not JSON, so its response_variables "
                    f"({', '.join(wanted)}) could not be read: {text[:200]}"
                )
            found = {}
            for variable, path in wanted.items():
                value = _at_path(data, path)
                if value is not None:
                    found[variable] = _as_variable(value)
            if found:
                effects.collected.update(found)
                effects.changed = True
        if len(text) > MAX_RESULT_CHARS:
            text = text[:MAX_RESULT_CHARS] + " …(truncated)"
        return ToolResult(text, True)


def _invalid(schema: dict[str, Any], args: dict[str, Any]) -> str | None:
    """Every way ``args`` breaks ``schema``, said briefly; None when it fits."""
    try:
        errors = sorted(Draft202012Validator(schema).iter_errors(args), key=lambda e: list(e.path))
    except (Unresolvable, RecursionError) as exc:  # a "$ref" we will not fetch, a schema too deep
        return f"the tool's parameters schema cannot be checked ({type(exc).__name__})"
    if not errors:
        return None
    said = []
    for error in errors[:5]:
        where = ".".join(str(p) for p in error.path)
        said.append(f"{where}: {error.message}" if where else error.message)
    return "; ".join(said)


_INDEX = re.compile(r"\[(\d+)\]")


def _at_path(data: Any, path: str) -> Any:
    """``data.user.name`` or ``items[0].id`` (``items.0.id``) in a JSON value; None when absent."""
    for part in _INDEX.sub(r".\1", path).split("."):
        if part == "":
            continue
        if isinstance(data, dict):
            data = data.get(part)
        elif isinstance(data, list) and part.isascii() and part.isdigit() and int(part) < len(data):
            data = data[int(part)]
        else:
            return None
    return data


def _as_variable(value: Any) -> str:
    """Dynamic variables are strings: JSON text for anything that is not one."""
    if isinstance(value, str):
        return value
    if isinstance(value, float) and math.isfinite(value) and value.is_integer():
        return str(int(value))
    return json.dumps(value, ensure_ascii=False)
