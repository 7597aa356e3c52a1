"""The real embedded model (SmolLM2-135M via llama.cpp), end to end.

Its wording depends on the CPU build, so these assert structure, not text.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time

import pytest

from chatplane.providers.base import ModelRequest
from chatplane.providers.embedded import EmbeddedModel
from chatplane.settings import EmbeddedModelSettings
from tests.chat_helpers import make_agent, make_chat, say
from tests.conftest import Api
from tests.knowledge.helpers import settled


def _embedded_agent(api: Api) -> dict:
    llm = api.post("/api/llms", {"display_name": "local", "general_prompt": "You are a friendly shop assistant."})
    assert llm.status_code == 201
    assert llm.json()["model"] == api.backend.settings.embedded.name  # the default when nothing is configured
    return make_agent(api, llm.json())


def test_embedded_model_answers(api: Api) -> None:
    chat = make_chat(api, _embedded_agent(api))
    response = say(api, chat["chatId"], "Hello! What do you sell?")
    assert response.status_code == 201, response.text
    [message] = response.json()["messages"]
    assert message["role"] == "assistant" and message["content"].strip()
    assert api.get(f"/api/chats/{chat['chatId']}").json()["transcript"].startswith("User: Hello! What do you sell?\n")


def test_embedded_model_streams_deltas(api: Api) -> None:
    chat = make_chat(api, _embedded_agent(api))
    events = []
    with api.http.stream("POST", f"/api/chats/{chat['chatId']}/completions",
                         json={"workspaceId": api.ws, "content": "Tell me about your shop."},
                         headers={"Accept": "text/event-stream"}) as response:
        assert response.status_code == 201
        kind = None
        for line in response.iter_lines():
            if line.startswith("event: "):
                kind = line[7:]
            elif line.startswith("data: "):
                events.append((kind, json.loads(line[6:])))
    deltas = [e["content"] for k, e in events if k == "delta"]
    assert len(deltas) > 3
    assert events[-1][0] == "done"
    assert events[-1][1]["messages"][0]["content"] == "".join(deltas)


class _SlowLlama:
    """Stands in for ``llama_cpp.Llama`` to watch how chatplane drives it from
    threads: counts generations running at once and chunks streamed."""

    n_tokens = 0

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.running = 0
        self.most_at_once = 0
        self.streamed = 0

    def _enter(self) -> None:
        with self._lock:
            self.running += 1
            self.most_at_once = max(self.most_at_once, self.running)

    def _leave(self) -> None:
        with self._lock:
            self.running -= 1

    def create_chat_completion(self, stream: bool = False, **_: object):  # type: ignore[no-untyped-def]
        if stream:
            return self._stream()
        self._enter()
        try:
            time.sleep(0.05)
            return {"choices": [{"message": {"content": "ok"}, "finish_reason": "stop"}], "usage": {}}
        finally:
            self._leave()

    def _stream(self):  # type: ignore[no-untyped-def]
        self._enter()
        try:
            for _ in range(300):
                time.sleep(0.01)
                self.streamed += 1
                yield {"choices": [{"delta": {"content": "x"}, "finish_reason": None}]}
        finally:
            self._leave()


def test_a_cancelled_stream_stops_its_thread_before_the_next_generation_starts() -> None:
    """A turn cancelled mid-stream (its client gone) lets go of the loop's lock
    at once, but its thread runs on: the next generation must wait for that
    thread (a ``Llama`` used by two threads at once crashes the process), and
    the thread must stop at its next token rather than finish the reply."""
    fake = _SlowLlama()
    model = EmbeddedModel(EmbeddedModelSettings())
    model._llm = fake
    request = ModelRequest(messages=[{"role": "user", "content": "hi"}])

    async def main() -> str:
        first_delta = asyncio.Event()

        async def on_delta(_: str) -> None:
            first_delta.set()

        streaming = asyncio.create_task(model.complete("m", request, on_delta))
        await first_delta.wait()
        streaming.cancel()
        with pytest.raises(asyncio.CancelledError):
            await streaming
        return (await model.complete("m", request)).content

    assert asyncio.run(main()) == "ok"
    assert fake.most_at_once == 1
    assert fake.streamed < 100, fake.streamed  # stopped, not run to its 300 chunks


def test_the_embedded_model_is_given_the_chunk_that_answers_and_its_manifest_names_it(api: Api) -> None:
    """A question only the knowledge base can answer: the reply's manifest names
    the chunk that holds the answer, and the model was given it (wording not asserted)."""
    answer = "The Zorblat 3000 blender has a warranty of 7 years."
    made = api.post("/api/knowledge-bases", {"knowledge_base_name": "Products", "knowledge_base_texts": [
        {"title": "Zorblat 3000", "text": answer},
        {"title": "Opening hours", "text": "The shop is open from 9 to 17 on weekdays."},
    ]}).json()
    settled(api, made["knowledge_base_id"])
    llm = api.post("/api/llms", {"display_name": "local", "general_prompt": "You are a shop assistant.",
                                 "knowledge_base_ids": [made["knowledge_base_id"]],
                                 "kb_config": {"top_k": 1, "filter_score": 0.3}}).json()
    chat = make_chat(api, make_agent(api, llm))
    response = say(api, chat["chatId"], "How many years of warranty does the Zorblat 3000 blender have?")
    assert response.status_code == 201, response.text
    [message] = response.json()["messages"]
    assert message["content"].strip()
    [chunk] = message["manifest"]["retrieval"]["chunks"]
    zorblat = next(s for s in made["knowledge_base_sources"] if s["title"] == "Zorblat 3000")
    assert chunk["sourceId"] == zorblat["source_id"] and chunk["text"] == answer
    model = message["manifest"]["model"]
    assert model["name"] == api.backend.settings.embedded.name
    # The model's own count of the prompt holds the knowledge block: more than the question alone.
    knowledge = next(s for s in message["manifest"]["prompt"]["sections"] if s["name"] == "knowledge")
    assert model["promptTokens"] > knowledge["estimatedTokens"] > 0 and model["completionTokens"] > 0


def test_the_embedded_model_embeds_texts_as_vectors_of_one_size() -> None:
    """What dense retrieval runs on where no provider is configured: weak (a chat
    model, mean-pooled), so this checks the shape and that a text is its own nearest."""
    model = EmbeddedModel(EmbeddedModelSettings())
    texts = ["how do I list files newest first", "sort by modification time, newest first",
             "the warranty lasts 36 months", "x " * 3000]  # the last is longer than the embedder's context
    vectors = asyncio.run(model.embed("embedded", texts))
    assert len(vectors) == len(texts) and len({len(v) for v in vectors}) == 1 and len(vectors[0]) > 100
    assert all(all(isinstance(x, float) and x == x for x in v) for v in vectors)  # no NaN
    again = asyncio.run(model.embed("embedded", texts[:1]))
    assert again[0] == vectors[0]
