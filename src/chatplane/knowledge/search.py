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

What the database ranks is kept to about ``POSTINGS`` chunks (``Lookup``),
whatever the size of the knowledge base: ranking costs per chunk ranked
(PostgreSQL's ``ts_rank`` reads each one's row: ~3 us), and a term most
chunks hold would make it rank nearly all of them. So the candidates are the
chunks holding any of the query's rarest terms, as many terms as fit in
``POSTINGS`` chunk-term pairs; when even the rarest term is held by more
chunks than that, they are the chunks holding the rarest terms together
(``all_of``), as many terms as it takes for the expected number of such
chunks to fit. Every term still counts in the score. In a small knowledge
base every term is looked for.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import func, literal_column, select, text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession

from chatplane.knowledge.dense import CACHE as dense_cache
from chatplane.knowledge.dense import Query as DenseQuery
from chatplane.knowledge.terms import terms
from chatplane.models import (
    KnowledgeBase,
    KnowledgeChunk,
    KnowledgeSource,
    KnowledgeTerm,
)

K1 = 1.2
RRF_K = 60  # reciprocal rank fusion's constant (Cormack et al. 2009)
B = 0.75
CANDIDATES = 50
POSTINGS = 1_000
MAX_QUERY_TERMS = 64
KEY_CHARS = 10  # the last characters of a knowledge base's id that its index tokens hold (migration 0010)


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
    full_text: float = 0.0  # the full-text share, capped at 1
    dense: float | None = None  # the cosine similarity, when dense retrieval ran


async def search(
    db: AsyncSession | AsyncConnection, knowledge_base_ids: list[str], query: Query, *, top_k: int,
    filter_score: float = 0.0, dense: DenseQuery | None = None,
) -> list[Hit]:
    """The ``top_k`` best chunks scoring at least ``filter_score``, best first;
    full-text alone, or fused with ``dense`` (``fuse``)."""
    if not knowledge_base_ids or (not query.weights and dense is None):
        return []
    bases = (await db.execute(
        select(KnowledgeBase.id, KnowledgeBase.updated_at, KnowledgeBase.chunk_count, KnowledgeBase.term_count)
        .where(KnowledgeBase.id.in_(knowledge_base_ids))
    )).all()
    chunks = sum(b.chunk_count for b in bases)
    if not chunks:
        return []
    scorer = await _scorer(db, knowledge_base_ids, query, chunks, sum(b.term_count for b in bases))
    rows = {row.id: row for row in await _candidates(db, knowledge_base_ids, scorer.lookup)} if scorer else {}
    shares = {chunk_id: scorer.share(row) for chunk_id, row in rows.items()} if scorer else {}
    nearest = await dense_cache.nearest(db, bases, dense, CANDIDATES) if dense is not None else []
    if nearest:
        unseen = [chunk_id for chunk_id, _ in nearest if chunk_id not in rows]
        for row in await _rows(db, unseen, knowledge_base_ids):
            rows[row.id] = row
            shares[row.id] = scorer.share(row) if scorer else 0.0
        return fuse(rows, shares, dict(nearest), top_k=top_k, filter_score=filter_score)
    scored = [(share, row) for chunk_id, share in shares.items() if share > 0 and share >= filter_score
              for row in (rows[chunk_id],)]
    # Ranked by the share before the cap: of two chunks that both answer
    # all of the question, the one that says more of it comes first.
    scored.sort(key=lambda pair: (-pair[0], pair[1].id))
    return [_hit(row, rank, min(1.0, share), min(1.0, share), None) for rank, (share, row) in
            enumerate(scored[:top_k], start=1)]


def fuse(rows: dict[int, Any], shares: dict[int, float], cosines: dict[int, float], *, top_k: int,
         filter_score: float) -> list[Hit]:
    """Full-text and dense rankings as one: reciprocal rank fusion (each chunk
    scores the sum of 1 / (``RRF_K`` + its rank) in each ranking that has it).
    A chunk's score on the 0..1 scale is the better of its two: its full-text
    share (capped at 1) and its cosine similarity, so ``filter_score`` keeps a
    chunk that either ranking finds relevant enough."""
    fused: dict[int, float] = {}
    lexical = sorted((c for c in shares if shares[c] > 0), key=lambda c: (-shares[c], c))
    semantic = sorted(cosines, key=lambda c: (-cosines[c], c))
    for ranking in (lexical, semantic):
        for rank, chunk_id in enumerate(ranking, start=1):
            fused[chunk_id] = fused.get(chunk_id, 0.0) + 1.0 / (RRF_K + rank)
    kept = []
    for chunk_id in sorted(fused, key=lambda c: (-fused[c], c)):
        full_text, cosine = min(1.0, shares.get(chunk_id, 0.0)), cosines.get(chunk_id)
        score = max(full_text, cosine or 0.0)
        if score > 0 and score >= filter_score and chunk_id in rows:
            kept.append((rows[chunk_id], score, full_text, cosine))
    return [_hit(row, rank, score, full_text, cosine)
            for rank, (row, score, full_text, cosine) in enumerate(kept[:top_k], start=1)]


