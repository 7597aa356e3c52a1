"""Response models of the Retell routes where the OpenAPI document needs one
(``/v3/list-chats`` answers two shapes); the SDK's own types are the
authority, and ``tests/retell`` checks every answer against them."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field


class RetellChatAnalysis(BaseModel):
    chat_summary: str | None = None
    user_sentiment: Literal["Positive", "Neutral", "Negative", "Unknown"] | None = None
    chat_successful: bool | None = None
    custom_analysis_data: dict[str, Any] | None = None


class RetellProductCost(BaseModel):
    product: str
    unit_price: float | None = None
    cost: float


class RetellChatCost(BaseModel):
    combined_cost: float | None = None
    product_costs: list[RetellProductCost] = Field(default_factory=list)


class RetellChatItem(BaseModel):
    """Retell's ``ChatResponse`` without messages and transcript (a list item)."""

    chat_id: str
    agent_id: str
    version: int
    chat_status: Literal["ongoing", "ended", "error"]
    chat_type: str
    metadata: dict[str, Any]
    custom_attributes: dict[str, Any]
    start_timestamp: int | None = Field(description="Unix milliseconds.")
    end_timestamp: int | None = Field(description="Unix milliseconds.")
    chat_cost: RetellChatCost | None
    chat_analysis: RetellChatAnalysis | None
    collected_dynamic_variables: dict[str, str]
    retell_llm_dynamic_variables: dict[str, str]


class RetellChatList(BaseModel):
    """``/v3/list-chats`` without ``workspaceId``: Retell's ``ChatListResponse``."""

    items: list[RetellChatItem]
    has_more: bool
    pagination_key: str | None
    total: int | None = None
