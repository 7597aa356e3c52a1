"""Any OpenAI-compatible endpoint, through the ``openai`` client.

Requests go through the client's ``post`` rather than
``chat.completions.create``: ``create`` walks every message of the history
through its typed-dict transformer (5 ms of CPU for a 20-message chat here,
growing with the chat), while our bodies are already plain JSON. Timeouts,
retries, error types and response models are the client's either way.

The client does the timeouts and the bounded retries with backoff (429, 5xx,
connection errors; it honours ``Retry-After``). What still fails becomes a
502 (or a 504 for a timeout) carrying the provider's reason.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import aiohttp
import httpx2
import openai
from openai import AsyncStream
from openai.types.chat import ChatCompletion, ChatCompletionChunk

from chatplane import text
from chatplane.providers.base import (
    ModelReply,
    ModelRequest,
    OnDelta,
    ProviderError,
    ProviderTimeout,
    dumps,
    messages_json,
)
from chatplane.settings import Provider


class OpenAICompatible:
    def __init__(self, provider: Provider) -> None:
        self.provider = provider
        api_key = os.environ.get(provider.api_key_env, "") if provider.api_key_env else ""
        self.client = openai.AsyncOpenAI(
            base_url=provider.base_url,
            api_key=api_key or "not-needed",
            timeout=provider.timeout_s,
            max_retries=provider.max_retries,
            # aiohttp under the client's own API: its default HTTP pool cost
            # more CPU than the rest of a turn (5.8 vs 3.5 ms of overhead per
            # completion in bench/chats.py).
            http_client=openai.DefaultAioHttpClient(timeout=provider.timeout_s),
        )

    async def aclose(self) -> None:
        await self.client.close()

    async def complete(self, model: str, request: ModelRequest, on_delta: OnDelta | None = None) -> ModelReply:
        kwargs: dict[str, Any] = {
            "model": model,
            "messages": request.messages,
            **request.options(
                json_schema_format=lambda schema: {
                    "type": "json_schema", "json_schema": {"name": "output", "schema": schema, "strict": False},
                }
            ),
        }
        with self._translated():
            if on_delta is None:
                # The raw response, read with text.loads: building the typed
                # ChatCompletion cost a tenth of a turn's CPU.
                raw = await self.client.post("/chat/completions", content=_body(kwargs), cast_to=httpx2.Response)
                return self._reply(text.loads(raw.content))  # a reply's bad code points become U+FFFD
            return await self._stream(kwargs, on_delta)

    async def embed(self, model: str, texts: list[str]) -> list[list[float]]:
        """One vector per text, in order (``/embeddings``)."""
        with self._translated():
            response = await self.client.embeddings.create(model=model, input=texts, encoding_format="float")
            vectors = [item.embedding for item in sorted(response.data, key=lambda item: item.index)]
            if len(vectors) != len(texts):
                raise ValueError(f"{len(vectors)} vectors for {len(texts)} texts")
            return vectors

    @contextmanager
    def _translated(self) -> Iterator[None]:
        """The client's errors as ours: a 502 (a 504 for a timeout) with the provider's reason."""
        try:
            yield
        except openai.APITimeoutError as exc:
            if _dropped(exc):
                raise ProviderError(
                    f"model provider {self.provider.name!r} closed the connection without answering"
                ) from None
            raise ProviderTimeout(
                f"model provider {self.provider.name!r} did not answer within {self.provider.timeout_s:g} s"
            ) from None
        except openai.APIStatusError as exc:
            raise ProviderError(
                f"model provider {self.provider.name!r} answered {exc.status_code}: {_reason(exc)}"
            ) from None
        except (openai.APIConnectionError, openai.APIResponseValidationError) as exc:
            raise ProviderError(f"model provider {self.provider.name!r} failed: {exc}") from None
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            # A body that is not the OpenAI shape (junk JSON, missing fields).
            raise ProviderError(f"model provider {self.provider.name!r} sent an unreadable answer: {exc}") from None

    @staticmethod
    def _reply(response: Any) -> ModelReply:
        if not isinstance(response, dict) or not response.get("choices"):
            raise ProviderError("model provider answered without choices")
        choice = response["choices"][0]
        message = choice["message"]
        calls = [
            {"id": c["id"], "type": "function",
             "function": {"name": c["function"]["name"], "arguments": c["function"].get("arguments") or ""}}
            for c in (message.get("tool_calls") or [])
        ]
        usage = response.get("usage") or {}
        return ModelReply(
            content=message.get("content") or "",
            tool_calls=calls,
            prompt_tokens=usage.get("prompt_tokens") or 0,
            completion_tokens=usage.get("completion_tokens") or 0,
            finish_reason=choice.get("finish_reason"),
        )

    async def _stream(self, kwargs: dict[str, Any], on_delta: OnDelta) -> ModelReply:
        stream = await self.client.post(
            "/chat/completions",
            content=_body({**kwargs, "stream": True, "stream_options": {"include_usage": True}}),
            cast_to=ChatCompletion,
            stream=True,
            stream_cls=AsyncStream[ChatCompletionChunk],
        )
        parts: list[str] = []
        calls: dict[int, dict[str, Any]] = {}
        reply = ModelReply(content="")
        async with stream:
            async for chunk in stream:
                if chunk.usage:
                    reply.prompt_tokens = chunk.usage.prompt_tokens
                    reply.completion_tokens = chunk.usage.completion_tokens
                for choice in chunk.choices or []:
                    delta = choice.delta
                    if delta and delta.content:
                        content = text.clean(delta.content)
                        parts.append(content)
                        await on_delta(content)
                    for call in (delta.tool_calls or []) if delta else []:
                        slot = calls.setdefault(
                            call.index, {"id": "", "type": "function", "function": {"name": "", "arguments": ""}}
                        )
                        slot["id"] = call.id or slot["id"]
                        if call.function:
                            slot["function"]["name"] += call.function.name or ""
                            slot["function"]["arguments"] += text.clean(call.function.arguments or "")
                    if choice.finish_reason:
                        reply.finish_reason = choice.finish_reason
        if reply.finish_reason is None:
            raise ProviderError("model provider's stream ended before the reply was finished")
        reply.content = "".join(parts)
        reply.tool_calls = [calls[i] for i in sorted(calls)]
        if not reply.completion_tokens:
            reply.completion_tokens = len(parts)
        return reply


def _body(kwargs: dict[str, Any]) -> bytes:
    """The request body, encoded here: the client sends bytes as they are, and
    the history's messages bring their JSON with them (``Message``)."""
    head = dumps({key: value for key, value in kwargs.items() if key != "messages"})
    return f'{head[:-1]},"messages":{messages_json(kwargs["messages"])}}}'.encode()


def _dropped(exc: BaseException) -> bool:
    """A connection the provider closed, which the aiohttp transport reports
    as a (connect) timeout: look down the causes for what really happened."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, TimeoutError):
            return False
        if isinstance(seen, aiohttp.ClientConnectionError):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def _reason(exc: openai.APIStatusError) -> str:
    body = exc.body
    if isinstance(body, dict):
        error = body.get("error", body)
        if isinstance(error, dict) and error.get("message"):
            return str(error["message"])[:500]
        if isinstance(error, str):
            return error[:500]
    return (exc.message or "no reason given")[:500]
