"""/api/knowledge-bases

Create and add-sources take JSON (texts and URLs) or ``multipart/form-data``
(the same fields, plus files as parts named ``knowledge_base_files``; a
form without files may be url-encoded), as Retell's do: in a multipart body ``workspaceId`` is a field, and
``knowledge_base_texts`` / ``knowledge_base_urls`` are each one field
holding a JSON array (what Retell's SDKs send); URLs may also come as
repeated fields. Uploads stream to disk, not memory (``limits.InputGuard``);
a file over ``knowledge.max_file_bytes`` is 413, a type the server does not
read 415, and nothing of the call is kept then.
"""

from __future__ import annotations

import json
import time
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request, Response
from pydantic import BaseModel, ValidationError
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException

from chatplane.auth import CurrentPrincipal, QueryWorkspace, Session
from chatplane.errors import (
    InvalidInput,
    PayloadTooLarge,
    UnsupportedMediaType,
    error_responses,
)
from chatplane.knowledge import convert, service
from chatplane.knowledge.schemas import (
    ChunkPage,
    KnowledgeBaseCreate,
    KnowledgeBaseOut,
    SearchIn,
    SearchOut,
    SourcesIn,
)
from chatplane.knowledge.search import Query as SearchQuery
from chatplane.knowledge.search import search
from chatplane.limits import PARSED_JSON
from chatplane.models import KnowledgeBase, KnowledgeSource
from chatplane.pagination import Page, PageQuery, decode_cursor, encode_cursor
from chatplane.schemas import WorkspaceBody
from chatplane.settings import KnowledgeSettings
from chatplane.text import bad_text

PREFIX = "/api/knowledge-bases"
router = APIRouter(prefix=PREFIX, tags=["Knowledge Bases"], responses=error_responses(401, 404, 422))

JSON_FIELDS = ("knowledge_base_texts", "knowledge_base_urls")
FILES = "knowledge_base_files"


def body_doc(model: type[BaseModel]) -> dict[str, Any]:
    """The OpenAPI request body of a route that reads JSON or multipart itself."""
    schema = model.model_json_schema(by_alias=True, ref_template="#/components/schemas/{model}")
    schema.pop("$defs", None)
    multipart = {
        "type": "object",
        "properties": {
            # Each field as its JSON property says (a form sends it as text).
            **{name: prop for name, prop in schema["properties"].items() if name not in JSON_FIELDS},
            **{name: {"type": "string", "description": "A JSON array."} for name in JSON_FIELDS},
            FILES: {"type": "array", "items": {"type": "string", "format": "binary"}},
        },
        "required": schema.get("required", []),
    }
    return {"requestBody": {"required": True, "content": {
        "application/json": {"schema": {"$ref": f"#/components/schemas/{model.__name__}"}},
        "multipart/form-data": {"schema": multipart},
    }}}


async def read_sources(request: Request, model: type[BaseModel]) -> tuple[Any, list[service.Upload]]:
    """The body as ``model`` and the files that came with it (read, checked)."""
    settings: KnowledgeSettings = request.app.state.settings.knowledge
    content_type = request.headers.get("content-type", "").partition(";")[0].strip().lower()
    if content_type not in ("multipart/form-data", "application/x-www-form-urlencoded"):
        if content_type not in ("", "application/json"):
            raise UnsupportedMediaType(f"send application/json or multipart/form-data, not {content_type[:80]}")
        return _validated(model, request.scope.get(PARSED_JSON, {})), []
    try:
        form = await request.form(max_files=settings.max_files + 1, max_fields=1000)
    except StarletteHTTPException as exc:  # the parser's own refusals: too many parts, a malformed body
        raise InvalidInput(str(exc.detail), field="body") from None
    try:
        fields: dict[str, Any] = {}
        files: list[UploadFile] = []
        for name, value in form.multi_items():
            if isinstance(value, UploadFile):
                if name != FILES:
                    raise InvalidInput(f"files go in parts named {FILES}", field=name)
                files.append(value)
                continue
            if problem := bad_text(name) or bad_text(value):
                raise InvalidInput(problem, field=name if not bad_text(name) else "body")
            if name in JSON_FIELDS:
                fields.setdefault(name, []).extend(_json_list(name, value))
            elif name in fields:
                raise InvalidInput("given more than once", field=name)
            else:
                fields[name] = value
        if len(files) > settings.max_files:
            raise InvalidInput(f"at most {settings.max_files} files in one call", field=FILES)
        body = _validated(model, fields)
        return body, [await _upload(file, settings) for file in files]
    finally:
        await form.close()


