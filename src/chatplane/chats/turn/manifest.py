"""The context manifest: what the model was given for one agent message.

Every agent message a model wrote carries one (``chat_messages.manifest``,
shown by ``GET /api/chats/{id}``): the system prompt's sections, the tools
offered, the history and the user's message, each with its size in tokens;
the knowledge retrieved for the turn (each chunk with its text, kept here so
that it can be shown after its source is re-indexed or deleted); and the
model call's own figures: its time, its tokens as the model counted them,
and their cost at the registry's prices.

Section sizes are estimates (``estimate_tokens``: a token is taken as four
characters, about right for English with the tokenizers of current models):
one count that works for every provider. ``model.promptTokens`` is the
model's own count of the whole prompt.
"""

from __future__ import annotations

import json
from typing import Any

from chatplane.knowledge.retrieve import Retrieval, manifest_chunks
from chatplane.providers import ModelReply, Price

CHARS_PER_TOKEN = 4


def estimate_tokens(text: str) -> int:
    return -(-len(text) // CHARS_PER_TOKEN)


def _spoken(messages: list[dict[str, Any]]) -> int:
    """The estimated tokens of model-facing messages: their text and tool calls."""
    chars = 0
    for message in messages:
        chars += len(message.get("content") or "")
        if message.get("tool_calls"):
            chars += len(json.dumps(message["tool_calls"]))
    return -(-chars // CHARS_PER_TOKEN)


def prompt_part(
    sections: list[tuple[str, str]], tools: list[dict[str, Any]] | None, conversation: list[dict[str, Any]]
) -> dict[str, Any]:
    """The prompt's sections, in the order the model reads them: the system
    prompt's, the tools, the history before the user's new message, and that
    message (the last of ``conversation`` that a user wrote)."""
    last_user = max((i for i, m in enumerate(conversation) if m.get("role") == "user"), default=len(conversation))
    parts = [{"name": name, "estimatedTokens": estimate_tokens(text)} for name, text in sections]
    if tools:
        parts.append({"name": "tools", "count": len(tools), "estimatedTokens": estimate_tokens(json.dumps(tools))})
    before, asked, after = conversation[:last_user], conversation[last_user:last_user + 1], conversation[last_user + 1:]
    parts.append({"name": "history", "messages": len(before), "estimatedTokens": _spoken(before)})
    parts.append({"name": "user_message", "estimatedTokens": _spoken(asked)})
    if after:  # this turn's earlier calls and their tools' results
        parts.append({"name": "tool_rounds", "messages": len(after), "estimatedTokens": _spoken(after)})
    return {"sections": parts, "estimatedTokens": sum(p["estimatedTokens"] for p in parts)}


def retrieval_part(retrieval: Retrieval) -> dict[str, Any]:
    return {
        "knowledgeBaseIds": retrieval.knowledge_base_ids, "earlierMessages": retrieval.earlier,
        "embeddingModel": retrieval.embedding_model, "tookMs": retrieval.took_ms,
        "chunks": manifest_chunks(retrieval.hits),
    }


def model_part(model: str, reply: ModelReply, latency_ms: float, price: Price) -> dict[str, Any]:
    cost = (reply.prompt_tokens * price.input_per_million + reply.completion_tokens * price.output_per_million) / 1e6
    return {
        "name": model, "latencyMs": round(latency_ms, 3), "promptTokens": reply.prompt_tokens,
        "completionTokens": reply.completion_tokens, "cost": round(cost, 8),
    }


def manifest(
    prompt: dict[str, Any], retrieval: Retrieval | None, model: dict[str, Any]
) -> dict[str, Any]:
    return {"prompt": prompt, "retrieval": retrieval_part(retrieval) if retrieval else None, "model": model}
