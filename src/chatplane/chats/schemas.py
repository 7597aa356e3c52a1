"""Chat shapes, as the seeds define them (camelCase, with their two snake_case
exceptions: ``uponai_dynamic_variables`` and ``tool_calls``)."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, Field, SerializerFunctionWrapHandler, model_serializer

from chatplane.schemas import MAX_VERSION, StrictModel, Variables, WorkspaceId

ChatStatus = Literal["ongoing", "ended", "error"]
ChatType = Literal["api_chat", "web_chat", "sms_chat"]
StringMap = dict[str, str]


class CreateChatRequest(StrictModel):
    workspace_id: WorkspaceId
    agent_id: str = Field(min_length=1, max_length=64)
    agent_version: int | None = Field(
        default=None, ge=1, le=MAX_VERSION, description="Run on this agent version; the latest if unset."
    )
    metadata: StringMap = Field(default_factory=dict)
    uponai_dynamic_variables: Variables = Field(default_factory=dict)


class ChatCompletionRequest(StrictModel):
    workspace_id: WorkspaceId
    content: str = Field(min_length=1, max_length=32_000, description="The user's message.")


class UpdateChatRequest(StrictModel):
    workspace_id: WorkspaceId
    metadata: StringMap | None = Field(default=None, description="Replaces the chat's metadata.")
    custom_attributes: StringMap | None = Field(
        default=None, description="Replaces the chat's custom attributes."
    )
    override_dynamic_variables: Variables | None = Field(
        default=None,
        description="Replaces the overrides; they win over every other variable but collected ones.",
    )


class ToolCallResult(BaseModel):
    content: str
    successful: bool


class ManifestSection(BaseModel):
    name: str = Field(description="general_prompt, state_prompt, knowledge, tools, history, user_message, tool_rounds.")
    estimatedTokens: int = Field(description="Characters / 4: one estimate for every provider.")
    messages: int | None = Field(default=None, description="history and tool_rounds: how many messages.")
    count: int | None = Field(default=None, description="tools: how many were offered.")


class ManifestPrompt(BaseModel):
    sections: list[ManifestSection] = Field(description="In the order the model read them.")
    estimatedTokens: int


class ManifestChunk(BaseModel):
    knowledgeBaseId: str
    sourceId: str
    sourceTitle: str
    sourceUrl: str | None
    chunkId: int
    position: int
    title: str
    text: str = Field(description="As it was given to the model (kept when the source changes or is deleted).")
    score: float = Field(description="0..1, the scale of `kb_config.filter_score`: the better of the two below.")
    fullTextScore: float = Field(description="The full-text score, 0..1.")
    denseScore: float | None = Field(description="The cosine similarity, 0..1; null without an embeddings model.")
    rank: int


class ManifestRetrieval(BaseModel):
    knowledgeBaseIds: list[str]
    earlierMessages: int = Field(description="Messages before the user's that joined the query at half weight.")
    embeddingModel: str | None = Field(description="Dense retrieval fused in with this model; null: full-text only.")
    tookMs: float
    chunks: list[ManifestChunk] = Field(description="Best first; empty when nothing reached `filter_score`.")


class ManifestModel(BaseModel):
    name: str
    latencyMs: float = Field(description="The model call's own time, from the request to the last byte of the reply.")
    promptTokens: int = Field(description="As the model counted them.")
    completionTokens: int
    cost: float = Field(description="USD, at the server's prices for the model.")


class Manifest(BaseModel):
    """What the model was given for one agent message, and what its call took."""

    prompt: ManifestPrompt
    retrieval: ManifestRetrieval | None = Field(description="None when the LLM names no knowledge base.")
    model: ManifestModel


class Message(BaseModel):
    role: Literal["assistant", "user"]
    content: str
    name: str | None = None
    tool_calls: list[dict[str, Any]] = Field(
        default_factory=list,
        description="OpenAI-shaped calls `{id, type, function: {name, arguments}}`, each with its `result`.",
    )
    messageId: str
    createdAt: datetime
    multimedia: list[dict[str, Any]] | None = Field(
        default=None,
        description="Attachments a user sent by MMS, `[{url, content_type}]`: recorded, not read by the agent. "
        "Only on messages that came with attachments.",
    )
    manifest: Manifest | None = Field(
        default=None,
        description="Agent messages a model wrote: what the model was given (prompt sections, retrieved "
        "knowledge with its text) and the call's time, tokens and cost. In the chat's own answers (a "
        "completion, `GET /api/chats/{chat_id}`), not in webhook payloads.",
    )

    @model_serializer(mode="wrap")
    def _without_empty_multimedia(self, handler: SerializerFunctionWrapHandler):  # type: ignore[no-untyped-def]
        data = handler(self)
        if isinstance(data, dict):
            for optional in ("multimedia", "manifest"):
                if data.get(optional) is None:
                    data.pop(optional, None)
        return data


class ChatCompletionResponse(BaseModel):
    messages: list[Message] = Field(description="What the agent produced in this turn (not the user's message).")


class ProductCost(BaseModel):
    product: str
    unitPrice: float
    cost: float


class ChatCost(BaseModel):
    productCosts: list[ProductCost]
    combinedCost: float


class ChatSummary(BaseModel):
    """A chat in a list: everything but its messages and transcript."""

    chatId: str
    agentId: str
    version: int = Field(description="The agent version the chat runs on.")
    status: ChatStatus
    type: ChatType
    metadata: StringMap
    customAttributes: StringMap
    startedAt: datetime | None
    endedAt: datetime | None
    chatCost: dict[str, Any] | None
    chatAnalysis: dict[str, Any] | None
    collectedDynamicVariables: dict[str, Any]
    uponai_dynamic_variables: StringMap
    overrideDynamicVariables: StringMap


class Chat(ChatSummary):
    transcript: str | None = Field(description='"Agent: …\\nUser: …\\n", one line per message.')
    messages: list[Message]


class ChatList(BaseModel):
    data: list[ChatSummary]
    pagination_key: str | None
