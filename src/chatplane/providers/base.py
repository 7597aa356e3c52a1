"""What every model client takes and gives back."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol

from chatplane.errors import AppError

OnDelta = Callable[[str], Awaitable[None]]


class ProviderError(AppError):
    """The model provider failed after the retries it was allowed."""

    status = 502
    code = "provider_error"


class ProviderTimeout(AppError):
    status = 504
    code = "provider_timeout"


def dumps(value: Any) -> str:
    """Compact JSON, as the ``openai`` client writes request bodies."""
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"), allow_nan=False)


class Message(dict[str, Any]):
    """A model-facing message of a chat's history that keeps its own JSON.

    The whole history goes to the model on every turn: encoding it afresh cost
    ~0.5 ms a turn by turn 500 (a 1,000-message chat), joining the kept
    encodings ~0.02 ms. History is append-only: a message never changes once
    made, so its JSON stays true.
    """

    __slots__ = ("json",)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.json = dumps(self)


def messages_json(messages: Iterable[dict[str, Any]]) -> str:
    """The JSON array of ``messages``, reusing what each ``Message`` kept."""
    return "[" + ",".join(m.json if type(m) is Message else dumps(m) for m in messages) + "]"


@dataclass(slots=True)
class ModelRequest:
    messages: list[dict[str, Any]]
    temperature: float = 0.0
    max_tokens: int | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: Any = None
    response_format: dict[str, Any] | None = None
    # Constrain the reply to JSON matching this schema; each client says it
    # the way its backend understands (OpenAI json_schema, llama.cpp grammar).
    json_schema: dict[str, Any] | None = None


    def options(self, *, json_schema_format: Any) -> dict[str, Any]:
        """The OpenAI-protocol request options (all but the model and messages).

        ``json_schema_format(schema)`` says how this backend wants structured
        output asked for (OpenAI: ``json_schema``; llama.cpp: ``json_object``
        with a ``schema``, which it compiles to a grammar).
        """
        options: dict[str, Any] = {"temperature": self.temperature}
        if self.max_tokens:
            options["max_tokens"] = self.max_tokens
        if self.tools:
            options["tools"] = self.tools
            if self.tool_choice is not None:
                options["tool_choice"] = self.tool_choice
        if self.response_format:
            options["response_format"] = self.response_format
        if self.json_schema:
            options["response_format"] = json_schema_format(self.json_schema)
        return options


@dataclass(slots=True)
class ModelReply:
    content: str
    tool_calls: list[dict[str, Any]] = field(default_factory=list)
    prompt_tokens: int = 0
    completion_tokens: int = 0
    finish_reason: str | None = None


class ModelClient(Protocol):
    async def complete(
        self, model: str, request: ModelRequest, on_delta: OnDelta | None = None
    ) -> ModelReply:
        """Run one completion. With ``on_delta``, stream: text deltas are passed
        to it as they arrive, and the whole reply is still returned at the end."""
        ...

    async def embed(self, model: str, texts: list[str]) -> list[list[float]]:
        """One vector per text, in order."""
        ...
