"""Full-text scoring (knowledge.search): one 0..1 scale, the same on both databases."""

from __future__ import annotations

import asyncio
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from chatplane import auth
from chatplane.db import create_engine, create_sessionmaker, migrate, transaction
from chatplane.knowledge import dense, service
from chatplane.knowledge import search as search_module
from chatplane.knowledge.dense import Query as DenseQuery
from chatplane.knowledge.search import Lookup, Query, fuse, search
from chatplane.knowledge.terms import terms
from chatplane.settings import Settings
from tests.conftest import BACKENDS, dispose_settings, fresh_settings

# Every text has four terms: all chunks are of average length.
TEXTS = [
    "red apples grow slowly",
    "green apples taste sour",
    "bananas grow in bunches",
    "cherries need cold winters",
    "apples apples apples apples",
]


def _rows(kb_id: str, source_id: str, texts: list[str]) -> list[dict[str, Any]]:
    rows = []
    for position, text in enumerate(texts):
        words = terms(text)
        rows.append({"knowledge_base_id": kb_id, "source_id": source_id, "position": position, "title": "",
                     "text": text, "terms": " ".join(words), "term_count": len(words)})
    return rows


def _searches(kind: str, tmp: Path, queries: list[Query], texts: list[str] = TEXTS) -> list[list[tuple[int, float]]]:
    """Index ``texts`` in a fresh database of ``kind``; each query's (position, score) hits."""
    settings = fresh_settings(kind, tmp)
    try:
        migrate(settings)
        return asyncio.run(_indexed_and_searched(settings, queries, texts))
    finally:
        dispose_settings(settings)


async def _indexed_and_searched(settings: Settings, queries: list[Query], texts: list[str]
                                ) -> list[list[tuple[int, float]]]:
    engine = create_engine(settings, pooled=False)
    sessions = create_sessionmaker(engine)
    try:
        async with transaction(sessions) as session:
            workspace = await auth.create_workspace(session, name="w")
            base = await service.create_base(
                session, workspace_id=workspace.id, name="fruit", max_chunk_size=2000, min_chunk_size=10,
                enable_auto_refresh=False, texts=[("fruit", "\n\n".join(texts))], urls=[], files=[],
            )
            source = (await service.sources_of(session, base.id))[0]
            await service.add_chunks(session, base, source.id, _rows(base.id, source.id, texts))
            # Noise in another knowledge base: neither its chunks nor its counts reach the first one's.
            other = await service.create_base(
                session, workspace_id=workspace.id, name="noise", max_chunk_size=2000, min_chunk_size=10,
                enable_auto_refresh=False, texts=[("n", "n")], urls=[], files=[],
            )
            noise = (await service.sources_of(session, other.id))[0]
            await service.add_chunks(session, other, noise.id, _rows(other.id, noise.id, ["apples"] * 30))
        async with sessions() as session:
            results = []
            for query in queries:
                hits = await search(session, [base.id], query, top_k=10)
                assert {h.knowledge_base_id for h in hits} <= {base.id}
                results.append([(h.position, h.score) for h in hits])
            return results
    finally:
        await engine.dispose()


QUERIES = [
    Query.of("red apples grow slowly"),  # every term of chunk 0
    Query.of("apples"),
    Query.of("bananas grow"),
    Query.of("red apples grow slowly zyzzyva"),  # one term no chunk holds
    Query.of("grow", earlier=["bananas please"]),
]


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[list[tuple[int, float]]]]:
    return {kind: _searches(kind, tmp_path_factory.mktemp(kind), QUERIES) for kind in BACKENDS}


def test_the_same_scores_on_both_databases(results: dict[str, list[list[tuple[int, float]]]]) -> None:
    assert results["sqlite"] == results["postgresql"]


def test_every_term_of_the_query_once_scores_one(results: dict[str, Any]) -> None:
    exact, *_ = results["sqlite"]
    assert exact[0] == (0, 1.0)
    assert all(score < 1.0 for _, score in exact[1:])


