"""Retell's knowledge-base routes over chatplane's knowledge bases.

``/create-knowledge-base`` and ``/add-knowledge-base-sources/{id}`` take the
multipart body Retell's SDKs send (or JSON); the workspace comes from the key
(``common.retell_workspace``). The answer is Retell's ``KnowledgeBaseResponse``
and nothing else: a source's status and error, chunk counts and search are
chatplane's own routes (``/api/knowledge-bases``).
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request, Response

from chatplane.auth import Session
from chatplane.errors import error_responses
from chatplane.knowledge import service
from chatplane.knowledge.routes import base_out, body_doc, read_sources
from chatplane.knowledge.schemas import KnowledgeBaseFields, Sources
from chatplane.pagination import PageRequest
from chatplane.retell.common import RESPONSES, TAG, RetellWorkspace

router = APIRouter(tags=[TAG], responses=RESPONSES)
# Retell's list has no paging: the newest this many.
LIST_LIMIT = 1000


def shape_base(ours: dict[str, Any]) -> dict[str, Any]:
    """Retell's shape of ``knowledge.routes.base_out``."""
    return {
        "knowledge_base_id": ours["knowledge_base_id"],
        "knowledge_base_name": ours["knowledge_base_name"],
        "status": ours["status"],
        "enable_auto_refresh": ours["enable_auto_refresh"],
        "knowledge_base_sources": [_shape_source(s) for s in ours["knowledge_base_sources"]],
        "last_refreshed_timestamp": ours["last_refreshed_timestamp"],
        "max_chunk_size": ours["max_chunk_size"],
        "min_chunk_size": ours["min_chunk_size"],
    }


def _shape_source(source: dict[str, Any]) -> dict[str, Any]:
    kind = source["type"]
    shaped = {"source_id": source["source_id"], "type": kind}
    if kind == "document":
        return {**shaped, "filename": source["filename"], "file_size": source["file_size"],
                "file_url": source["file_url"]}
    if kind == "text":
        return {**shaped, "title": source["title"], "content_url": source["content_url"]}
    return {**shaped, "url": source["url"]}


async def _answer(session: Session, base: Any) -> dict[str, Any]:
    return shape_base(await base_out(session, base))


@router.post("/create-knowledge-base", status_code=201, summary="Create knowledge base (Retell)",
             responses=error_responses(413, 415), openapi_extra=body_doc(KnowledgeBaseFields))
async def create_knowledge_base(request: Request, session: Session, workspace_id: RetellWorkspace) -> dict:
    body, files = await read_sources(request, KnowledgeBaseFields)
    base = await service.create_base(
        session, workspace_id=workspace_id, name=body.knowledge_base_name, max_chunk_size=body.max_chunk_size,
        min_chunk_size=body.min_chunk_size, enable_auto_refresh=body.enable_auto_refresh,
        texts=[(t.title, t.text) for t in body.knowledge_base_texts], urls=body.knowledge_base_urls, files=files,
    )
    return await _answer(session, base)


@router.get("/get-knowledge-base/{knowledge_base_id}", summary="Get knowledge base (Retell)")
async def get_knowledge_base(knowledge_base_id: str, session: Session, workspace_id: RetellWorkspace) -> dict:
    return await _answer(session, await service.get_base(
        session, workspace_id=workspace_id, knowledge_base_id=knowledge_base_id))


@router.get("/list-knowledge-bases", summary="List knowledge bases (Retell)",
            description=f"Newest first, at most {LIST_LIMIT} (Retell's list has no paging).")
async def list_knowledge_bases(session: Session, workspace_id: RetellWorkspace) -> list[dict]:
    rows, _ = await service.list_bases(
        session, workspace_id=workspace_id, page=PageRequest(limit=LIST_LIMIT, after=None, order="descending"))
    return [await _answer(session, row) for row in rows]


@router.post("/add-knowledge-base-sources/{knowledge_base_id}", summary="Add sources (Retell)",
             responses=error_responses(413, 415), openapi_extra=body_doc(Sources))
async def add_knowledge_base_sources(
    knowledge_base_id: str, request: Request, session: Session, workspace_id: RetellWorkspace
) -> dict:
    body, files = await read_sources(request, Sources)
    base = await service.add_sources(
        session, workspace_id=workspace_id, knowledge_base_id=knowledge_base_id,
        texts=[(t.title, t.text) for t in body.knowledge_base_texts], urls=body.knowledge_base_urls, files=files,
    )
    return await _answer(session, base)


@router.delete("/delete-knowledge-base/{knowledge_base_id}", status_code=204, summary="Delete knowledge base (Retell)",
               description="409 `knowledge_base_in_use` while an LLM names it.", responses=error_responses(409))
async def delete_knowledge_base(knowledge_base_id: str, session: Session, workspace_id: RetellWorkspace) -> Response:
    await service.delete_base(session, workspace_id=workspace_id, knowledge_base_id=knowledge_base_id)
    return Response(status_code=204)


@router.delete("/delete-knowledge-base-source/{knowledge_base_id}/source/{source_id}",
               summary="Delete a source (Retell)")
async def delete_knowledge_base_source(
    knowledge_base_id: str, source_id: str, session: Session, workspace_id: RetellWorkspace
) -> dict:
    base = await service.delete_source(
        session, workspace_id=workspace_id, knowledge_base_id=knowledge_base_id, source_id=source_id)
    return await _answer(session, base)