def _hit(row: Any, rank: int, score: float, full_text: float, dense: float | None) -> Hit:
    return Hit(row.id, row.knowledge_base_id, row.source_id, row.position, row.title, row.text, round(score, 4), rank,
               row.source_title, row.source_url, round(full_text, 4), None if dense is None else round(dense, 4))


@dataclass(frozen=True, slots=True)
class _Scorer:
    """BM25 over the knowledge bases' term counts, as a share of the query's weight."""

    weights: dict[str, float]
    idf: dict[str, float]
    reference: float
    average: float
    lookup: Lookup  # how the database finds the candidates

    def share(self, row: Any) -> float:
        counts = Counter(row.terms.split())
        norm = K1 * (1 - B + B * row.term_count / self.average)
        value = sum(
            self.weights[t] * self.idf[t] * counts[t] * (K1 + 1) / (counts[t] + norm)
            for t in self.idf if counts[t]
        )
        return value / self.reference


async def _scorer(db: AsyncSession | AsyncConnection, knowledge_base_ids: list[str], query: Query, chunks: int,
                  lengths: int) -> _Scorer | None:
    """None when no chunk holds any of the query's terms."""
    wanted = sorted(query.weights, key=lambda t: -query.weights[t])[:MAX_QUERY_TERMS]
    if not wanted:
        return None
    held = dict((await db.execute(
        select(KnowledgeTerm.term, func.sum(KnowledgeTerm.chunks))
        .where(KnowledgeTerm.knowledge_base_id.in_(knowledge_base_ids), KnowledgeTerm.term.in_(wanted))
        .group_by(KnowledgeTerm.term)
    )).all())
    if not held:
        return None
    idf = {term: _idf(chunks, n) for term, n in held.items()}
    # A term no chunk holds (a typo, a word the documents do not use) counts
    # as if one chunk held it: the score says that part of the question is not answered.
    reference = sum(query.weights[t] * idf.get(t, _idf(chunks, 1)) for t in wanted)
    return _Scorer(query.weights, idf, reference, lengths / chunks, Lookup.of(held, chunks))


@dataclass(frozen=True, slots=True)
class Lookup:
    """How the database finds the candidates: the chunks holding every term of
    ``all_of`` when it names any, else any term of ``any_of``; ranked (by the
    database, among those found, with ``any_of``) only when they are expected
    to be at most ``POSTINGS`` and ``any_of`` has a term that ``all_of`` has
    not (else PostgreSQL's ranking would be the same for every chunk found),
    else any ``CANDIDATES`` of them."""

    any_of: list[str]
    all_of: list[str]
    ranked: bool

    @classmethod
    def of(cls, held: dict[str, int], chunks: int) -> Lookup:
        """From the number of chunks holding each term (``held``) of ``chunks``."""
        rarest = sorted(held, key=lambda t: (held[t], t))
        if held[rarest[0]] <= POSTINGS:
            # The rarest terms, as many as fit: a chunk holding none of them
            # would score low anyway (SQLite at 100k chunks, p50: 68.9 ms with
            # every term looked for, 5.9 ms with these; bench/README.md).
            any_of, postings = [], 0
            for term in rarest:
                if any_of and postings + held[term] > POSTINGS:
                    break
                any_of.append(term)
                postings += held[term]
            return cls(any_of, [], True)
        # Every term is common ("how many lines are in this file"): the chunks
        # holding the rarest ones together, expected (were the terms
        # independent) to be n * p1 * p2 ... of the n chunks.
        all_of, expected = [], float(chunks)
        for term in rarest:
            if all_of and expected <= POSTINGS:
                break
            all_of.append(term)
            expected *= held[term] / chunks
        return cls(rarest, all_of, expected <= POSTINGS and len(all_of) < len(rarest))


