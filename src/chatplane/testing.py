"""A scripted OpenAI-protocol server on loopback, for tests and benchmarks.

It speaks just enough HTTP/1.1 (keep-alive, Content-Length bodies) to serve
``POST /v1/chat/completions``, plain or streamed (and ``POST /v1/embeddings``,
with deterministic vectors), and answers each completion request
with the next step of its script, or with its default reply when the script
is empty. Steps can also fail in every way a real provider does: an HTTP
error (with ``Retry-After``), a hang, a connection reset, a stream cut short,
a body that is not JSON.

Written on raw asyncio streams so that a test can reset a connection, and so
the benchmark's "zero-latency model" costs as little as possible.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import math
import re
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Reply:
    text: str = "ok"
    # Only for a request whose messages contain this text (else: any request).
    when: str | None = None
    tool_calls: list[dict[str, Any]] | None = None
    prompt_tokens: int = 10
    completion_tokens: int = 5
    delay_s: float = 0.0
    # For streams: the text is sent in these pieces (default: word by word),
    # with this pause before each.
    chunks: list[str] | None = None
    chunk_delay_s: float = 0.0


@dataclass
class Fail:
    status: int = 500
    message: str = "scripted failure"
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class Hang:
    seconds: float = 3600.0


@dataclass
class Reset:
    """Close the connection without answering."""


@dataclass
class Junk:
    body: bytes = b"this is not json"
    status: int = 200


@dataclass
class Truncate:
    """Stream some text, then close the connection before finishing."""

    text: str = "cut sh"


@dataclass
class Echo:
    """Answer "echo: <the last user message>", after ``delay_s``."""

    delay_s: float = 0.0


Step = Reply | Fail | Hang | Reset | Junk | Truncate | Echo


class ScriptedModel:
    def __init__(self, default: Step | None = None) -> None:
        self.default: Step = default or Reply()
        self.script: deque[Step] = deque()
        self.requests: list[dict[str, Any]] = []
        # Requests for structured output (a response_format: post-chat
        # analysis) have their own script and log, so background analysis of
        # one test's chats never takes another test's scripted replies.
        self.structured_default: Step = Reply("not json")
        self.structured_script: deque[Step] = deque()
        self.structured_requests: list[dict[str, Any]] = []
        # /v1/embeddings: deterministic vectors (``toy_embedding``), where
        # the words of ``synonyms`` count as the word they map to; the inputs
        # it was sent; and a status to fail with instead (0: answer).
        self.synonyms: dict[str, str] = {}
        self.embedded: list[str] = []
        self.embeddings_fail = 0
        self._lock = threading.Lock()
        self._server: asyncio.AbstractServer | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self.port = 0

    # --- the script ---------------------------------------------------------

    def push(self, *steps: Step) -> None:
        with self._lock:
            self.script.extend(steps)

    def push_structured(self, *steps: Step) -> None:
        with self._lock:
            self.structured_script.extend(steps)

    def reset(self) -> None:
        with self._lock:
            self.script.clear()
            self.requests.clear()
            self.structured_script.clear()
            self.structured_requests.clear()
            self.synonyms.clear()
            self.embedded.clear()
            self.embeddings_fail = 0

    def _next(self, body: dict[str, Any]) -> Step:
        structured = "response_format" in body
        with self._lock:
            (self.structured_requests if structured else self.requests).append(body)
            script = self.structured_script if structured else self.script
            text = json.dumps(body.get("messages", []))
            for step in script:
                when = getattr(step, "when", None)
                if when is None or when in text:
                    script.remove(step)
                    return step
            return self.structured_default if structured else self.default

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    # --- serving ------------------------------------------------------------

    async def serve(self, port: int = 0) -> None:
        self._server = await asyncio.start_server(self._connection, "127.0.0.1", port, backlog=1024)
        self.port = self._server.sockets[0].getsockname()[1]

    def start_in_thread(self) -> ScriptedModel:
        started = threading.Event()

        def run() -> None:
            self._loop = asyncio.new_event_loop()
            self._loop.run_until_complete(self.serve())
            started.set()
            self._loop.run_forever()

        self._thread = threading.Thread(target=run, daemon=True)
        self._thread.start()
        started.wait(10)
        return self

    def stop(self) -> None:
        if self._loop and self._server:
            asyncio.run_coroutine_threadsafe(self._shutdown(), self._loop).result(10)
            self._loop.call_soon_threadsafe(self._loop.stop)
        if self._thread:
            self._thread.join(5)

    async def _shutdown(self) -> None:
        assert self._server is not None
        self._server.close()
        pending = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                lines = head.decode("latin-1").split("\r\n")
                method, path, _ = lines[0].split(" ", 2)
                headers = {k.strip().lower(): v.strip() for k, v in (l.split(":", 1) for l in lines[1:] if ":" in l)}
                body = await reader.readexactly(int(headers.get("content-length", "0")))
                if method == "POST" and path.endswith("/embeddings"):
                    await self._embeddings(json.loads(body or b"{}"), writer)
                    continue
                if method != "POST" or not path.endswith("/chat/completions"):
                    await _respond(writer, 404, {"error": {"message": f"no route {method} {path}"}})
                    continue
                request = json.loads(body or b"{}")
                if not await self._answer(request, writer):
                    return
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.CancelledError):
            pass
        finally:
            writer.close()

    async def _embeddings(self, request: dict[str, Any], writer: asyncio.StreamWriter) -> None:
        texts = request.get("input", [])
        texts = [texts] if isinstance(texts, str) else list(texts)
        with self._lock:
            self.embedded.extend(texts)
            fail, synonyms = self.embeddings_fail, dict(self.synonyms)
        if fail:
            await _respond(writer, fail, {"error": {"message": "scripted embeddings failure", "type": "scripted"}})
            return
        data = [{"object": "embedding", "index": i, "embedding": toy_embedding(t, synonyms)} for i, t in enumerate(texts)]
        tokens = sum(len(t.split()) for t in texts)
        await _respond(writer, 200, {"object": "list", "data": data, "model": request.get("model", "scripted"),
                                     "usage": {"prompt_tokens": tokens, "total_tokens": tokens}})

    async def _answer(self, request: dict[str, Any], writer: asyncio.StreamWriter) -> bool:
        """Answer one request; False when the connection must be dropped."""
        step = self._next(request)
        stream = bool(request.get("stream"))
        if isinstance(step, Echo):
            users = [m for m in request.get("messages", []) if m.get("role") == "user"]
            step = Reply(f"echo: {users[-1]['content'] if users else ''}", delay_s=step.delay_s)
        if isinstance(step, Hang):
            await asyncio.sleep(step.seconds)
            return False
        if isinstance(step, Reset):
            writer.transport.abort()
            return False
        if isinstance(step, Fail):
            await _respond(writer, step.status, {"error": {"message": step.message, "type": "scripted"}},
                           step.headers)
            return True
        if isinstance(step, Junk):
            await _raw(writer, step.status, "application/json", step.body)
            return True
        if isinstance(step, Truncate):
            await _stream_head(writer)
            await _chunk(writer, _sse(_delta_chunk(request, {"role": "assistant", "content": step.text})))
            writer.transport.abort()
            return False
        if step.delay_s:
            await asyncio.sleep(step.delay_s)
        if not stream:
            await _respond(writer, 200, _completion(request, step))
            return True
        await _stream_head(writer)
        pieces = step.chunks if step.chunks is not None else _words(step.text)
        await _chunk(writer, _sse(_delta_chunk(request, {"role": "assistant", "content": ""})))
        for piece in pieces:
            if step.chunk_delay_s:
                await asyncio.sleep(step.chunk_delay_s)
            await _chunk(writer, _sse(_delta_chunk(request, {"content": piece})))
        for index, call in enumerate(step.tool_calls or []):
            await _chunk(writer, _sse(_delta_chunk(request, {"tool_calls": [{"index": index, **call}]})))
        finish = "tool_calls" if step.tool_calls else "stop"
        await _chunk(writer, _sse(_delta_chunk(request, {}, finish)))
        usage = {"prompt_tokens": step.prompt_tokens, "completion_tokens": step.completion_tokens,
                 "total_tokens": step.prompt_tokens + step.completion_tokens}
        await _chunk(writer, _sse({**_delta_chunk(request, {}, None), "choices": [], "usage": usage}))
        await _chunk(writer, b"data: [DONE]\n\n")
        await _chunk(writer, b"")
        return True


EMBEDDING_DIMS = 64


def toy_embedding(text: str, synonyms: dict[str, str] | None = None) -> list[float]:
    """A unit vector of ``text``'s words: each word (after ``synonyms``) adds
    +-1 on four dimensions its SHA-256 picks. Texts sharing words point alike;
    the same text always gets the same vector."""
    vector = [0.0] * EMBEDDING_DIMS
    for word in re.findall(r"[a-z0-9]+", text.lower()):
        digest = hashlib.sha256((synonyms or {}).get(word, word).encode()).digest()
        for k in range(4):
            vector[digest[k] % EMBEDDING_DIMS] += 1.0 if digest[k + 4] & 1 else -1.0
    norm = math.sqrt(sum(x * x for x in vector)) or 1.0
    return [x / norm for x in vector]


def _words(text: str) -> list[str]:
    words = text.split(" ")
    return [w if i == 0 else " " + w for i, w in enumerate(words)] if text else []


def _completion(request: dict[str, Any], step: Reply) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant", "content": step.text}
    if step.tool_calls:
        message["tool_calls"] = step.tool_calls
    return {
        "id": "chatcmpl-scripted",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": request.get("model", "scripted"),
        "choices": [{"index": 0, "message": message, "finish_reason": "tool_calls" if step.tool_calls else "stop"}],
        "usage": {"prompt_tokens": step.prompt_tokens, "completion_tokens": step.completion_tokens,
                  "total_tokens": step.prompt_tokens + step.completion_tokens},
    }


def _delta_chunk(request: dict[str, Any], delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
    return {
        "id": "chatcmpl-scripted",
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": request.get("model", "scripted"),
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
    }


def _sse(data: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(data).encode() + b"\n\n"


async def _respond(writer: asyncio.StreamWriter, status: int, body: dict[str, Any],
                   headers: dict[str, str] | None = None) -> None:
    await _raw(writer, status, "application/json", json.dumps(body).encode(), headers)


async def _raw(writer: asyncio.StreamWriter, status: int, content_type: str, body: bytes,
               headers: dict[str, str] | None = None) -> None:
    extra = "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
    writer.write(
        f"HTTP/1.1 {status} X\r\ncontent-type: {content_type}\r\ncontent-length: {len(body)}\r\n{extra}\r\n".encode()
        + body
    )
    await writer.drain()


async def _stream_head(writer: asyncio.StreamWriter) -> None:
    writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n")
    await writer.drain()


async def _chunk(writer: asyncio.StreamWriter, data: bytes) -> None:
    writer.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
    await writer.drain()


def main() -> None:
    """``python -m chatplane.testing [--port P] [--text T]``: a zero-latency model."""
    import argparse

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--text", default="ok")
    args = parser.parse_args()
    model = ScriptedModel(default=Reply(args.text))

    async def run() -> None:
        await model.serve(args.port)
        print(model.base_url, flush=True)
        await asyncio.Event().wait()

    asyncio.run(run())


if __name__ == "__main__":
    main()