def _json_list(name: str, value: str) -> list[Any]:
    stripped = value.strip()
    if stripped.startswith(("[", "{")):
        try:
            parsed = json.loads(stripped)
        except ValueError:
            raise InvalidInput("not valid JSON", field=name) from None
        return parsed if isinstance(parsed, list) else [parsed]
    return [value]  # a URL given as a field of its own


def _validated(model: type[BaseModel], data: Any) -> Any:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise InvalidInput.from_pydantic(list(exc.errors())) from None


async def _upload(file: UploadFile, settings: KnowledgeSettings) -> service.Upload:
    name = file.filename or ""
    if not name.strip() or bad_text(name) or len(name) > 255:
        raise InvalidInput("every file needs a name (at most 255 characters)", field=FILES)
    if file.size is not None and file.size > settings.max_file_bytes:
        raise PayloadTooLarge(f"{name} is larger than {settings.max_file_bytes} bytes")
    data = await file.read(settings.max_file_bytes + 1)
    if len(data) > settings.max_file_bytes:
        raise PayloadTooLarge(f"{name} is larger than {settings.max_file_bytes} bytes")
    if not data:
        raise InvalidInput(f"{name} is empty", field=FILES)
    content_type = file.content_type if file.content_type and not bad_text(file.content_type) else None
    try:
        convert.kind_of(name, content_type, data)
    except convert.Unsupported as exc:
        raise UnsupportedMediaType(f"{name}: {exc}") from None
    return service.Upload(name, content_type, data)


def _source_out(base_id: str, source: KnowledgeSource) -> dict[str, Any]:
    content = f"{PREFIX}/{base_id}/sources/{source.id}/content"
    return {
        "source_id": source.id, "type": source.type, "title": source.title, "url": source.url,
        "filename": source.filename, "file_size": source.file_size if source.type == "document" else None,
        "file_url": content if source.type == "document" else None,
        "content_url": content if source.type == "text" else None,
        "status": source.status, "error_message": source.error_message, "chunk_count": source.chunk_count,
        "indexed_at": source.indexed_at, "refreshed_at": source.refreshed_at,
    }


async def base_out(session: Session, base: KnowledgeBase) -> dict[str, Any]:
    sources = await service.sources_of(session, base.id)
    refreshed = base.last_refreshed_at
    return {
        "knowledge_base_id": base.id, "knowledge_base_name": base.name, "status": base.status,
        "enable_auto_refresh": base.enable_auto_refresh, "max_chunk_size": base.max_chunk_size,
        "min_chunk_size": base.min_chunk_size,
        "knowledge_base_sources": [_source_out(base.id, s) for s in sources],
        "error_messages": [f"{s.id}: {s.error_message}" for s in sources if s.status == "error"],
        "last_refreshed_timestamp": int(refreshed.timestamp() * 1000) if refreshed else None,
        "chunk_count": base.chunk_count, "created_at": base.created_at, "updated_at": base.updated_at,
    }


def _texts(body: SourcesIn) -> list[tuple[str, str]]:
    return [(t.title, t.text) for t in body.knowledge_base_texts]


@router.post("", status_code=201, response_model=KnowledgeBaseOut, summary="Create knowledge base",
             description="201 at once with `status: in_progress`; each source is indexed by a job.",
             responses=error_responses(413, 415), openapi_extra=body_doc(KnowledgeBaseCreate))
