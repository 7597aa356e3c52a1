"""What a chat cost: the tokens of every model call, at the registry's prices."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from chatplane.models import Chat, ChatMessage
from chatplane.providers import Registry


def chat_cost(registry: Registry, usage: Iterable[tuple[str | None, int, int]]) -> dict[str, Any]:
    """``usage``: (model, prompt tokens, completion tokens) per model call.

    One product line per model and direction, e.g. ``gpt-4.1-mini input
    tokens``; ``unitPrice`` is USD per token, ``cost`` USD. Models without a
    price (the embedded one) cost 0 and are still listed.
    """
    tokens: dict[tuple[str, str], int] = defaultdict(int)
    for model, prompt, completion in usage:
        if model is None:
            continue
        tokens[(model, "input")] += prompt
        tokens[(model, "output")] += completion
    products = []
    for (model, direction), count in sorted(tokens.items()):
        price = registry.price(model)
        per_million = price.input_per_million if direction == "input" else price.output_per_million
        unit = per_million / 1_000_000
        products.append(
            {"product": f"{model} {direction} tokens", "unitPrice": unit, "quantity": count, "cost": round(unit * count, 8)}
        )
    return {"productCosts": products, "combinedCost": round(sum(p["cost"] for p in products), 8)}


async def update_cost(session: AsyncSession, *, registry: Registry, chat: Chat) -> None:
    """``chat.chat_cost`` and ``combined_cost`` from every model call of the chat so far."""
    rows = (
        await session.execute(
            select(ChatMessage.model, ChatMessage.prompt_tokens, ChatMessage.completion_tokens).where(
                ChatMessage.chat_id == chat.id, ChatMessage.model.is_not(None)
            )
        )
    ).all()
    usage = [tuple(r) for r in rows] + [
        (u["model"], u["prompt_tokens"], u["completion_tokens"]) for u in chat.extra_usage or []
    ]
    chat.chat_cost = chat_cost(registry, usage)
    chat.combined_cost = chat.chat_cost["combinedCost"]
