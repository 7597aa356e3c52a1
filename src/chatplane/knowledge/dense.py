"""Dense retrieval: chunks and queries as vectors of the embeddings model.

When ``knowledge.embedding_model`` names a model of the registry, the index
job embeds every chunk (its title and text) and stores the unit vector with
it (``knowledge_chunks.embedding``: float32 bytes, and the model's name), in
the same transaction as its terms. A query is embedded once per search.

The store is the database row, and the search is exact: each process keeps
a knowledge base's vectors as one NumPy matrix (``VectorCache``, reloaded
when the knowledge base changes: its ``updated_at`` and chunk count), and a
search is one matrix-vector product. Neither database here has a vector
index to offer (PostgreSQL 15 has no pgvector package on this machine), and
at the sizes a team's documents reach (10^5 chunks: 100k x 384 float32 is
150 MB, a product of ~5 ms) exact search is as fast as an approximate index
would be and never misses. The score is the cosine similarity, clipped to 0..1.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import numpy as np
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession

from chatplane.models import KnowledgeChunk
from chatplane.providers import Registry

BATCH = 64  # texts in one /embeddings call
VECTOR = np.dtype("<f4")  # as stored: float32, little-endian
CACHED_BASES = 64  # knowledge bases whose vectors a process keeps, the most recently searched


def unit(vector: list[float]) -> np.ndarray:
    array = np.asarray(vector, dtype=VECTOR)
    norm = float(np.linalg.norm(array))
    return array / norm if norm > 0 else array


def packed(vector: list[float]) -> bytes:
    return unit(vector).tobytes()


async def embed(registry: Registry, model: str, texts: list[str]) -> list[list[float]]:
    """Vectors of ``texts``, ``BATCH`` at a time (raises ``ProviderError``)."""
    vectors: list[list[float]] = []
    for start in range(0, len(texts), BATCH):
        vectors.extend(await registry.embed(model, texts[start:start + BATCH]))
    return vectors


@dataclass(frozen=True, slots=True)
class Query:
    """A query's vector and the model that made it (only that model's chunk vectors compare)."""

    vector: np.ndarray
    model: str


@dataclass(frozen=True, slots=True)
class _Vectors:
    stamp: tuple[Any, ...]
    ids: np.ndarray  # chunk ids, int64
    matrix: np.ndarray  # one unit row per chunk, float32


class VectorCache:
    """Per process: each knowledge base's chunk vectors, as the database last had them."""

    def __init__(self, size: int = CACHED_BASES) -> None:
        self.size = size
        self._bases: OrderedDict[tuple[str, str], _Vectors] = OrderedDict()

    async def vectors(self, db: AsyncSession | AsyncConnection, base_id: str, model: str,
                      updated_at: datetime, chunk_count: int) -> _Vectors:
        key = (base_id, model)
        stamp = (updated_at, chunk_count)
        found = self._bases.get(key)
        if found is None or found.stamp != stamp:
            rows = (await db.execute(
                select(KnowledgeChunk.id, KnowledgeChunk.embedding).where(
                    KnowledgeChunk.knowledge_base_id == base_id, KnowledgeChunk.embedding_model == model,
                    KnowledgeChunk.embedding.is_not(None))
                .order_by(KnowledgeChunk.id)
            )).all()
            if rows:
                ids = np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))
                matrix = np.frombuffer(b"".join(r[1] for r in rows), dtype=VECTOR).reshape(len(rows), -1)
            else:
                ids, matrix = np.empty(0, dtype=np.int64), np.empty((0, 0), dtype=VECTOR)
            found = _Vectors(stamp, ids, matrix)
            self._bases[key] = found
        self._bases.move_to_end(key)
        while len(self._bases) > self.size:
            self._bases.popitem(last=False)
        return found

    async def nearest(self, db: AsyncSession | AsyncConnection, bases: list[Any], query: Query,
                      limit: int) -> list[tuple[int, float]]:
        """The ``limit`` chunks of ``bases`` (rows of id, updated_at, chunk_count) closest to the query:
        (chunk id, cosine clipped to 0..1), closest first."""
        found: list[tuple[int, float]] = []
        for base in bases:
            vectors = await self.vectors(db, base.id, query.model, base.updated_at, base.chunk_count)
            if not len(vectors.ids) or vectors.matrix.shape[1] != query.vector.shape[0]:
                continue  # nothing embedded, or by a model of another size
            scores = vectors.matrix @ query.vector
            best = np.argpartition(-scores, limit)[:limit] if len(scores) > limit else range(len(scores))
            found.extend((int(vectors.ids[i]), float(scores[i])) for i in best)
        found.sort(key=lambda pair: (-pair[1], pair[0]))
        return [(chunk_id, min(1.0, max(0.0, score))) for chunk_id, score in found[:limit]]


CACHE = VectorCache()
