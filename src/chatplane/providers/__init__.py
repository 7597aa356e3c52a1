"""The model registry: every model name the server offers, and how to reach it."""

from __future__ import annotations

from dataclasses import dataclass

from chatplane.providers.base import (
    ModelClient,
    ModelReply,
    ModelRequest,
    OnDelta,
    ProviderError,
    ProviderTimeout,
)
from chatplane.providers.embedded import EmbeddedModel
from chatplane.providers.openai_compat import OpenAICompatible
from chatplane.settings import Settings

__all__ = [
    "ModelReply", "ModelRequest", "OnDelta", "ProviderError", "ProviderTimeout", "Registry", "Price",
]


@dataclass(frozen=True, slots=True)
class Price:
    """USD per one million tokens."""

    input_per_million: float = 0.0
    output_per_million: float = 0.0


@dataclass(frozen=True, slots=True)
class _Route:
    client: ModelClient
    upstream: str
    price: Price


class Registry:
    """Model name -> client, upstream name and price. One per process."""

    def __init__(self, settings: Settings) -> None:
        self._clients: list[ModelClient] = []
        self._routes: dict[str, _Route] = {}
        embedded = EmbeddedModel(settings.embedded)
        self._clients.append(embedded)
        self._routes[settings.embedded.name] = _Route(embedded, settings.embedded.name, Price())
        for provider in settings.providers:
            client = OpenAICompatible(provider)
            self._clients.append(client)
            for model in provider.models:
                self._routes[model.name] = _Route(
                    client,
                    model.upstream_name or model.name,
                    Price(model.input_per_million, model.output_per_million),
                )

    def price(self, model: str) -> Price:
        route = self._routes.get(model)
        return route.price if route else Price()

    async def complete(self, model: str, request: ModelRequest, on_delta: OnDelta | None = None) -> ModelReply:
        route = self._routes.get(model)
        if route is None:
            # The configuration names a model the settings no longer offer.
            raise ProviderError(
                f"model {model!r} is not offered by this server any more", code="model_unavailable"
            )
        return await route.client.complete(route.upstream, request, on_delta)

    async def embed(self, model: str, texts: list[str]) -> list[list[float]]:
        """Vectors of ``texts`` from the embeddings model ``model`` (``knowledge.embedding_model``)."""
        route = self._routes.get(model)
        if route is None:
            raise ProviderError(f"embeddings model {model!r} is not offered by this server", code="model_unavailable")
        return await route.client.embed(route.upstream, texts)

    async def aclose(self) -> None:
        for client in self._clients:
            await client.aclose()  # type: ignore[attr-defined]
