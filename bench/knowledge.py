"""Knowledge bases: retrieval quality, retrieval speed, ingestion, and what retrieval adds to a turn.

    .venv/bin/python bench/knowledge.py                         # everything, SQLite file
    .venv/bin/python bench/knowledge.py --db postgresql         # a fresh database on 127.0.0.1:5432
    .venv/bin/python bench/knowledge.py quality                 # one part: quality | speed | turn
    .venv/bin/python bench/knowledge.py speed --sizes 10000     # a quicker look

Each part starts ``chatplane serve`` (one process, its job worker indexing)
on a fresh database, with the zero-latency model stub, and talks to it over
HTTP as a user would:

- **quality**: the man pages of this machine (``knowledge_questions.PAGES``,
  rendered by man(1)) as one text source each, and questions written by hand
  against them (``knowledge_questions.QUESTIONS``). A retrieved chunk is
  relevant when it comes from the question's page and holds its answer
  passage. Printed: recall@1, @3, @5 (a relevant chunk among the first k) and
  MRR over the first 10 (``POST .../search``), for full-text ranking, then on
  a second server with ``--embedding-model`` (default: the embedded model,
  mean-pooled: weak, but what every machine has) for dense and fused.
- **speed**: knowledge bases of ``--sizes`` chunks (10,000 and 100,000):
  synthetic sections whose words are drawn from the man-page corpus with
  their frequencies there, so that terms are spread as in real text. Printed:
  ingestion (chunks/s, from the first upload to ``complete``), and the search
  time of the questions as queries: the server's own (``took_ms``: the
  search, its SQL included) and the whole HTTP call, p50 and p99.
- **turn**: one chat whose LLM searches the 10,000-chunk knowledge base
  against one whose LLM names none, turns sent alternately: the completion's
  p50/p99 for each and their difference.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import re
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import (  # noqa: E402
    DEFAULT_PG_URL,
    MODEL,
    Conn,
    Stub,
    free_port,
    fresh_database,
    ms,
    pct,
    server_env,
    start,
    stop,
    stub,
    wait_up,
)
from knowledge_questions import PAGES, QUESTIONS, render  # noqa: E402

from chatplane.settings import EMBEDDED_MODEL  # noqa: E402

KEY = "bench-key-0123456789abcdef"
WS = 1
BASE = "/api/knowledge-bases"
BODY_BYTES = 900_000  # under the server's 1 MiB body limit
SECTION_WORDS = (60, 90)  # a synthetic section: ~450 characters, one chunk
SECTIONS_PER_SOURCE = 100


@dataclass
class Server:
    client: httpx.AsyncClient
    port: int

    async def settled(self, kb_id: str, timeout_s: float = 3600) -> dict:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            body = (await self.client.get(f"{BASE}/{kb_id}", params={"workspaceId": WS})).json()
            if body["status"] not in ("in_progress", "refreshing_in_progress"):
                return body
            await asyncio.sleep(0.2)
        raise TimeoutError(f"{kb_id} still indexing")

    async def create(self, name: str, **fields: object) -> dict:
        response = await self.client.post(BASE, json={"workspaceId": WS, "knowledge_base_name": name, **fields})
        response.raise_for_status()
        return response.json()

    async def add_texts(self, kb_id: str, texts: list[dict]) -> None:
        """``texts`` in as few calls as the body limit allows."""
        batch: list[dict] = []
        size = 0
        for text in texts:
            length = len(json.dumps(text))
            if batch and (size + length > BODY_BYTES or len(batch) == 100):
                await self._add(kb_id, batch)
                batch, size = [], 0
            batch.append(text)
            size += length
        if batch:
            await self._add(kb_id, batch)

    async def _add(self, kb_id: str, texts: list[dict]) -> None:
        response = await self.client.post(f"{BASE}/{kb_id}/sources",
                                          json={"workspaceId": WS, "knowledge_base_texts": texts})
        response.raise_for_status()


@asynccontextmanager
async def serve(model: Stub, *, db: str, tmp: Path, pg_url: str, embedding_model: str | None = None
                ) -> AsyncIterator[Server]:
    async with fresh_database(db, tmp, pg_url, "chatplane_kb_bench") as url:
        env = server_env(model.url, data_dir=tmp / "chatplane", key=KEY,
                         database_url=url if db == "postgresql" else None)
        if embedding_model:
            env["CHATPLANE_KNOWLEDGE__EMBEDDING_MODEL"] = embedding_model
        port = free_port()
        server = start([sys.executable, "-m", "chatplane.cli", "serve", "--port", str(port), "--workers", "1",
                        "--log-level", "warning"], env=env)
        try:
            await wait_up(f"http://127.0.0.1:{port}/healthz", server)
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=600,
                                         headers={"Authorization": f"Bearer {KEY}"}) as client:
                yield Server(client, port)
        finally:
            stop(server)


# --- the corpus -------------------------------------------------------------------------


def man_corpus() -> dict[str, str]:
    pages = {}
    for page in PAGES:
        text = render(page)
        if text.strip():
            pages[page] = text
    return pages


def other_pages(count: int) -> dict[str, str]:
    """``count`` man pages of this machine's sections 1, 8, 5 and 7 that are not
    ``PAGES`` (in name order), rendered: real text about much the same things."""
    names = sorted({path.name.split(".")[0] for section in ("man1", "man8", "man5", "man7")
                    for path in (Path("/usr/share/man") / section).glob("*")} - set(PAGES))
    pages: dict[str, str] = {}
    with ThreadPoolExecutor(4) as pool:
        for start in range(0, len(names), 100):
            batch = names[start:start + 100]
            pages.update((name, text) for name, text in zip(batch, pool.map(_rendered, batch)) if len(text) > 200)
            if len(pages) >= count:
                break
    return dict(list(pages.items())[:count])


def _rendered(page: str) -> str:
    try:
        return render(page)
    except subprocess.CalledProcessError:  # a page man(1) cannot show
        return ""


def normalized(text: str) -> str:
    return " ".join(text.split())


WORD = re.compile(r"[A-Za-z][A-Za-z'-]+")


def synthetic_sources(pages: dict[str, str], chunks: int, seed: int = 16) -> list[dict]:
    """Text sources of ``chunks`` sections in all, words drawn from the corpus by frequency."""
    counts = Counter(w.lower() for text in pages.values() for w in WORD.findall(text))
    words, weights = zip(*counts.items())
    rng = random.Random(seed)
    sources = []
    for s in range(-(-chunks // SECTIONS_PER_SOURCE)):
        n = min(SECTIONS_PER_SOURCE, chunks - s * SECTIONS_PER_SOURCE)
        sections = []
        for i in range(n):
            body = " ".join(rng.choices(words, weights, k=rng.randint(*SECTION_WORDS)))
            sections.append(f"## Part {i}\n\n{body.capitalize()}.")
        sources.append({"title": f"Synthetic {s}", "text": "\n\n".join(sections)})
    return sources


# --- the parts --------------------------------------------------------------------------


async def quality(server: Server, pages: dict[str, str], *, dense: bool = False, others: dict[str, str] | None = None
                  ) -> None:
    """Full-text ranking; with ``dense`` (a server with an embeddings model) the
    dense ranking and the fused one, from the same searches: asked for 50, the
    fused list holds every chunk of the dense top 10 (RRF ranks any of them
    above a chunk outside both top 10s), so the dense ranking is those hits
    ordered by their cosine. With ``others``, the man pages share their
    knowledge base with those (``other_pages``): the same questions, asked of
    a large knowledge base of real text."""
    kb = await server.create("man pages")
    started = time.perf_counter()
    if others:
        await server.add_texts(kb["knowledge_base_id"], [{"title": p, "text": t} for p, t in others.items()])
    await server.add_texts(kb["knowledge_base_id"], [{"title": p, "text": t} for p, t in pages.items()])
    done = await server.settled(kb["knowledge_base_id"])
    took = time.perf_counter() - started
    title_of = {s["source_id"]: s["title"] for s in done["knowledge_base_sources"]}
    print(f"quality: {len(pages)} man pages{f' and {len(others)} others' if others else ''}, "
          f"{done['chunk_count']} chunks (indexed in {took:.1f} s), "
          f"{len(QUESTIONS)} questions")
    asked = [q for q in QUESTIONS if q[1] in pages]
    rankings: dict[str, list[int | None]] = {"fused": [], "dense": []} if dense else {"full-text": []}
    for question, page, answer in asked:
        response = await server.client.post(f"{BASE}/{kb['knowledge_base_id']}/search",
                                            json={"workspaceId": WS, "query": question, "top_k": 50})
        hits = response.json()["chunks"]
        orders = {"fused": hits[:10], "dense": sorted(hits, key=lambda h: -(h["dense_score"] or 0))[:10]} \
            if dense else {"full-text": hits[:10]}
        for name, order in orders.items():
            rankings[name].append(next((rank for rank, h in enumerate(order, start=1) if title_of[h["source_id"]] == page
                                        and normalized(answer) in normalized(h["text"])), None))
    for name, ranks in rankings.items():
        n = len(ranks)
        recall = {k: sum(1 for r in ranks if r is not None and r <= k) / n for k in (1, 3, 5, 10)}
        mrr = sum(1 / r for r in ranks if r is not None) / n
        print(f"  {name}: recall@1 {recall[1]:.3f}  @3 {recall[3]:.3f}  @5 {recall[5]:.3f}  @10 {recall[10]:.3f}  "
              f"MRR@10 {mrr:.3f}  (n={n})")
    if not dense:
        missed = [q for q, r in zip(asked, rankings["full-text"]) if r is None]
        for question, page, _ in missed[:8]:
            print(f"    missed: {question!r} ({page})")


async def speed(server: Server, pages: dict[str, str], sizes: list[int], queries: int) -> dict[int, str]:
    made = {}
    for size in sizes:
        kb = await server.create(f"synthetic {size}", max_chunk_size=600, min_chunk_size=300)
        sources = synthetic_sources(pages, size)
        started = time.perf_counter()
        await server.add_texts(kb["knowledge_base_id"], sources)
        done = await server.settled(kb["knowledge_base_id"])
        took = time.perf_counter() - started
        assert done["status"] == "complete", done["error_messages"][:3]
        print(f"speed: {done['chunk_count']} chunks in {len(sources)} sources, indexed in {took:.1f} s: "
              f"{done['chunk_count'] / took:.0f} chunks/s")
        server_ms, call_ms, found = [], [], []
        conn = Conn(server.port, f"authorization: Bearer {KEY}\r\n")
        path = f"{BASE}/{kb['knowledge_base_id']}/search"
        try:
            for i in range(20):  # warm the caches
                await conn.request(path, {"workspaceId": WS, "query": QUESTIONS[i % len(QUESTIONS)][0]})
            for i in range(queries):
                body = {"workspaceId": WS, "query": QUESTIONS[i % len(QUESTIONS)][0], "top_k": 5}
                t = time.perf_counter()
                status, payload = await conn.request(path, body)
                call_ms.append(time.perf_counter() - t)
                answer = json.loads(payload)
                assert status == 200, payload[:200]
                server_ms.append(answer["took_ms"] / 1000)
                found.append(len(answer["chunks"]))
        finally:
            conn.close()
        print(f"  search of {queries} questions (top 5): server p50 {ms(pct(server_ms, 0.5))} p99 "
              f"{ms(pct(server_ms, 0.99))}; HTTP call p50 {ms(pct(call_ms, 0.5))} p99 {ms(pct(call_ms, 0.99))}; "
              f"{sum(found) / len(found):.1f} chunks found on average")
        made[size] = kb["knowledge_base_id"]
    return made


async def turn(server: Server, kb_id: str, turns: int) -> None:
    async def agent_on(**llm_fields: object) -> str:
        llm = (await server.client.post("/api/llms", json={
            "workspaceId": WS, "display_name": "b", "model": MODEL, "general_prompt": "You are Ava.",
            **llm_fields})).json()
        return (await server.client.post("/api/chat-agents", json={
            "workspaceId": WS, "agent_name": "b", "response_engine": {"type": "uponai-llm", "llm_id": llm["llm_id"]},
        })).json()["agent_id"]

    async def new_chat(agent: str) -> str:
        response = await server.client.post("/api/chats", json={"workspaceId": WS, "agent_id": agent})
        return response.json()["chatId"]

    agents = {"without": await agent_on(),
              "with": await agent_on(knowledge_base_ids=[kb_id], kb_config={"top_k": 3, "filter_score": 0.0})}
    times: dict[str, list[float]] = {kind: [] for kind in agents}
    conn = Conn(server.port, f"authorization: Bearer {KEY}\r\n")
    try:
        chats = {}
        for i in range(turns + 20):
            if i % 20 == 0:  # a chat's history stays a conversation's, not hundreds of turns'
                chats = {kind: await new_chat(agent) for kind, agent in agents.items()}
            for kind in ("with", "without") if i % 2 else ("without", "with"):
                body = {"workspaceId": WS, "content": QUESTIONS[i % len(QUESTIONS)][0]}
                t = time.perf_counter()
                status, payload = await conn.request(f"/api/chats/{chats[kind]}/completions", body)
                assert status == 201, payload[:200]
                if i >= 20:
                    times[kind].append(time.perf_counter() - t)
    finally:
        conn.close()
    without, with_kb = times["without"], times["with"]
    print(f"turn ({turns} each, alternating, 3 chunks): without knowledge p50 {ms(pct(without, 0.5))} p99 "
          f"{ms(pct(without, 0.99))}; with retrieval p50 {ms(pct(with_kb, 0.5))} p99 {ms(pct(with_kb, 0.99))}; "
          f"overhead p50 {ms(pct(with_kb, 0.5) - pct(without, 0.5))}")


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("part", nargs="?", choices=("all", "quality", "speed", "turn"), default="all")
    parser.add_argument("--db", choices=("sqlite", "postgresql"), default="sqlite")
    parser.add_argument("--pg-url", default=DEFAULT_PG_URL)
    parser.add_argument("--sizes", default="10000,100000", help="chunks of each speed knowledge base")
    parser.add_argument("--queries", type=int, default=500, help="searches timed at each size")
    parser.add_argument("--other-pages", type=int, default=0,
                        help="quality: as many other man pages of this machine in the same knowledge base")
    parser.add_argument("--turns", type=int, default=200, help="turns timed with and without retrieval")
    parser.add_argument("--embedding-model", default=EMBEDDED_MODEL,
                        help="quality: the embeddings model of the dense and fused rankings (default: the embedded "
                        "one); '' for full-text only")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    pages = man_corpus()
    print(f"database={args.db}; corpus: {len(pages)} of {len(PAGES)} man pages, "
          f"{sum(len(t) for t in pages.values()) / 1e6:.1f} M characters")
    with tempfile.TemporaryDirectory() as tmp:
        async with stub() as model, serve(model, db=args.db, tmp=Path(tmp), pg_url=args.pg_url) as server:
            if args.part in ("all", "quality"):
                others = other_pages(args.other_pages) if args.other_pages else None
                await quality(server, pages, others=others)
                if args.embedding_model:
                    async with serve(model, db=args.db, tmp=Path(tmp) / "dense", pg_url=args.pg_url,
                                     embedding_model=args.embedding_model) as embedding:
                        print(f"quality with embeddings model {args.embedding_model}:")
                        await quality(embedding, pages, dense=True, others=others)
            made = {}
            if args.part in ("all", "speed"):
                made = await speed(server, pages, sizes, args.queries)
            if args.part in ("all", "turn"):
                kb_id = made.get(10_000) or (await speed(server, pages, [10_000], 50))[10_000]
                await turn(server, kb_id, args.turns)


if __name__ == "__main__":
    asyncio.run(main())
