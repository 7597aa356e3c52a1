"""The ``knowledge.index`` job: one source fetched, converted, chunked and indexed.

Three steps, no transaction held while the slow ones run:

1. read the source (its original, or its URL);
2. outside any transaction: fetch a URL (``outbound.fetch``: the address
   rule on every hop, size and time capped), convert it to text
   (``convert``, in a thread: a long PDF takes seconds of CPU), chunk it
   (``chunking``) and turn each chunk into terms (``terms``);
3. one transaction: the source's old chunks out, the new ones in, the counts
   updated, the source ``complete``. A search sees the old chunks or the new
   ones, never half of them.

A source that cannot be read (a PDF that does not parse, a page that
answers 404 or does not answer in time, a private address) is ``error``
with the reason, and keeps the chunks it had (a failed refresh does not
empty a source); the rest of the knowledge base is not touched. Such
failures are the source's, not the job's: the job is done. A refresh that
finds the same text as before (its SHA-256) re-indexes nothing.

The job runs at least once (``jobs``): a worker that dies mid-way leaves the
source ``pending`` and the job is taken again; step 3 makes a second run
write what one run would.
"""

from __future__ import annotations

import asyncio
import hashlib
from dataclasses import dataclass
from typing import Any

import httpx

from chatplane import jobs, outbound
from chatplane.db import transaction, utcnow
from chatplane.knowledge import convert, dense, service
from chatplane.knowledge.chunking import chunk_text
from chatplane.knowledge.terms import terms
from chatplane.models import KnowledgeBase, KnowledgeSource
from chatplane.providers import ProviderError
from chatplane.settings import KnowledgeSettings

USER_AGENT = "chatplane-knowledge"


class SourceFailed(Exception):
    """Why a source could not be indexed, in words for the person who added it."""


@dataclass(frozen=True, slots=True)
class Extracted:
    text: str
    title: str
    original: bytes | None = None  # a URL source's page, as fetched
    content_type: str | None = None


@jobs.handler(service.INDEX_JOB)
async def index_source(context: jobs.JobContext, payload: dict[str, Any]) -> None:
    source_id = payload["source_id"]
    async with transaction(context.sessions) as session:
        source = await session.get(KnowledgeSource, source_id)
        if source is None:
            return  # deleted meanwhile
        base = await session.get(KnowledgeBase, source.knowledge_base_id)
        assert base is not None  # a source goes with its knowledge base
        sizes = (base.min_chunk_size, base.max_chunk_size)
    services = context.services
    try:
        extracted = await extract(source, services.settings.knowledge, services.http,
                                  allow_private=services.settings.allow_private_networks)
        digest = hashlib.sha256(extracted.text.encode()).hexdigest()
        unchanged = digest == source.content_hash and source.chunk_count > 0
        chunks = [] if unchanged else await asyncio.to_thread(_chunk_rows, extracted, source, *sizes)
        failure = None
    except SourceFailed as exc:
        failure = str(exc)
    # Vectors, when an embeddings model is configured; without them the
    # chunks are still found by full-text search, and the source says so.
    notice = await _embedded(services, chunks) if failure is None else None
    async with transaction(context.sessions) as session:
        base = await session.get(KnowledgeBase, source.knowledge_base_id, with_for_update=True)
        current = await session.get(KnowledgeSource, source_id, with_for_update=True)
        if base is None or current is None:
            return
        now = utcnow()
        if failure is not None:
            current.status, current.error_message = "error", failure
            if current.type == "url":  # tried: the refresh monitor waits a period before the next try
                current.refreshed_at = now
        else:
            if not unchanged:
                await service.drop_chunks(session, base, current.id)
                await service.add_chunks(session, base, current.id, chunks)
                current.text, current.content_hash, current.chunk_count = extracted.text, digest, len(chunks)
                current.indexed_at = now
            if current.type == "url":
                current.title, current.refreshed_at = extracted.title, now
                current.original, current.content_type = extracted.original, extracted.content_type
                current.file_size = len(extracted.original or b"")
                base.last_refreshed_at = now
            current.status, current.error_message = "complete", notice
        await session.flush()
        await service.settle(session, base)


