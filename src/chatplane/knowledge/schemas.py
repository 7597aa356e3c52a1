"""Knowledge-base shapes: Retell's ``knowledge_base_*`` fields (the
``retell-sdk`` types are the description), and what chatplane adds to trust
them (each source's status and error, chunk counts, search results)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from pydantic import Field, model_validator

from chatplane.errors import FieldError
from chatplane.schemas import HttpUrlStr, StrictModel, WorkspaceId

MAX_SOURCES = 100  # texts and URLs in one call (files: the max_files setting)
MAX_TEXT_CHARS = 5_000_000


class KnowledgeBaseText(StrictModel):
    title: str = Field(min_length=1, max_length=512)
    text: str = Field(min_length=1, max_length=MAX_TEXT_CHARS)


class Sources(StrictModel):
    """Sources to add: texts and URLs here; files as multipart parts named ``knowledge_base_files``."""

    knowledge_base_texts: list[KnowledgeBaseText] = Field(default_factory=list, max_length=MAX_SOURCES)
    knowledge_base_urls: list[HttpUrlStr] = Field(
        default_factory=list, max_length=MAX_SOURCES,
        description="Pages fetched and indexed by a job, through the outbound rule (public addresses only "
        "unless the server allows private networks; redirects re-checked; size and time capped).",
    )


class SourcesIn(Sources):
    workspace_id: WorkspaceId


class KnowledgeBaseFields(Sources):
    knowledge_base_name: str = Field(min_length=1, max_length=39, description="Less than 40 characters.")
    max_chunk_size: int = Field(default=2000, ge=100, le=10_000, description="Characters; fixed at creation.")
    min_chunk_size: int = Field(
        default=400, ge=0, le=9_999,
        description="Characters; smaller chunks are merged with a neighbour. Less than `max_chunk_size`.",
    )
    enable_auto_refresh: bool = Field(
        default=False, description="URL sources are fetched again daily; only what changed is re-indexed."
    )

    @model_validator(mode="after")
    def _sizes(self) -> KnowledgeBaseFields:
        if self.min_chunk_size >= self.max_chunk_size:
            raise FieldError("min_chunk_size", "must be less than max_chunk_size")
        return self


class KnowledgeBaseCreate(KnowledgeBaseFields):
    workspace_id: WorkspaceId


SourceStatus = Literal["pending", "complete", "error"]


class SourceOut(StrictModel):
    source_id: str
    type: Literal["document", "text", "url"]
    title: str = Field(description="A text's title, a file's name, a URL source's page title (its URL before it is fetched).")
    url: str | None = Field(default=None, description="URL sources.")
    filename: str | None = Field(default=None, description="Documents.")
    file_size: int | None = Field(default=None, description="Documents: bytes.")
    file_url: str | None = Field(default=None, description="Documents: where the original is served (API key needed).")
    content_url: str | None = Field(default=None, description="Texts: where the text is served (API key needed).")
    status: SourceStatus = Field(description="`pending` until its indexing job has run.")
    error_message: str | None = Field(default=None, description="Why the last indexing failed (`status: error`).")
    chunk_count: int
    indexed_at: datetime | None
    refreshed_at: datetime | None = Field(
        description="URL sources: when the page was last fetched (a fetch that failed too: `error_message` says why)."
    )


class KnowledgeBaseOut(StrictModel):
    knowledge_base_id: str
    knowledge_base_name: str
    status: Literal["in_progress", "complete", "error", "refreshing_in_progress"]
    enable_auto_refresh: bool
    max_chunk_size: int
    min_chunk_size: int
    knowledge_base_sources: list[SourceOut]
    error_messages: list[str] = Field(description="One per source whose last indexing failed: `<source_id>: <reason>`.")
    last_refreshed_timestamp: int | None = Field(description="Unix milliseconds.")
    chunk_count: int
    created_at: datetime
    updated_at: datetime


class SearchIn(StrictModel):
    workspace_id: WorkspaceId
    query: str = Field(min_length=1, max_length=10_000)
    top_k: int = Field(default=5, ge=1, le=50)
    filter_score: float = Field(default=0.0, ge=0, le=1, description="Chunks scoring below it are left out.")


class Hit(StrictModel):
    chunk_id: int
    knowledge_base_id: str
    source_id: str
    position: int
    title: str
    text: str
    score: float = Field(description="0..1, the scale `kb_config.filter_score` is on (docs/knowledge.md): "
                         "the better of `full_text_score` and `dense_score`.")
    full_text_score: float = Field(description="The full-text score, 0..1.")
    dense_score: float | None = Field(description="The cosine similarity, 0..1; null without an embeddings model.")
    rank: int = Field(description="1 for the best.")
    source_title: str = Field(description="The source's title: a text's title, a file's name, a page's title.")
    source_url: str | None = Field(description="URL sources: the page.")


class SearchOut(StrictModel):
    chunks: list[Hit]
    took_ms: float


class ChunkOut(StrictModel):
    chunk_id: int
    position: int
    title: str
    text: str


class ChunkPage(StrictModel):
    data: list[ChunkOut]
    pagination_key: str | None


ChunkLimit = Annotated[int, Field(ge=1, le=1000)]