async def create_knowledge_base(request: Request, session: Session, principal: CurrentPrincipal) -> dict:
    body, files = await read_sources(request, KnowledgeBaseCreate)
    base = await service.create_base(
        session, workspace_id=principal.require(body.workspace_id), name=body.knowledge_base_name,
        max_chunk_size=body.max_chunk_size, min_chunk_size=body.min_chunk_size,
        enable_auto_refresh=body.enable_auto_refresh, texts=_texts(body), urls=body.knowledge_base_urls,
        files=files,
    )
    return await base_out(session, base)


@router.get("", response_model=Page[KnowledgeBaseOut], summary="List knowledge bases")
async def list_knowledge_bases(session: Session, workspace_id: QueryWorkspace, page: PageQuery) -> dict:
    rows, key = await service.list_bases(session, workspace_id=workspace_id, page=page)
    return {"data": [await base_out(session, r) for r in rows], "pagination_key": key}


@router.get("/{knowledge_base_id}", response_model=KnowledgeBaseOut, summary="Get knowledge base")
async def get_knowledge_base(knowledge_base_id: str, session: Session, workspace_id: QueryWorkspace) -> dict:
    return await base_out(session, await service.get_base(
        session, workspace_id=workspace_id, knowledge_base_id=knowledge_base_id))


@router.delete("/{knowledge_base_id}", status_code=204, summary="Delete knowledge base",
               description="409 `knowledge_base_in_use` while an LLM configuration names it.",
               responses=error_responses(409))
async def delete_knowledge_base(knowledge_base_id: str, session: Session, workspace_id: QueryWorkspace) -> Response:
    await service.delete_base(session, workspace_id=workspace_id, knowledge_base_id=knowledge_base_id)
    return Response(status_code=204)


@router.post("/{knowledge_base_id}/sources", response_model=KnowledgeBaseOut, summary="Add sources",
             description="The knowledge base is `refreshing_in_progress` until the new sources are indexed; "
             "what it held before stays searchable.",
             responses=error_responses(413, 415), openapi_extra=body_doc(SourcesIn))
async def add_knowledge_base_sources(
    knowledge_base_id: str, request: Request, session: Session, principal: CurrentPrincipal
) -> dict:
    body, files = await read_sources(request, SourcesIn)
    base = await service.add_sources(
        session, workspace_id=principal.require(body.workspace_id), knowledge_base_id=knowledge_base_id,
        texts=_texts(body), urls=body.knowledge_base_urls, files=files,
    )
    return await base_out(session, base)


@router.delete("/{knowledge_base_id}/sources/{source_id}", response_model=KnowledgeBaseOut, summary="Delete a source",
               description="Its chunks leave the index in the same transaction.")
async def delete_knowledge_base_source(
    knowledge_base_id: str, source_id: str, session: Session, workspace_id: QueryWorkspace
) -> dict:
    base = await service.delete_source(
        session, workspace_id=workspace_id, knowledge_base_id=knowledge_base_id, source_id=source_id)
    return await base_out(session, base)


@router.post("/{knowledge_base_id}/sources/{source_id}/refresh", response_model=KnowledgeBaseOut,
             summary="Fetch a URL source again",
             description="A job fetches the page; only changed text is re-indexed. "
             "409 `not_a_url_source` for texts and documents.", responses=error_responses(409, 413))
async def refresh_knowledge_base_source(
    knowledge_base_id: str, source_id: str, body: WorkspaceBody, session: Session, principal: CurrentPrincipal
) -> dict:
    base = await service.refresh_source(
        session, workspace_id=principal.require(body.workspace_id), knowledge_base_id=knowledge_base_id,
        source_id=source_id,
    )
    return await base_out(session, base)


@router.get("/{knowledge_base_id}/sources/{source_id}/chunks", response_model=ChunkPage,
            summary="List a source's chunks", description="In document order.")
