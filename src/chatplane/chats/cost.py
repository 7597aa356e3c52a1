"""What a chat cost: the tokens of every model call, at the registry's prices."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from typing import Any

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