def test_a_term_held_more_often_ranks_higher_and_is_capped(results: dict[str, Any]) -> None:
    apples = results["sqlite"][1]
    assert apples[0] == (4, 1.0)  # four times: ranked first, its score capped at 1
    assert sorted(apples[1:]) == [(0, 1.0), (1, 1.0)]  # once, in a chunk of average length


def test_the_score_is_the_weighted_share_of_the_query_held(results: dict[str, Any]) -> None:
    bananas = dict(results["sqlite"][2])
    assert bananas[2] == 1.0  # both terms
    assert 0 < bananas[0] < 0.5  # only "grow", the commoner of the two (lower idf)
    # A word of the question that no chunk holds lowers every score.
    exact, with_unknown = results["sqlite"][0], results["sqlite"][3]
    assert [p for p, _ in with_unknown] == [p for p, _ in exact]
    assert all(b < a for (_, a), (_, b) in zip(exact, with_unknown))


def test_earlier_messages_count_half(results: dict[str, Any]) -> None:
    hits = results["sqlite"][4]
    assert hits[0][0] == 2  # "bananas" (from before) breaks the tie between the two "grow" chunks
    assert hits[0][1] < 1.0  # "please" is in no chunk


# --- what the database ranks (knowledge.search.Lookup) ----------------------------


def test_the_rarest_terms_are_looked_for_as_many_as_fit() -> None:
    lookup = Lookup.of({"the": 900, "refund": 40, "premium": 300, "plan": 700}, chunks=10_000)
    assert lookup == Lookup(["refund", "premium"], [], True)  # 340 postings; with "plan" 1040 > POSTINGS
    assert Lookup.of({"the": 9_000}, chunks=10_000).all_of == ["the"]  # even the rarest too common: below


def test_common_terms_only_are_looked_for_together() -> None:
    # Each in 2 % to 50 % of 100,000 chunks: 100,000 * 0.02 * 0.03 = 60 expected to hold both.
    lookup = Lookup.of({"file": 50_000, "lines": 3_000, "how": 2_000}, chunks=100_000)
    assert lookup == Lookup(["how", "lines", "file"], ["how", "lines"], True)
    # All of them together still more than POSTINGS, or nothing left to rank by: any of them, unranked.
    assert Lookup.of({"file": 50_000, "line": 40_000}, chunks=100_000) == \
        Lookup(["line", "file"], ["line", "file"], False)
    assert Lookup.of({"file": 50_000}, chunks=100_000) == Lookup(["file"], ["file"], False)


COMMON = ["alpha gamma", "alpha delta", "beta gamma", "alpha beta", "beta delta"]


