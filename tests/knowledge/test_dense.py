"""Dense retrieval fused with full-text search, on both databases, through
the scripted model's /embeddings (deterministic vectors of a text's words,
where ``synonyms`` make two words one: what full-text search cannot see)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from chatplane.settings import KnowledgeSettings
from chatplane.testing import ScriptedModel
from tests.chat_helpers import make_agent, make_chat, make_llm, say
from tests.conftest import (
    BACKENDS,
    SCRIPTED_NO_RETRY,
    Api,
    Backend,
    scripted_providers,
    served,
    tenant,
)
from tests.knowledge.helpers import BASE, create, search, settled

COPY = "Use the -r option to copy a directory and everything inside it."
HOURS = "The helpdesk answers from eight to six on weekdays."


@pytest.fixture(scope="module", params=BACKENDS)
def dense_backend(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory,
                  scripted_model: ScriptedModel) -> Iterator[Backend]:
    with served(request.param, tmp_path_factory.mktemp(f"dense-{request.param}"),
                knowledge=KnowledgeSettings(embedding_model=SCRIPTED_NO_RETRY),
                providers=scripted_providers(scripted_model)) as backend:
        yield backend


@pytest.fixture
def api(dense_backend: Backend, model: ScriptedModel) -> Iterator[Api]:
    model.synonyms.update({"folder": "directory", "duplicate": "copy"})
    with tenant(dense_backend, "dense") as client:
        yield client


def indexed(api: Api, *texts: tuple[str, str]) -> dict[str, Any]:
    made = create(api, knowledge_base_texts=[{"title": t, "text": x} for t, x in texts])
    return settled(api, made["knowledge_base_id"])


def test_chunks_are_embedded_and_dense_finds_what_full_text_cannot(api: Api, model: ScriptedModel) -> None:
    kb = indexed(api, ("Copying", COPY), ("Hours", HOURS))
    assert kb["status"] == "complete" and kb["error_messages"] == []
    assert f"Copying\n{COPY}" in model.embedded and f"Hours\n{HOURS}" in model.embedded
    # No chunk holds "folder" or "duplicate": full-text alone finds nothing, dense finds the copy chunk.
    [hit, *rest] = search(api, kb["knowledge_base_id"], "duplicate folder")
    assert hit["text"] == COPY and hit["full_text_score"] == 0 and hit["dense_score"] > 0
    assert hit["score"] == hit["dense_score"]
    assert all(other["dense_score"] < hit["dense_score"] for other in rest)
    # A chunk both rankings find has both scores, and its score is the better of them.
    [both, *_] = search(api, kb["knowledge_base_id"], "helpdesk weekdays")
    assert both["text"] == HOURS and both["full_text_score"] > 0 and both["dense_score"] > 0
    assert both["score"] == max(both["full_text_score"], both["dense_score"])


def test_filter_score_applies_to_the_better_of_the_two_scores(api: Api) -> None:
    kb = indexed(api, ("Copying", COPY), ("Hours", HOURS))
    hits = search(api, kb["knowledge_base_id"], "duplicate folder", filter_score=0.3)
    assert [h["text"] for h in hits] == [COPY]
    assert search(api, kb["knowledge_base_id"], "duplicate folder", filter_score=0.99) == []


def test_new_and_deleted_sources_are_seen_by_the_vector_search(api: Api) -> None:
    kb = indexed(api, ("Hours", HOURS))
    kb_id = kb["knowledge_base_id"]
    assert all(h["text"] != COPY for h in search(api, kb_id, "duplicate folder"))
    added = api.post(f"{BASE}/{kb_id}/sources", {"knowledge_base_texts": [{"title": "Copying", "text": COPY}]})
    assert added.status_code == 200, added.text
    done = settled(api, kb_id)
    assert search(api, kb_id, "duplicate folder")[0]["text"] == COPY
    copying = next(s for s in done["knowledge_base_sources"] if s["title"] == "Copying")
    assert api.delete(f"{BASE}/{kb_id}/sources/{copying['source_id']}").status_code == 200
    assert all(h["text"] != COPY for h in search(api, kb_id, "duplicate folder"))


def test_a_turn_fuses_dense_retrieval_into_the_prompt_and_the_manifest(api: Api, model: ScriptedModel) -> None:
    kb = indexed(api, ("Copying", COPY), ("Hours", HOURS))
    llm = make_llm(api, knowledge_base_ids=[kb["knowledge_base_id"]], kb_config={"top_k": 1, "filter_score": 0.2})
    chat = make_chat(api, make_agent(api, llm))
    assert say(api, chat["chatId"], "how do I duplicate a folder?").status_code == 201
    assert COPY in model.requests[-1]["messages"][0]["content"]
    assert "how do I duplicate a folder?" in model.embedded
    message = [m for m in api.get(f"/api/chats/{chat['chatId']}").json()["messages"] if m["role"] == "assistant"][0]
    retrieval = message["manifest"]["retrieval"]
    assert retrieval["embeddingModel"] == SCRIPTED_NO_RETRY
    [chunk] = retrieval["chunks"]
    assert chunk["text"] == COPY and chunk["denseScore"] > 0 and chunk["fullTextScore"] < chunk["denseScore"]


def test_an_embeddings_outage_leaves_full_text_search_working(api: Api, model: ScriptedModel) -> None:
    model.embeddings_fail = 503
    kb = indexed(api, ("Hours", HOURS))
    [source] = kb["knowledge_base_sources"]
    # Indexed anyway, and it says how.
    assert source["status"] == "complete" and source["chunk_count"] == 1
    assert "full-text search only" in source["error_message"]
    [hit] = search(api, kb["knowledge_base_id"], "helpdesk weekdays")
    assert hit["text"] == HOURS and hit["dense_score"] is None
    llm = make_llm(api, knowledge_base_ids=[kb["knowledge_base_id"]], kb_config={"top_k": 1, "filter_score": 0.2})
    chat = make_chat(api, make_agent(api, llm))
    assert say(api, chat["chatId"], "when does the helpdesk answer on weekdays?").status_code == 201
    message = [m for m in api.get(f"/api/chats/{chat['chatId']}").json()["messages"] if m["role"] == "assistant"][0]
    assert message["manifest"]["retrieval"]["embeddingModel"] is None
    assert [c["text"] for c in message["manifest"]["retrieval"]["chunks"]] == [HOURS]
    # Back up: what was indexed without vectors is still found by its words, the new sources by both.
    model.embeddings_fail = 0
    assert search(api, kb["knowledge_base_id"], "helpdesk weekdays")[0]["text"] == HOURS