def _idf(chunks: int, holding: int) -> float:
    return math.log(1 + (chunks - holding + 0.5) / (holding + 0.5))


def _dialect(db: AsyncSession | AsyncConnection) -> str:
    return (db.bind if isinstance(db, AsyncSession) else db).dialect.name


_COLUMNS = (KnowledgeChunk.id, KnowledgeChunk.knowledge_base_id, KnowledgeChunk.source_id, KnowledgeChunk.position,
            KnowledgeChunk.title, KnowledgeChunk.text, KnowledgeChunk.terms, KnowledgeChunk.term_count,
            KnowledgeSource.title.label("source_title"), KnowledgeSource.url.label("source_url"))
_WITH_SOURCE = KnowledgeSource.id == KnowledgeChunk.source_id


async def _rows(db: AsyncSession | AsyncConnection, chunk_ids: list[int], knowledge_base_ids: list[str]) -> list:
    if not chunk_ids:
        return []
    # By id alone, the knowledge bases checked here: a condition on the
    # knowledge base made PostgreSQL's planner read that knowledge base's
    # whole index beside the ids' (4.3 ms of 100k chunks, EXPLAIN ANALYZE).
    wanted = set(knowledge_base_ids)
    rows = (await db.execute(
        select(*_COLUMNS).join(KnowledgeSource, _WITH_SOURCE).where(KnowledgeChunk.id.in_(chunk_ids))
    )).all()
    return [row for row in rows if row.knowledge_base_id in wanted]


async def _candidates(db: AsyncSession | AsyncConnection, knowledge_base_ids: list[str], lookup: Lookup) -> list:
    ids = await _ids(db, knowledge_base_ids, lookup.any_of, lookup.all_of, ranked=lookup.ranked)
    if lookup.all_of and len(ids) < CANDIDATES:
        # Too few chunks hold the rarest terms together: any others that hold the rarest.
        more = await _ids(db, knowledge_base_ids, lookup.all_of[:1], [], ranked=False)
        ids += [chunk_id for chunk_id in more if chunk_id not in ids][:CANDIDATES - len(ids)]
    return await _rows(db, ids, knowledge_base_ids)


async def _ids(db: AsyncSession | AsyncConnection, knowledge_base_ids: list[str], any_of: list[str],
               all_of: list[str], *, ranked: bool) -> list[int]:
    # Each knowledge base's term t is indexed as the token k<key>t (migration
    # 0010); terms are runs of letters and digits (terms.py), so a token is
    # never FTS5 or tsquery syntax.
    keys = [f"k{kb[-KEY_CHARS:]}" for kb in knowledge_base_ids]
    if _dialect(db) == "postgresql":
        # The ids alone, by the GIN index (the tokens say the knowledge bases:
        # a filter on the column made the planner walk every row of the
        # knowledge base instead), then the rows of the best. ts_rank of a
        # stripped tsvector counts the query's terms a chunk holds.
        anyof = func.to_tsquery("simple", _expression(keys, any_of, [], "|", "&", str))
        found = func.to_tsquery("simple", _expression(keys, any_of, all_of, "|", "&", str)) if all_of else anyof
        tsv = literal_column("knowledge_chunks.tsv")  # migration 0010: outside the model
        query = select(KnowledgeChunk.id).where(tsv.op("@@")(found)).limit(CANDIDATES)
        return list((await db.execute(
            query.order_by(func.ts_rank(tsv, anyof).desc()) if ranked else query)).scalars().all())
    match = _expression(keys, any_of, all_of, "OR", "AND", lambda token: f'"{token}"')
    order = "ORDER BY bm25(knowledge_chunks_fts) " if ranked else ""
    return list((await db.execute(
        text(f"SELECT rowid FROM knowledge_chunks_fts WHERE knowledge_chunks_fts MATCH :q {order}LIMIT :n"),
        {"q": match, "n": CANDIDATES},
    )).scalars().all())


def _expression(keys: list[str], any_of: list[str], all_of: list[str], or_: str, and_: str,
                token: Callable[[str], str]) -> str:
    """A tsquery or an FTS5 query (by its operators and how it writes a token):
    in each knowledge base (``keys``), every term of ``all_of`` when it names
    any, else any term of ``any_of``."""
    if all_of:
        return f" {or_} ".join("(" + f" {and_} ".join(token(key + t) for t in all_of) + ")" for key in keys)
    return f" {or_} ".join(token(key + t) for key in keys for t in any_of)
