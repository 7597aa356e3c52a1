"""Tables.

Agent and LLM configurations are versioned: one row per (id, version), the
configuration itself in a JSON column validated by the feature's schemas on
the way in. Deletion is soft (``deleted_at``) so that chats that ran on a
configuration keep pointing at something real.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from chatplane.db import UTCDateTime, utcnow

# Named constraints: Alembic's batch mode on SQLite needs names to alter them.
NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

JSONType = JSON().with_variant(JSONB(), "postgresql")


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)


class Workspace(Base):
    __tablename__ = "workspaces"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    # Signs webhooks and custom-tool calls (HMAC-SHA256, Retell's scheme).
    webhook_key: Mapped[str | None] = mapped_column(String(128), nullable=True)


class ApiKey(Base):
    __tablename__ = "api_keys"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    # SHA-256 of the key: keys are 256-bit random, so a fast hash is enough and
    # lets every request find its key with one indexed lookup.
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    prefix: Mapped[str] = mapped_column(String(16))
    name: Mapped[str] = mapped_column(String(200), default="")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)


class ApiKeyWorkspace(Base):
    __tablename__ = "api_key_workspaces"

    api_key_id: Mapped[int] = mapped_column(
        ForeignKey("api_keys.id", ondelete="CASCADE"), primary_key=True
    )
    workspace_id: Mapped[int] = mapped_column(
        ForeignKey("workspaces.id", ondelete="CASCADE"), primary_key=True
    )


class VersionedConfig:
    """Columns shared by every versioned configuration table."""

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    version: Mapped[int] = mapped_column(Integer, primary_key=True)
    workspace_id: Mapped[int] = mapped_column(ForeignKey("workspaces.id"))
    is_published: Mapped[bool] = mapped_column(Boolean, default=False)
    # Exactly one row per id is the latest version; lists and reads without a
    # version go through it.
    is_latest: Mapped[bool] = mapped_column(Boolean, default=True)
    config: Mapped[dict[str, Any]] = mapped_column(JSONType)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    deleted_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)


class Llm(VersionedConfig, Base):
    __tablename__ = "llms"
    __table_args__ = (
        Index(
            "ix_llms_workspace_latest",
            "workspace_id",
            "id",
            postgresql_where=text("is_latest AND deleted_at IS NULL"),
            sqlite_where=text("is_latest AND deleted_at IS NULL"),
        ),
    )


class ChatAgent(VersionedConfig, Base):
    __tablename__ = "chat_agents"

    # Copied out of config.response_engine so "which agents use this LLM" is
    # an indexed lookup rather than a JSON scan.
    llm_id: Mapped[str | None] = mapped_column(String(64), nullable=True, index=True)
    __table_args__ = (
        Index(
            "ix_chat_agents_workspace_latest",
            "workspace_id",
            "id",
            postgresql_where=text("is_latest AND deleted_at IS NULL"),
            sqlite_where=text("is_latest AND deleted_at IS NULL"),
        ),
    )


class Chat(Base):
    """One conversation. Pins the agent and LLM versions it started on."""

    __tablename__ = "chats"
    __table_args__ = (
        # Chat ids are ULIDs, so id order is start order: lists page by id, and
        # a time-range filter becomes an id range on these same indexes. The
        # columns after the id are there to be read, not searched: the exact
        # started_at check (and status, agent version) is answered from the
        # index, so a /v3/list-chats total is counted without reading the
        # table (a million chats, 75,000 matches: ~300 ms -> ~15-55 ms, bench/scale.py).
        Index("ix_chats_workspace_id", "workspace_id", "id", "started_at"),
        Index(
            "ix_chats_workspace_agent_id", "workspace_id", "agent_id", "id", "status", "started_at", "agent_version"
        ),
        Index("ix_chats_workspace_status_id", "workspace_id", "status", "id", "started_at"),
        # The idle-chat monitor looks at ongoing chats of every workspace: a
        # few among millions, which without this it finds by reading them all.
        Index(
            "ix_chats_ongoing",
            "id",
            postgresql_where=text("status = 'ongoing'"),
            sqlite_where=text("status = 'ongoing'"),
        ),
        # An inbound text finds the ongoing chat of its (our number, their number).
        Index("ix_chats_sms_pair", "agent_number", "user_number"),
    )

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    workspace_id: Mapped[int] = mapped_column(ForeignKey("workspaces.id"))
    agent_id: Mapped[str] = mapped_column(String(64))
    agent_version: Mapped[int] = mapped_column(Integer)
    llm_id: Mapped[str] = mapped_column(String(64))
    llm_version: Mapped[int] = mapped_column(Integer)
    type: Mapped[str] = mapped_column(String(16), default="api_chat")
    status: Mapped[str] = mapped_column(String(16), default="ongoing")
    metadata_: Mapped[dict[str, Any]] = mapped_column("metadata", JSONType, default=dict)
    custom_attributes: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
    dynamic_variables: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
    override_dynamic_variables: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
    collected_dynamic_variables: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
    current_state: Mapped[str | None] = mapped_column(String(64), nullable=True)
    message_count: Mapped[int] = mapped_column(Integer, default=0)
    started_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    ended_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    end_reason: Mapped[str | None] = mapped_column(String(32), nullable=True)
    last_user_message_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    last_agent_message_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    chat_cost: Mapped[dict[str, Any] | None] = mapped_column(JSONType, nullable=True)
    chat_analysis: Mapped[dict[str, Any] | None] = mapped_column(JSONType, nullable=True)
    # Model calls not tied to a message (post-chat analysis): [{model,
    # prompt_tokens, completion_tokens, purpose}], for chat_cost.
    extra_usage: Mapped[list[dict[str, Any]]] = mapped_column(JSONType, default=list)
    # Copied out of chat_cost / chat_analysis for /v3/list-chats filters.
    combined_cost: Mapped[float | None] = mapped_column(Float, nullable=True)
    user_sentiment: Mapped[str | None] = mapped_column(String(16), nullable=True)
    chat_successful: Mapped[bool | None] = mapped_column(Boolean, nullable=True)
    # SMS chats (type sms_chat): the user's number and ours, E.164. Also the
    # {{user_number}} and {{agent_number}} system variables.
    user_number: Mapped[str | None] = mapped_column(String(64), nullable=True)
    agent_number: Mapped[str | None] = mapped_column(String(16), nullable=True)


class ChatMessage(Base):
    """One message of a chat. Append-only: a turn never rewrites history."""

    __tablename__ = "chat_messages"
    __table_args__ = (UniqueConstraint("chat_id", "seq"),)

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    chat_id: Mapped[str] = mapped_column(ForeignKey("chats.id", ondelete="CASCADE"))
    seq: Mapped[int] = mapped_column(Integer)
    role: Mapped[str] = mapped_column(String(16))
    content: Mapped[str] = mapped_column(Text, default="")
    name: Mapped[str | None] = mapped_column(String(64), nullable=True)
    tool_calls: Mapped[list[dict[str, Any]] | None] = mapped_column(JSONType, nullable=True)
    # Which model produced it and what it cost in tokens (assistant messages).
    model: Mapped[str | None] = mapped_column(String(128), nullable=True)
    prompt_tokens: Mapped[int] = mapped_column(Integer, default=0)
    completion_tokens: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    # Attachments that came with a user message (MMS): [{url, content_type}].
    multimedia: Mapped[list[dict[str, Any]] | None] = mapped_column(JSONType, nullable=True)
    # What the model was given for an agent message (chats.turn.manifest).
    manifest: Mapped[dict[str, Any] | None] = mapped_column(JSONType, nullable=True)


class IdempotencyKey(Base):
    """The answer to a completion sent with an ``Idempotency-Key``, replayed on retry."""

    __tablename__ = "idempotency_keys"

    chat_id: Mapped[str] = mapped_column(ForeignKey("chats.id", ondelete="CASCADE"), primary_key=True)
    key: Mapped[str] = mapped_column(String(255), primary_key=True)
    request_hash: Mapped[str] = mapped_column(String(64))
    response: Mapped[dict[str, Any]] = mapped_column(JSONType)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class Job(Base):
    """Durable background work, written in the transaction that causes it."""

    __tablename__ = "jobs"
    __table_args__ = (
        Index("ix_jobs_claim", "status", "run_at"),
        Index("ix_jobs_ordering", "ordering_key", "id"),
        Index("ix_jobs_dedupe", "kind", "dedupe_key", unique=True),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    kind: Mapped[str] = mapped_column(String(64))
    payload: Mapped[dict[str, Any]] = mapped_column(JSONType)
    # pending -> running -> done | failed (after the last attempt); a running
    # job whose lease ran out is pending again in all but name.
    status: Mapped[str] = mapped_column(String(16), default="pending")
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    max_attempts: Mapped[int] = mapped_column(Integer, default=5)
    run_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    lease_until: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    locked_by: Mapped[str | None] = mapped_column(String(64), nullable=True)
    # Jobs sharing an ordering key run one at a time, oldest first.
    ordering_key: Mapped[str | None] = mapped_column(String(128), nullable=True)
    # At most one job per (kind, dedupe_key): enqueueing it again is a no-op.
    dedupe_key: Mapped[str | None] = mapped_column(String(255), nullable=True)
    last_error: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)


class WebhookDelivery(Base):
    """One event for one webhook URL, and how delivering it went."""

    __tablename__ = "webhook_deliveries"
    __table_args__ = (Index("ix_webhook_deliveries_workspace_id", "workspace_id", "id"),)

    id: Mapped[str] = mapped_column(String(64), primary_key=True)  # whd_<ulid>, also the event id
    workspace_id: Mapped[int] = mapped_column(ForeignKey("workspaces.id"))
    chat_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    event: Mapped[str] = mapped_column(String(32))
    url: Mapped[str] = mapped_column(String(2048))
    payload: Mapped[dict[str, Any]] = mapped_column(JSONType)
    status: Mapped[str] = mapped_column(String(16), default="pending")  # pending|delivered|failed
    attempts: Mapped[list[dict[str, Any]]] = mapped_column(JSONType, default=list)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    delivered_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)


class PhoneNumber(Base):
    """A Twilio number that texts as the workspace's agents.

    The E.164 number is the id, unique across workspaces: Twilio posts a
    number's texts to one webhook, and the number finds its workspace.
    """

    __tablename__ = "phone_numbers"
    __table_args__ = (Index("ix_phone_numbers_workspace_id", "workspace_id", "phone_number"),)

    phone_number: Mapped[str] = mapped_column(String(16), primary_key=True)
    workspace_id: Mapped[int] = mapped_column(ForeignKey("workspaces.id"))
    twilio_account_sid: Mapped[str] = mapped_column(String(64))
    # Fernet ciphertext of the account's auth token (chatplane.sms.credentials).
    twilio_auth_token: Mapped[str] = mapped_column(Text)
    # {nickname, inbound_sms_agents, outbound_sms_agents, inbound_sms_webhook_url},
    # validated by chatplane.sms.schemas on the way in.
    config: Mapped[dict[str, Any]] = mapped_column(JSONType)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class SmsMessage(Base):
    """One text in or out through Twilio: the SMS log behind the SMS chats.

    Inbound: ``pending`` until a turn takes it (``batched``, with the turn's
    key in ``batch``), then ``answered``; or ``rejected`` / ``failed``.
    Outbound: ``queued``, then ``sending`` while Twilio is asked, then
    ``sent`` (Twilio accepted it) or ``failed`` (refused, given up, or found
    ``sending`` by a later run: never sent twice). A plain string, no enum or
    CHECK: a new status needs no migration.
    """

    __tablename__ = "sms_messages"
    __table_args__ = (
        # Twilio retries a webhook with the same MessageSid: seen once, kept once.
        UniqueConstraint("twilio_sid"),
        Index("ix_sms_messages_conversation", "agent_number", "user_number", "status"),
        Index("ix_sms_messages_chat_id", "chat_id"),
    )

    id: Mapped[str] = mapped_column(String(64), primary_key=True)  # sms_<ulid>
    workspace_id: Mapped[int] = mapped_column(ForeignKey("workspaces.id"))
    direction: Mapped[str] = mapped_column(String(8))  # inbound | outbound
    twilio_sid: Mapped[str | None] = mapped_column(String(64), nullable=True)
    agent_number: Mapped[str] = mapped_column(String(16))
    user_number: Mapped[str] = mapped_column(String(64))
    body: Mapped[str] = mapped_column(Text, default="")
    media: Mapped[list[dict[str, Any]]] = mapped_column(JSONType, default=list)
    status: Mapped[str] = mapped_column(String(16))
    batch: Mapped[str | None] = mapped_column(String(64), nullable=True)
    chat_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    # Outbound: the chat message it carries (None for the apology text).
    chat_message_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    sent_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)


class KnowledgeBase(Base):
    """Documents an LLM answers from: live content, not versioned (a published
    LLM always searches its knowledge bases' current content, as Retell's does)."""

    __tablename__ = "knowledge_bases"
    __table_args__ = (Index("ix_knowledge_bases_workspace_id", "workspace_id", "id"),)

    id: Mapped[str] = mapped_column(String(64), primary_key=True)  # knowledge_base_<ulid>
    workspace_id: Mapped[int] = mapped_column(ForeignKey("workspaces.id"))
    name: Mapped[str] = mapped_column(String(64))
    # in_progress -> complete | error; refreshing_in_progress while sources are
    # added or refreshed (what was indexed before stays searchable).
    status: Mapped[str] = mapped_column(String(32), default="in_progress")
    max_chunk_size: Mapped[int] = mapped_column(Integer)
    min_chunk_size: Mapped[int] = mapped_column(Integer)
    enable_auto_refresh: Mapped[bool] = mapped_column(Boolean, default=False)
    # What full-text scoring needs for the whole knowledge base (knowledge.search):
    # how many chunks it has and how many terms they hold together.
    chunk_count: Mapped[int] = mapped_column(Integer, default=0)
    term_count: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    last_refreshed_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)


class KnowledgeSource(Base):
    """One text, file or URL of a knowledge base: the original as it was
    given (or last fetched) and the text extracted from it, in the database
    so that every server process sees them."""

    __tablename__ = "knowledge_sources"
    __table_args__ = (Index("ix_knowledge_sources_base", "knowledge_base_id", "id"),)

    id: Mapped[str] = mapped_column(String(64), primary_key=True)  # source_<ulid>
    knowledge_base_id: Mapped[str] = mapped_column(ForeignKey("knowledge_bases.id", ondelete="CASCADE"))
    type: Mapped[str] = mapped_column(String(16))  # text | document | url
    title: Mapped[str] = mapped_column(String(512), default="")  # a text's title, a file's name, a page's title
    url: Mapped[str | None] = mapped_column(String(2048), nullable=True)
    filename: Mapped[str | None] = mapped_column(String(512), nullable=True)
    content_type: Mapped[str | None] = mapped_column(String(255), nullable=True)
    file_size: Mapped[int] = mapped_column(Integer, default=0)
    original: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True)
    text: Mapped[str | None] = mapped_column(Text, nullable=True)
    # SHA-256 of the extracted text: a refresh that finds the same text re-indexes nothing.
    content_hash: Mapped[str | None] = mapped_column(String(64), nullable=True)
    status: Mapped[str] = mapped_column(String(16), default="pending")  # pending | complete | error
    error_message: Mapped[str | None] = mapped_column(Text, nullable=True)
    chunk_count: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    indexed_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    refreshed_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)


class KnowledgeChunk(Base):
    """A piece of a source's text, the unit retrieval ranks and the prompt shows.

    ``terms`` is the text as the search indexes it (``knowledge.terms``:
    case-folded, stemmed words, space-separated), the same on both databases:
    SQLite's FTS5 table ``knowledge_chunks_fts`` and PostgreSQL's ``tsv``
    column (migration 0010; outside this model) index it. A source's chunks
    are replaced in one transaction, so a search sees all of them or none.
    """

    __tablename__ = "knowledge_chunks"
    __table_args__ = (
        Index("ix_knowledge_chunks_source", "source_id", "position"),
        Index("ix_knowledge_chunks_base", "knowledge_base_id"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    knowledge_base_id: Mapped[str] = mapped_column(String(64))
    source_id: Mapped[str] = mapped_column(ForeignKey("knowledge_sources.id", ondelete="CASCADE"))
    position: Mapped[int] = mapped_column(Integer)
    title: Mapped[str] = mapped_column(Text, default="")
    text: Mapped[str] = mapped_column(Text)
    terms: Mapped[str] = mapped_column(Text)
    term_count: Mapped[int] = mapped_column(Integer)
    # A dense vector when an embeddings model is configured: float32, little-endian.
    embedding: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True)
    embedding_model: Mapped[str | None] = mapped_column(String(128), nullable=True)


class KnowledgeTerm(Base):
    """How many of a knowledge base's chunks hold a term: the idf of full-text scoring."""

    __tablename__ = "knowledge_terms"

    knowledge_base_id: Mapped[str] = mapped_column(
        ForeignKey("knowledge_bases.id", ondelete="CASCADE"), primary_key=True
    )
    term: Mapped[str] = mapped_column(String(64), primary_key=True)
    chunks: Mapped[int] = mapped_column(Integer)