async def _embedded(services: Any, chunks: list[dict[str, Any]]) -> str | None:
    """Give ``chunks`` their vectors; what went wrong, if anything (the chunks are kept without)."""
    model = services.settings.knowledge.embedding_model
    if model is None or not chunks:
        return None
    try:
        vectors = await dense.embed(services.registry, model, [f"{c['title']}\n{c['text']}" for c in chunks])
    except ProviderError as exc:
        return f"indexed for full-text search only: the embeddings model failed: {exc}"
    for chunk, vector in zip(chunks, vectors, strict=True):
        chunk["embedding"], chunk["embedding_model"] = dense.packed(vector), model
    return None


def _chunk_rows(extracted: Extracted, source: KnowledgeSource, min_chars: int, max_chars: int) -> list[dict[str, Any]]:
    rows = []
    for chunk in chunk_text(extracted.text, title=extracted.title, min_chars=min_chars, max_chars=max_chars):
        words = terms(f"{chunk.title}\n{chunk.text}")
        rows.append({
            "knowledge_base_id": source.knowledge_base_id, "source_id": source.id, "position": chunk.position,
            "title": chunk.title, "text": chunk.text, "terms": " ".join(words), "term_count": len(words),
            "embedding": None, "embedding_model": None,
        })
    return rows


async def extract(
    source: KnowledgeSource, settings: KnowledgeSettings, http: httpx.AsyncClient, *, allow_private: bool
) -> Extracted:
    """The source's text; raises ``SourceFailed``."""
    limits = convert.Limits(max_pages=settings.max_pages, max_chars=settings.max_chars,
                            max_unpacked_bytes=settings.max_unpacked_bytes)
    if source.type == "url":
        assert source.url is not None
        return await _fetched(source.url, settings, http, limits, allow_private=allow_private)
    data = source.original or b""
    try:
        if source.type == "text":
            return Extracted(await asyncio.to_thread(convert.to_text, data, "markdown", limits), source.title)
        kind = convert.kind_of(source.filename or "", source.content_type, data)
        return Extracted(await asyncio.to_thread(convert.to_text, data, kind, limits), source.title)
    except (convert.Unreadable, convert.Unsupported) as exc:
        raise SourceFailed(str(exc)) from None


async def _fetched(
    url: str, settings: KnowledgeSettings, http: httpx.AsyncClient, limits: convert.Limits, *, allow_private: bool
) -> Extracted:
    try:
        answer = await outbound.fetch(
            http, url, allow_private=allow_private, max_bytes=settings.max_url_bytes,
            timeout_s=settings.fetch_timeout_s, max_redirects=settings.max_redirects,
            headers={"User-Agent": USER_AGENT, "Accept": "text/html, text/plain, text/markdown, application/pdf, */*"},
        )
    except outbound.PrivateAddress as exc:
        raise SourceFailed(f"{url}: {exc}") from None  # outbound.REFUSED: never what the host resolved to
    except outbound.TooLarge:
        raise SourceFailed(f"{url}: the page is larger than {settings.max_url_bytes} bytes") from None
    except TimeoutError:
        raise SourceFailed(f"{url}: no answer within {settings.fetch_timeout_s:g} s") from None
    except (outbound.BadURL, outbound.TooManyRedirects) as exc:
        raise SourceFailed(f"{url}: {exc}") from None
    except (httpx.HTTPError, OSError) as exc:
        raise SourceFailed(f"{url}: the request failed: {str(exc) or type(exc).__name__}") from None
    if not 200 <= answer.status < 300:
        raise SourceFailed(f"{url}: answered HTTP {answer.status}")
    content_type = answer.headers.get("content-type", "").partition(";")[0].strip().lower() or None
    path = answer.url.path.rsplit("/", 1)[-1]
    try:
        kind = convert.kind_of(path if "." in path else "", content_type or "text/html", answer.body)
        if kind == "html":
            text = await asyncio.to_thread(convert.html_main_text, answer.body, url=str(answer.url))
            if len(text) > limits.max_chars:
                raise convert.Unreadable(f"the page holds more than {limits.max_chars} characters of text")
        else:
            text = await asyncio.to_thread(convert.to_text, answer.body, kind, limits)
    except (convert.Unreadable, convert.Unsupported) as exc:
        raise SourceFailed(f"{url}: {exc}") from None
    if not text.strip():
        raise SourceFailed(f"{url}: no text found on the page")
    return Extracted(text, _title(text) or url, answer.body, content_type)


def _title(text: str) -> str | None:
    """A page's title: its first heading (``html_main_text`` puts the <title> first)."""
    first = text.lstrip().split("\n", 1)[0]
    return first.lstrip("#").strip()[:512] or None if first.startswith("#") else None
