"""Full-text retrieval over knowledge bases, scored on one 0..1 scale.

The database finds the candidates: the chunks of the named knowledge bases
that hold any of the query's terms, best first by its own ranking (SQLite:
FTS5's ``bm25``; PostgreSQL: ``ts_rank`` over the ``tsv`` column), at most
``CANDIDATES`` of them. Then every candidate is scored here, the same way on
both databases, from the terms stored with it and the knowledge bases' term
counts (``KnowledgeTerm``): BM25 (k1 = 1.2, b = 0.75, Lucene's idf, which is
never negative), divided by what a chunk of average length holding each of
the query's terms once would score. So:

- 1.0: the chunk holds every term of the query (more often, or in a shorter
  chunk, also scores 1.0: the score is capped there);
- 0.5: it holds terms that carry half of the query's weight, where a term's
  weight is its idf (rare words count more than common ones) times the
  query's weight for it (``Query``: the words of the user's last message
  count fully, earlier ones half);
- 0: nothing of it.

That is the scale ``kb_config.filter_score`` is on. It depends on the query
and the chunk, hardly on the corpus, and not on the database: the same
chunks score the same on SQLite and PostgreSQL.

Terms that most chunks hold (over ``COMMON`` of them, and over ``BROAD``
chunks) are left out of the candidate search when rarer ones remain (the
database would rank nearly every chunk) but still count in the score. In a
small knowledge base every term finds candidates.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field

from sqlalchemy import func, literal_column, select, text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession

from chatplane.knowledge.terms import terms
from chatplane.models import (
    KnowledgeBase,
    KnowledgeChunk,
    KnowledgeSource,
    KnowledgeTerm,
)

K1 = 1.2
B = 0.75
CANDIDATES = 50
COMMON = 0.5
BROAD = 2_000
MAX_QUERY_TERMS = 64
ULID_AT = len("knowledge_base_")  # where the id's ULID starts: the FTS5 table indexes that part


@dataclass
class Query:
    """Terms and their weights."""

    weights: dict[str, float] = field(default_factory=dict)

    @classmethod
    def of(cls, text_: str, *, earlier: list[str] = ()) -> Query:  # type: ignore[assignment]
        """The terms of ``text_`` (weight 1) and of ``earlier`` texts (weight 0.5:
        what "it" or "that" in the last message may refer to)."""
        query = cls()
        for before in earlier:
            for term in terms(before):
                query.weights.setdefault(term, 0.5)
        for term in terms(text_):
            query.weights[term] = 1.0
        return query


@dataclass(frozen=True, slots=True)
class Hit:
    chunk_id: int
    knowledge_base_id: str
    source_id: str
    position: int
    title: str
    text: str
    score: float
    rank: int
    source_title: str = ""  # a text's title, a file's name, a page's title
    source_url: str | None = None


async def search(
    db: AsyncSession | AsyncConnection, knowledge_base_ids: list[str], query: Query, *, top_k: int,
    filter_score: float = 0.0,
) -> list[Hit]:
    """The ``top_k`` best chunks scoring at least ``filter_score``, best first."""
    if not knowledge_base_ids or not query.weights:
        return []
    chunks, lengths = (await db.execute(
        select(func.coalesce(func.sum(KnowledgeBase.chunk_count), 0), func.coalesce(func.sum(KnowledgeBase.term_count), 0))
        .where(KnowledgeBase.id.in_(knowledge_base_ids))
    )).one()
    if not chunks:
        return []
    wanted = sorted(query.weights, key=lambda t: -query.weights[t])[:MAX_QUERY_TERMS]
    held = dict((await db.execute(
        select(KnowledgeTerm.term, func.sum(KnowledgeTerm.chunks))
        .where(KnowledgeTerm.knowledge_base_id.in_(knowledge_base_ids), KnowledgeTerm.term.in_(wanted))
        .group_by(KnowledgeTerm.term)
    )).all())
    if not held:
        return []
    idf = {term: _idf(chunks, n) for term, n in held.items()}
    # A term no chunk holds (a typo, a word the documents do not use) counts
    # as if one chunk held it: the score says that part of the question is not answered.
    reference = sum(query.weights[t] * idf.get(t, _idf(chunks, 1)) for t in wanted)
    rare = [t for t in held if held[t] <= max(COMMON * chunks, BROAD)]
    matched = rare or sorted(held, key=held.__getitem__)[:3]
    rows = await _candidates(db, knowledge_base_ids, matched)
    average = lengths / chunks
    scored = []
    for row in rows:
        counts = Counter(row.terms.split())
        norm = K1 * (1 - B + B * row.term_count / average)
        value = sum(
            query.weights[t] * idf[t] * counts[t] * (K1 + 1) / (counts[t] + norm)
            for t in idf if counts[t]
        )
        share = value / reference
        if share > 0 and share >= filter_score:
            scored.append((share, row))
    # Ranked by the share before the cap: of two chunks that both answer
    # all of the question, the one that says more of it comes first.
    scored.sort(key=lambda pair: (-pair[0], pair[1].id))
    return [
        Hit(row.id, row.knowledge_base_id, row.source_id, row.position, row.title, row.text,
            round(min(1.0, share), 4), rank, row.source_title, row.source_url)
        for rank, (share, row) in enumerate(scored[:top_k], start=1)
    ]


def _idf(chunks: int, holding: int) -> float:
    return math.log(1 + (chunks - holding + 0.5) / (holding + 0.5))


def _dialect(db: AsyncSession | AsyncConnection) -> str:
    return (db.bind if isinstance(db, AsyncSession) else db).dialect.name


async def _candidates(db: AsyncSession | AsyncConnection, knowledge_base_ids: list[str], matched: list[str]) -> list:
    columns = (KnowledgeChunk.id, KnowledgeChunk.knowledge_base_id, KnowledgeChunk.source_id, KnowledgeChunk.position,
               KnowledgeChunk.title, KnowledgeChunk.text, KnowledgeChunk.terms, KnowledgeChunk.term_count,
               KnowledgeSource.title.label("source_title"), KnowledgeSource.url.label("source_url"))
    with_source = KnowledgeSource.id == KnowledgeChunk.source_id
    if _dialect(db) == "postgresql":
        tsquery = func.to_tsquery("simple", " | ".join(matched))
        tsv = literal_column("knowledge_chunks.tsv")  # migration 0010: outside the model
        query = (
            select(*columns).join(KnowledgeSource, with_source)
            .where(KnowledgeChunk.knowledge_base_id.in_(knowledge_base_ids), tsv.op("@@")(tsquery))
            .order_by(func.ts_rank(tsv, tsquery).desc()).limit(CANDIDATES)
        )
        return list((await db.execute(query)).all())
    # Terms are runs of letters and digits (terms.py): quoted, nothing in them is FTS5 syntax.
    kbs = " OR ".join(f'"{kb[ULID_AT:]}"' for kb in knowledge_base_ids)
    words = " OR ".join(f'"{t}"' for t in matched)
    ids = (await db.execute(
        text("SELECT rowid FROM knowledge_chunks_fts WHERE knowledge_chunks_fts MATCH :q "
             "ORDER BY bm25(knowledge_chunks_fts, 0.0, 1.0) LIMIT :n"),
        {"q": f"kb : ({kbs}) AND terms : ({words})", "n": CANDIDATES},
    )).scalars().all()
    if not ids:
        return []
    return list((await db.execute(
        select(*columns).join(KnowledgeSource, with_source).where(KnowledgeChunk.id.in_(ids))
    )).all())