async def list_source_chunks(
    knowledge_base_id: str, source_id: str, session: Session, workspace_id: QueryWorkspace,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    pagination_key: Annotated[str | None, Query(alias="paginationKey")] = None,
) -> dict:
    after = None
    if pagination_key:
        position = decode_cursor(pagination_key, "ascending")
        if not position.isascii() or not position.isdigit():
            raise InvalidInput("not a pagination key this server issued", field="paginationKey")
        after = int(position)
    rows, last = await service.list_chunks(
        session, workspace_id=workspace_id, knowledge_base_id=knowledge_base_id, source_id=source_id,
        limit=limit, after=after,
    )
    return {
        "data": [{"chunk_id": r.id, "position": r.position, "title": r.title, "text": r.text} for r in rows],
        "pagination_key": encode_cursor(str(last), "ascending") if last is not None else None,
    }


SERVED_TYPES = {"application/octet-stream": {}, **{media: {} for media in convert.MEDIA_TYPES.values()}}


@router.get("/{knowledge_base_id}/sources/{source_id}/content", summary="Download a source's original",
            description="As it was given (a text, a file) or last fetched (a page), typed by what it was read as.",
            response_class=Response, responses={200: {"content": SERVED_TYPES}})
async def get_source_content(
    knowledge_base_id: str, source_id: str, session: Session, workspace_id: QueryWorkspace
) -> Response:
    base = await service.get_base(session, workspace_id=workspace_id, knowledge_base_id=knowledge_base_id)
    source = await service.get_source(session, base, source_id)
    media = _media_type(source)
    name = (source.filename or source.id).encode("ascii", "replace").decode().replace('"', "'")
    # Served as a download that can run nothing: an uploaded HTML page must
    # not become a page of this server's origin.
    return Response(source.original or b"", media_type=media, headers={
        "Content-Disposition": f'attachment; filename="{name}"',
        "Content-Security-Policy": "sandbox", "X-Content-Type-Options": "nosniff",
    })


def _media_type(source: KnowledgeSource) -> str:
    """The type the original is served as: what it was read as, never a type a client made up."""
    if source.type == "text":
        return "text/plain; charset=utf-8"
    name = source.filename or (source.url or "").rsplit("?", 1)[0].rsplit("/", 1)[-1]
    try:
        kind = convert.kind_of(name if "." in name else "", source.content_type or "text/html", source.original or b"")
    except convert.Unsupported:
        return "application/octet-stream"
    return convert.MEDIA_TYPES[kind] + ("; charset=utf-8" if kind in ("markdown", "text", "csv") else "")


@router.post("/{knowledge_base_id}/search", response_model=SearchOut, summary="Try a query",
             description="The ranked chunks a turn would be given, with their scores (0..1, the scale of "
             "`kb_config.filter_score`; docs/knowledge.md says how it is computed).",
             responses=error_responses(413))
async def search_knowledge_base(
    knowledge_base_id: str, body: SearchIn, request: Request, session: Session, principal: CurrentPrincipal
) -> dict:
    base = await service.get_base(
        session, workspace_id=principal.require(body.workspace_id), knowledge_base_id=knowledge_base_id)
    started = time.perf_counter()
    vector = await request.app.state.services.turns.retriever.query_vector(body.query)
    hits = await search(session, [base.id], SearchQuery.of(body.query), top_k=body.top_k,
                        filter_score=body.filter_score, dense=vector)
    took = (time.perf_counter() - started) * 1000
    return {"chunks": [hit_out(hit) for hit in hits], "took_ms": round(took, 3)}


def hit_out(hit: Any) -> dict[str, Any]:
    return {
        "chunk_id": hit.chunk_id, "knowledge_base_id": hit.knowledge_base_id, "source_id": hit.source_id,
        "position": hit.position, "title": hit.title, "text": hit.text, "score": hit.score, "rank": hit.rank,
        "source_title": hit.source_title, "source_url": hit.source_url, "full_text_score": hit.full_text,
        "dense_score": hit.dense,
    }
