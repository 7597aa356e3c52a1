"""Chat agents: an LLM configuration plus how its chats are run and reported."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal, Union
from zoneinfo import ZoneInfo

from pydantic import AfterValidator, Field, model_validator

from chatplane.chats.prompt import NOT_A_ZONE
from chatplane.errors import FieldError
from chatplane.schemas import (
    MAX_VERSION,
    AnalysisField,
    HttpUrlStr,
    StrictModel,
    Variables,
    WorkspaceId,
    partial_model,
    unique_names,
)

WebhookEvent = Literal["chat_started", "chat_ended", "chat_analyzed", "transcript_updated"]
DEFAULT_WEBHOOK_EVENTS: list[WebhookEvent] = ["chat_started", "chat_ended", "chat_analyzed"]


class UponaiLlmEngine(StrictModel):
    type: Literal["uponai-llm"]
    llm_id: str = Field(min_length=1, max_length=64)
    version: int | None = Field(
        default=None, ge=1, le=MAX_VERSION,
        description="Pin an LLM version; the latest if unset (pinned on publish).",
    )


class ConversationFlowEngine(StrictModel):
    type: Literal["conversation-flow"]
    conversation_flow_id: str = Field(min_length=1, max_length=64)
    version: int | None = Field(default=None, ge=1, le=MAX_VERSION)


ResponseEngine = Annotated[Union[UponaiLlmEngine, ConversationFlowEngine], Field(discriminator="type")]


def _timezone(value: str) -> str:
    try:
        ZoneInfo(value)
    except NOT_A_ZONE:
        raise ValueError(f"unknown IANA time zone {value!r}") from None
    return value


Locale = Annotated[str, Field(pattern=r"^[a-z]{2,3}(-[A-Za-z0-9]{2,4})?$", examples=["en-US"])]


class ChatAgentConfig(StrictModel):
    agent_name: str = Field(min_length=1, max_length=200)
    response_engine: ResponseEngine
    auto_close_message: str | None = Field(
        default=None, max_length=10_000, description="Sent before an inactive chat is closed."
    )
    end_chat_after_silence_ms: int = Field(default=3_600_000, ge=120_000, le=259_200_000)
    webhook_url: HttpUrlStr | None = None
    webhook_events: list[WebhookEvent] = Field(default_factory=lambda: list(DEFAULT_WEBHOOK_EVENTS))
    webhook_timeout_ms: int = Field(default=10_000, ge=1_000, le=120_000)
    webhook_format: Literal["chatplane", "retell"] = Field(
        default="chatplane",
        description="The shape of the `chat` in webhook bodies: chatplane's Chat, or Retell's `ChatResponse` "
        "(what a Retell handler parses; set by the Retell routes when they create the agent). Signed alike.",
    )
    timezone: Annotated[str, AfterValidator(_timezone)] = Field(
        default="America/Los_Angeles", max_length=64, description="IANA zone used by `{{current_time}}`."
    )
    language: Locale | Annotated[list[Locale], Field(min_length=1)] = "en-US"
    is_public: bool = False
    data_storage_setting: Literal["everything", "everything_except_pii", "basic_attributes_only"] = (
        "everything"
    )
    data_storage_retention_days: int | None = Field(default=None, ge=1, le=730)
    post_chat_analysis_model: str | None = Field(
        default=None, description="A model the registry knows; the agent's LLM model if unset."
    )
    post_chat_analysis_data: list[AnalysisField] = Field(default_factory=list)
    uponai_dynamic_variables: Variables = Field(default_factory=dict)

    @model_validator(mode="after")
    def _consistent(self) -> ChatAgentConfig:
        unique_names(self.post_chat_analysis_data, "post_chat_analysis_data")
        if len(set(self.webhook_events)) != len(self.webhook_events):
            raise FieldError("webhook_events", "lists an event twice")
        return self


class ChatAgentCreate(ChatAgentConfig):
    workspace_id: WorkspaceId


class ChatAgentUpdate(partial_model(ChatAgentConfig, "ChatAgentPatch")):  # type: ignore[misc]
    workspace_id: WorkspaceId


class ChatAgentOut(ChatAgentConfig):
    agent_id: str
    version: int
    is_published: bool
    created_at: datetime
    updated_at: datetime
    last_modification_timestamp: int = Field(description="`updated_at` in Unix milliseconds.")
