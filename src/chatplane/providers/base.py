"""What every model client takes and gives back."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
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
