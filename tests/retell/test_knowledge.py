"""Retell's knowledge-base routes through the unchanged Python SDK, on both
databases: multipart create with texts, URLs and files, get, list, add
sources, delete a source, delete; every answer parsed strictly."""

from __future__ import annotations

import pytest
from retell import NotFoundError, UnprocessableEntityError
from retell.types import KnowledgeBaseResponse

from tests.conftest import Api, assert_error
from tests.knowledge.helpers import settled
from tests.retell.test_sdk import client, raw, strict


def test_the_sdk_builds_a_knowledge_base(api: Api) -> None:
    retell = client(api)
    made = raw(retell.knowledge_base.with_raw_response.create(
        knowledge_base_name="Support docs",
        knowledge_base_texts=[{"title": "Refunds", "text": "Refunds take five days."}],
        knowledge_base_files=[("hours.md", b"# Hours\n\nOpen nine to five.", "text/markdown")],
        max_chunk_size=800, min_chunk_size=100, enable_auto_refresh=True,
    ), KnowledgeBaseResponse)
    assert made.knowledge_base_id.startswith("knowledge_base_") and made.status == "in_progress"
    assert made.knowledge_base_name == "Support docs" and made.enable_auto_refresh is True
    assert (made.max_chunk_size, made.min_chunk_size) == (800, 100)
    text, document = made.knowledge_base_sources
    assert text.type == "text" and text.title == "Refunds"
    assert document.type == "document" and document.filename == "hours.md" and document.file_size == 27

    settled(api, made.knowledge_base_id)
    got = raw(retell.knowledge_base.with_raw_response.retrieve(made.knowledge_base_id), KnowledgeBaseResponse)
    assert got.status == "complete"
    answer = retell.knowledge_base.with_raw_response.list()
    for item in answer.http_response.json():
        strict(KnowledgeBaseResponse, item)
    listed = answer.parse()
    assert made.knowledge_base_id in [kb.knowledge_base_id for kb in listed]

    added = raw(retell.knowledge_base.with_raw_response.add_sources(
        made.knowledge_base_id, knowledge_base_texts=[{"title": "Parking", "text": "Park at the back."}],
    ), KnowledgeBaseResponse)
    assert added.status == "refreshing_in_progress" and len(added.knowledge_base_sources) == 3
    settled(api, made.knowledge_base_id)
    # What the SDK added is searchable through chatplane's own route.
    hits = api.post(f"/api/knowledge-bases/{made.knowledge_base_id}/search", {"query": "where to park"}).json()
    assert hits["chunks"][0]["source_id"] == added.knowledge_base_sources[2].source_id

    after = raw(retell.knowledge_base.with_raw_response.delete_source(
        text.source_id, knowledge_base_id=made.knowledge_base_id), KnowledgeBaseResponse)
    assert [s.source_id for s in after.knowledge_base_sources] == [
        document.source_id, added.knowledge_base_sources[2].source_id]
    assert retell.knowledge_base.delete(made.knowledge_base_id) is None
    with pytest.raises(NotFoundError):
        retell.knowledge_base.retrieve(made.knowledge_base_id)


def test_the_sdk_sees_errors(api: Api, other: Api) -> None:
    retell = client(api)
    with pytest.raises(UnprocessableEntityError):
        retell.knowledge_base.create(knowledge_base_name="x" * 40)
    with pytest.raises(UnprocessableEntityError):
        retell.knowledge_base.create(knowledge_base_name="ok", min_chunk_size=900, max_chunk_size=800)
    theirs = client(other).knowledge_base.create(knowledge_base_name="Theirs")
    for call in (
        lambda: retell.knowledge_base.retrieve(theirs.knowledge_base_id),
        lambda: retell.knowledge_base.delete(theirs.knowledge_base_id),
        lambda: retell.knowledge_base.add_sources(theirs.knowledge_base_id, knowledge_base_urls=["https://example.com"]),
        lambda: retell.knowledge_base.delete_source("source_x", knowledge_base_id=theirs.knowledge_base_id),
    ):
        with pytest.raises(NotFoundError):
            call()
    assert theirs.knowledge_base_id not in [kb.knowledge_base_id for kb in retell.knowledge_base.list()]
    # An unsupported file: 415, which the SDK raises as an APIStatusError.
    response = api.http.post("/create-knowledge-base", data={"knowledge_base_name": "x"},
                             files=[("knowledge_base_files", ("a.png", b"\x89PNG\r\n\x1a\n\0\0", "image/png"))])
    assert_error(response, 415, "unsupported_media_type")
