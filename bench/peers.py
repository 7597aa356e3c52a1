"""chatplane against the framework's ceiling and an open-source peer, in one run.

    .venv/bin/python bench/peers.py [--db sqlite|postgresql] [--workers N] [--levels 1,16,64,256]

One zero-latency stub (``python -m chatplane.testing``) serves three servers,
each on its own fresh database:

1. **bare**: ``bare_app.py``, one FastAPI route that calls the stub with the
   ``openai`` client and inserts two rows, under ``uvicorn --workers N``:
   what chatplane's stack can do at most;
2. **langgraph**: LangGraph's API server from PyPI (``langgraph dev`` from
   ``langgraph-cli[inmem]``, in-memory runtime, one process) serving
   ``langgraph_peer/graph.py``, one node that calls the stub through
   ``ChatOpenAI`` and keeps the thread's history; a chat is a thread
   (``POST /threads``), a message is ``POST /threads/{id}/runs/wait``;
3. **chatplane**: ``chatplane serve --workers N``, as ``chats.py`` runs it.

All three are started first; then each concurrency level runs against bare,
then langgraph, then chatplane, one at a time (the other two sit idle), so
that whatever else a shared machine is doing weighs on all three alike. The
same users drive each (``harness.run_level``: each user on its own
connection, chats of ``--turns-per-chat`` messages made before the clock
starts). A table then gives completions/s, p50/p99 and the server's CPU per
completion at each concurrency, and the ratios of completions/s. The peer
runs in its own virtual environment, ``bench/.venv-peers``, made and filled
from PyPI on first use (``--setup`` to only do that).
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import subprocess
import sys
import tempfile
import uuid
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path

import httpx

import bare_app
from chats import add_common_arguments, chatplane, describe_build
from harness import (
    ROOT,
    Level,
    Stub,
    Target,
    clean_env,
    free_port,
    fresh_database,
    level_line,
    ms,
    pct,
    run_level,
    start,
    stop,
    stub,
    wait_up,
    warm_up,
)

BENCH = Path(__file__).resolve().parent
PEER_VENV = BENCH / ".venv-peers"
# Pinned so that figures taken on different days compare; bump on purpose.
PEER_REQUIREMENTS = [
    "langgraph-cli[inmem]==0.4.40",
    "langgraph-api==0.16.7",
    "langgraph-runtime-inmem==0.36.7",
    "langgraph==1.2.22",
    "langchain-openai==1.7.3",
]
PEER_PACKAGES = ["langgraph-cli", "langgraph-api", "langgraph-runtime-inmem", "langgraph", "langchain-openai", "openai"]


def ensure_peer_venv() -> str:
    """Make ``bench/.venv-peers`` and install the peer into it if that was not done yet."""
    langgraph = PEER_VENV / "bin" / "langgraph"
    if not langgraph.exists():
        print(f"setting up {PEER_VENV.relative_to(ROOT)} (pip install {' '.join(PEER_REQUIREMENTS)})", flush=True)
        subprocess.run([sys.executable, "-m", "venv", str(PEER_VENV)], check=True)
        pip = [str(PEER_VENV / "bin" / "python"), "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
        subprocess.run([*pip, *PEER_REQUIREMENTS], check=True)
    report = "import importlib.metadata as m, sys\nprint(' '.join(f'{p} {m.version(p)}' for p in sys.argv[1:]))"
    versions = subprocess.run(
        [str(PEER_VENV / "bin" / "python"), "-c", report, *PEER_PACKAGES],
        capture_output=True, text=True, check=True,
    )
    return versions.stdout.strip()


@asynccontextmanager
async def bare(model: Stub, *, db: str, tmp: Path, pg_url: str, workers: int,
               call: str = "post") -> AsyncIterator[Target]:
    async with fresh_database(db, tmp, pg_url, "bare_bench") as url:
        await bare_app.create_schema(url)
        env = clean_env()
        env.update(BARE_DATABASE_URL=url, BARE_STUB_URL=model.url, BARE_MODEL_CALL=call)
        port = free_port()
        server = start([sys.executable, "-m", "uvicorn", "bare_app:app", "--app-dir", str(BENCH),
                        "--port", str(port), "--workers", str(workers), "--log-level", "warning",
                        "--no-access-log"], env=env)
        try:
            await wait_up(f"http://127.0.0.1:{port}/healthz", server)

            async def new_chat() -> str:
                return uuid.uuid4().hex

            def message(chat: str, i: int) -> tuple[str, dict]:
                return f"/chats/{chat}/completions", {"content": f"m{i}"}

            yield Target(f"bare FastAPI ({workers} processes, openai client: {call})", server, port, new_chat,
                         message, 200, database=url.rsplit("/", 1)[1] if db == "postgresql" else None)
        finally:
            stop(server)


@asynccontextmanager
async def langgraph(model: Stub, *, tmp: Path, jobs: int) -> AsyncIterator[Target]:
    # langgraph dev resolves the graph's path from its working directory and
    # keeps its state (.langgraph_api) there: a scratch copy, not the repo.
    work = tmp / "langgraph"
    shutil.copytree(BENCH / "langgraph_peer", work, ignore=shutil.ignore_patterns("__pycache__"))
    env = clean_env()
    env.update(PEER_STUB_URL=model.url, LOG_LEVEL="WARNING", LANGGRAPH_CLI_NO_ANALYTICS="1",
               LANGSMITH_TRACING="false", LANGCHAIN_TRACING_V2="false")
    env.pop("VIRTUAL_ENV", None)
    port = free_port()
    with open(work / "server.log", "w") as log:
        server = subprocess.Popen(
            [str(PEER_VENV / "bin" / "langgraph"), "dev", "--config", "langgraph.json", "--port", str(port),
             "--no-browser", "--no-reload", "--n-jobs-per-worker", str(jobs)],
            env=env, cwd=work, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )
    try:
        try:
            await wait_up(f"http://127.0.0.1:{port}/ok", server)
        except RuntimeError:
            print((work / "server.log").read_text()[-3000:], file=sys.stderr)
            raise
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=60) as client:

            async def new_chat() -> str:
                r = await client.post("/threads", json={})
                r.raise_for_status()
                return r.json()["thread_id"]

            def message(chat: str, i: int) -> tuple[str, dict]:
                return f"/threads/{chat}/runs/wait", {
                    "assistant_id": "chat", "input": {"messages": [{"role": "user", "content": f"m{i}"}]},
                }

            # A run that fails still answers 200, with the error in the body.
            yield Target(f"LangGraph dev (1 process, {jobs} jobs)", server, port, new_chat, message, 200,
                         bad=b'"__error__"')
    finally:
        stop(server)


def table(results: dict[str, list[Level]]) -> str:
    """Markdown: per level, each server's completions/s, p50 / p99 and CPU per
    completion, then chatplane's completions/s over each other's."""
    names = list(results)
    others = [n for n in names if n != "chatplane"] if "chatplane" in results else []
    head = ["chats", *(f"{n}: completions/s, p50 / p99 ms, cpu ms/completion" for n in names),
            *(f"chatplane / {n}" for n in others)]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for index, level in enumerate(next(iter(results.values()))):
        row = [str(level.concurrency)]
        for n in names:
            x = results[n][index]
            row.append(f"{x.rate:.0f}, {x.p50 * 1000:.1f} / {x.p99 * 1000:.1f}, {x.cpu_per_completion * 1000:.2f}")
        row += [f"{results['chatplane'][index].rate / results[n][index].rate:.2f}x" for n in others]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_arguments(parser)
    parser.add_argument("--only", default="bare,langgraph,chatplane", help="which to run, comma-separated")
    parser.add_argument("--peer-jobs", type=int, default=10,
                        help="langgraph dev --n-jobs-per-worker: runs at once (its default, 10, gave the most "
                             "completions/s under load; more runners than runs waiting sends its queue to sleep)")
    parser.add_argument("--bare-call", choices=["post", "create"], default="post",
                        help="how the bare endpoint calls the model: client.post as chatplane does (default), "
                             "or chat.completions.create")
    parser.add_argument("--setup", action="store_true", help="only make bench/.venv-peers")
    args = parser.parse_args()
    levels = [int(c) for c in args.levels.split(",")]
    only = args.only.split(",")

    peer_versions = ensure_peer_venv() if "langgraph" in only or args.setup else ""
    if args.setup:
        print(peer_versions)
        return
    print(describe_build())
    if peer_versions:
        print(f"peer: {peer_versions}")
    print(f"database={args.db} workers={args.workers} levels={args.levels} seconds={args.seconds:g} "
          f"turns/chat={args.turns_per_chat}")
    tmp = Path(tempfile.mkdtemp(prefix="chatplane-peers-"))
    results: dict[str, list[Level]] = {}
    try:
        async with stub() as model, AsyncExitStack() as servers:
            stub_lat = await model.time(args.turns_per_chat, n=300)
            print(f"stub alone            p50 {ms(pct(stub_lat, .5))}  p99 {ms(pct(stub_lat, .99))}")
            starts = {
                "bare": lambda: bare(model, db=args.db, tmp=tmp, pg_url=args.pg_url, workers=args.workers,
                                     call=args.bare_call),
                "langgraph": lambda: langgraph(model, tmp=tmp, jobs=args.peer_jobs),
                "chatplane": lambda: chatplane(model, db=args.db, tmp=tmp, pg_url=args.pg_url,
                                               workers=args.workers),
            }
            targets = {}
            for name in ("bare", "langgraph", "chatplane"):
                if name in only:
                    targets[name] = await servers.enter_async_context(starts[name]())
                    print(f"{name:<10} = {targets[name].name}")
            expected = {name: await warm_up(target, args.turns_per_chat) for name, target in targets.items()}
            # Level by level, the three one after the other: whatever else the
            # machine is doing meanwhile weighs on all three alike.
            for concurrency in levels:
                for name, target in targets.items():
                    level = await run_level(target, concurrency, seconds=args.seconds,
                                            turns_per_chat=args.turns_per_chat,
                                            expected_rate=expected[name] * 1.5, stub_pid=model.process.pid)
                    expected[name] = max(expected[name], level.rate)
                    results.setdefault(name, []).append(level)
                    print(f"{name:<10} {level_line(level)}", flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print()
    print(table(results))


if __name__ == "__main__":
    asyncio.run(main())