@pytest.mark.parametrize("kind", BACKENDS)
def test_chunks_holding_the_common_terms_together_come_first_then_any_holding_the_rarest(
        kind: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each term in more chunks than POSTINGS: the one chunk holding both is
    found though it is not the first of either term's; then, too few together,
    others holding the rarer ("alpha", by name on a tie)."""
    monkeypatch.setattr(search_module, "POSTINGS", 1)
    monkeypatch.setattr(search_module, "CANDIDATES", 1)
    [[best]] = _searches(kind, tmp_path / "one", [Query.of("alpha beta")], COMMON)
    assert best == (3, 1.0)
    monkeypatch.setattr(search_module, "CANDIDATES", 3)
    [hits] = _searches(kind, tmp_path / "three", [Query.of("alpha beta")], COMMON)
    assert hits[0] == (3, 1.0)
    assert sorted(position for position, _ in hits[1:]) == [0, 1]  # alpha's, not beta's


def test_query_terms_and_weights() -> None:
    query = Query.of("Refunding it?", earlier=["my refund", "the premium plan"])
    assert query.weights == {"refund": 1.0, "it": 1.0, "my": 0.5, "the": 0.5, "premium": 0.5, "plan": 0.5}


# --- fusion (knowledge.search.fuse): a pure function --------------------------------


def _row(chunk_id: int) -> Any:
    return SimpleNamespace(id=chunk_id, knowledge_base_id="kb", source_id="s", position=chunk_id, title="",
                           text=f"chunk {chunk_id}", source_title="", source_url=None)


def test_fusion_ranks_by_reciprocal_rank_and_scores_by_the_better_score() -> None:
    rows = {i: _row(i) for i in range(1, 6)}
    shares = {1: 1.4, 2: 0.9, 3: 0.2, 4: 0.0, 5: 0.0}  # full-text: 1 > 2 > 3
    cosines = {3: 0.8, 2: 0.7, 4: 0.1}  # dense: 3 > 2 > 4
    hits = fuse(rows, shares, cosines, top_k=10, filter_score=0.0)
    # 2 is second in both (1/62 + 1/62); 1 first in one (1/61); 3 third and first (1/63 + 1/61).
    expected = {1: 1 / 61, 2: 2 / 62, 3: 1 / 63 + 1 / 61, 4: 1 / 63}
    assert [h.chunk_id for h in hits] == sorted(expected, key=lambda c: -expected[c])
    by_id = {h.chunk_id: h for h in hits}
    assert by_id[1].score == 1.0 and by_id[1].full_text == 1.0 and by_id[1].dense is None  # capped share
    assert by_id[3].score == 0.8 and by_id[3].full_text == 0.2 and by_id[3].dense == 0.8
    assert 5 not in by_id  # neither ranking found it
    assert [h.rank for h in hits] == list(range(1, len(hits) + 1))


def test_fusion_filters_on_the_better_score_then_cuts_at_top_k() -> None:
    rows = {i: _row(i) for i in range(1, 5)}
    shares = {1: 0.5, 2: 0.1}
    cosines = {2: 0.65, 3: 0.2, 4: 0.61}
    kept = fuse(rows, shares, cosines, top_k=10, filter_score=0.6)
    assert {h.chunk_id for h in kept} == {2, 4}
    assert [h.chunk_id for h in fuse(rows, shares, cosines, top_k=1, filter_score=0.0)] == [2]


# --- dense: a process's vectors follow the index ------------------------------------


def test_vectors_are_read_again_when_a_source_is_reindexed_to_as_many_chunks(tmp_path: Path) -> None:
    """A source re-indexed to the same number of chunks, with no status change
    (another source still pending): the cache must not keep the old vectors."""
    for kind in BACKENDS:
        settings = fresh_settings(kind, tmp_path / kind)
        try:
            migrate(settings)
            assert asyncio.run(_reindexed_and_searched(settings)) == ("new", "new")
        finally:
            dispose_settings(settings)


async def _reindexed_and_searched(settings: Settings) -> tuple[str, str]:
    engine = create_engine(settings, pooled=False)
    sessions = create_sessionmaker(engine)
    vector = DenseQuery(dense.unit([1.0, 0.0, 0.0]), "m")

    def rows(kb_id: str, source_id: str, text: str, direction: list[float]) -> list[dict[str, Any]]:
        [row] = _rows(kb_id, source_id, [text])
        return [{**row, "embedding": dense.packed(direction), "embedding_model": "m"}]

    try:
        async with transaction(sessions) as session:
            workspace = await auth.create_workspace(session, name="w")
            base = await service.create_base(
                session, workspace_id=workspace.id, name="b", max_chunk_size=2000, min_chunk_size=10,
                enable_auto_refresh=False, texts=[("a", "a"), ("b", "b")], urls=[], files=[],
            )
            source = (await service.sources_of(session, base.id))[0]
            await service.add_chunks(session, base, source.id, rows(base.id, source.id, "old", [1.0, 0.0, 0.0]))
        async with sessions() as session:
            [before] = await search(session, [base.id], Query.of("zzz"), top_k=1, dense=vector)
            assert before.text == "old"
        async with transaction(sessions) as session:  # what the index job does, the other source pending
            base = await service.get_base(session, workspace_id=workspace.id, knowledge_base_id=base.id, for_update=True)
            await service.drop_chunks(session, base, source.id)
            await service.add_chunks(session, base, source.id, rows(base.id, source.id, "new", [1.0, 0.0, 0.0]))
            await service.settle(session, base)
        found = []
        for _ in range(2):
            async with sessions() as session:
                [hit] = await search(session, [base.id], Query.of("zzz"), top_k=1, dense=vector)
                found.append(hit.text)
        return found[0], found[1]
    finally:
        await engine.dispose()
