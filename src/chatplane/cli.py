"""The ``chatplane`` command: serve, worker, migrate, workspaces, keys, jobs, repair, chat."""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from sqlalchemy.ext.asyncio import AsyncSession

from chatplane import auth
from chatplane.db import create_engine, create_sessionmaker, migrate, transaction
from chatplane.errors import AppError
from chatplane.settings import Settings

T = TypeVar("T")


def run_in_transaction(settings: Settings, work: Callable[[AsyncSession], Awaitable[T]]) -> T:
    """Run ``work`` in one committed transaction, from synchronous code."""

    async def main() -> T:
        engine = create_engine(settings, pooled=False)
        try:
            async with transaction(create_sessionmaker(engine)) as session:
                return await work(session)
        finally:
            await engine.dispose()

    return asyncio.run(main())


def cmd_serve(settings: Settings, args: argparse.Namespace) -> int:
    from chatplane import serve

    migrate(settings)
    bootstrap_key = settings.bootstrap_api_key.get_secret_value() if settings.bootstrap_api_key else None
    created = run_in_transaction(settings, lambda s: auth.bootstrap(s, key=bootstrap_key))
    if created and not bootstrap_key:
        print(
            "Created workspace 1 (\"default\") and its first API key. It is shown only now:\n\n"
            f"    {created}\n",
            flush=True,
        )
    elif created:
        print("Created workspace 1 (\"default\") with CHATPLANE_BOOTSTRAP_API_KEY as its key.", flush=True)
    host = args.host or settings.server.host
    port = args.port if args.port is not None else settings.server.port
    print(f"chatplane listening on http://{host}:{port}  (database: {_safe_url(settings)})", flush=True)
    return serve.run(settings.server, host, port, args.workers, args.log_level)


def _safe_url(settings: Settings) -> str:
    from sqlalchemy.engine import make_url

    return make_url(settings.resolved_database_url).render_as_string(hide_password=True)


def cmd_migrate(settings: Settings, args: argparse.Namespace) -> int:
    migrate(settings, args.revision)
    print(f"database at {args.revision}: {_safe_url(settings)}")
    return 0


def cmd_workspaces_create(settings: Settings, args: argparse.Namespace) -> int:
    migrate(settings)
    workspace = run_in_transaction(settings, lambda s: auth.create_workspace(s, name=args.name))
    print(f"{workspace.id}\t{workspace.name}")
    return 0


def cmd_workspaces_list(settings: Settings, args: argparse.Namespace) -> int:
    for workspace in run_in_transaction(settings, auth.list_workspaces):
        print(f"{workspace.id}\t{workspace.name}")
    return 0


def cmd_keys_create(settings: Settings, args: argparse.Namespace) -> int:
    migrate(settings)

    async def work(session: AsyncSession) -> Any:
        return await auth.create_key(session, workspace_ids=args.workspace, name=args.name)

    key, secret = run_in_transaction(settings, work)
    print(f"API key {key.id} for workspaces {', '.join(map(str, sorted(set(args.workspace))))}. "
          "It is shown only now:", file=sys.stderr)
    print(secret)
    return 0


def cmd_keys_list(settings: Settings, args: argparse.Namespace) -> int:
    print("id\tprefix\tworkspaces\tcreated\trevoked\tname")
    for key, workspaces in run_in_transaction(settings, auth.list_keys):
        revoked = key.revoked_at.isoformat() if key.revoked_at else "-"
        print(f"{key.id}\t{key.prefix}…\t{','.join(map(str, workspaces))}\t"
              f"{key.created_at.isoformat()}\t{revoked}\t{key.name}")
    return 0


def cmd_keys_revoke(settings: Settings, args: argparse.Namespace) -> int:
    run_in_transaction(settings, lambda s: auth.revoke_key(s, key_id=args.key_id))
    print(f"revoked API key {args.key_id}")
    return 0


def cmd_chat(settings: Settings, args: argparse.Namespace) -> int:
    from chatplane.chat_cli import run_chat

    key = args.key or (settings.api_key.get_secret_value() if settings.api_key else None)
    if not key:
        print("chatplane: give --key or set CHATPLANE_API_KEY", file=sys.stderr)
        return 2
    url = args.url or settings.url or f"http://{settings.server.host}:{settings.server.port}"
    return run_chat(url=url, key=key, workspace_id=args.workspace, agent_id=args.agent_id)


def cmd_worker(settings: Settings, args: argparse.Namespace) -> int:
    """Run background jobs (and the idle-chat monitor) without serving the API."""
    import signal

    from chatplane import services as process

    migrate(settings)

    async def main() -> None:
        services = await process.start(settings, worker=True)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        print(f"chatplane worker {services.worker.name} running", flush=True)  # type: ignore[union-attr]
        try:
            if args.once:
                await services.worker.drain()  # type: ignore[union-attr]
            else:
                await stop.wait()
        finally:
            await process.stop(services)

    asyncio.run(main())
    return 0


def cmd_jobs_list(settings: Settings, args: argparse.Namespace) -> int:
    from sqlalchemy import select

    from chatplane.models import Job

    async def work(session: AsyncSession) -> Any:
        query = select(Job).order_by(Job.id.desc()).limit(args.limit)
        if args.status:
            query = query.where(Job.status == args.status)
        return (await session.scalars(query)).all()

    print("id\tkind\tstatus\tattempts\trun_at\tlast_error")
    for job in run_in_transaction(settings, work):
        print(f"{job.id}\t{job.kind}\t{job.status}\t{job.attempts}/{job.max_attempts}\t"
              f"{job.run_at.isoformat()}\t{(job.last_error or '')[:120]}")
    return 0


def cmd_jobs_retry(settings: Settings, args: argparse.Namespace) -> int:
    from sqlalchemy import update

    from chatplane.db import utcnow
    from chatplane.models import Job

    async def work(session: AsyncSession) -> int:
        result = await session.execute(
            update(Job).where(Job.id == args.job_id, Job.status == "failed")
            .values(status="pending", attempts=0, run_at=utcnow(), finished_at=None)
        )
        return result.rowcount

    if not run_in_transaction(settings, work):
        print(f"chatplane: no failed job {args.job_id}", file=sys.stderr)
        return 1
    print(f"job {args.job_id} queued again")
    return 0


def cmd_repair(settings: Settings, args: argparse.Namespace) -> int:
    from chatplane.repair import repair

    async def main() -> Any:
        engine = create_engine(settings, pooled=False)
        try:
            return await repair(engine, dry_run=args.dry_run)
        finally:
            await engine.dispose()

    for line in asyncio.run(main()).lines():
        print(line)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="chatplane", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="apply migrations and run the API server")
    serve.add_argument("--host", help="overrides CHATPLANE_SERVER__HOST")
    serve.add_argument("--port", type=int, help="overrides CHATPLANE_SERVER__PORT")
    serve.add_argument("--workers", type=int, default=1, help="server processes (default 1)")
    serve.add_argument("--log-level", default="info")
    serve.set_defaults(func=cmd_serve)

    mig = commands.add_parser("migrate", help="bring the database schema up to date")
    mig.add_argument("revision", nargs="?", default="head")
    mig.set_defaults(func=cmd_migrate)

    workspaces = commands.add_parser("workspaces", help="manage workspaces").add_subparsers(
        dest="action", required=True
    )
    create = workspaces.add_parser("create", help="create a workspace")
    create.add_argument("name")
    create.set_defaults(func=cmd_workspaces_create)
    workspaces.add_parser("list", help="list workspaces").set_defaults(func=cmd_workspaces_list)

    keys = commands.add_parser("keys", help="manage API keys").add_subparsers(dest="action", required=True)
    kc = keys.add_parser("create", help="create an API key (printed once)")
    kc.add_argument("--workspace", type=int, action="append", required=True,
                    help="a workspace the key may use (repeatable)")
    kc.add_argument("--name", default="", help="a label to recognise the key by")
    kc.set_defaults(func=cmd_keys_create)
    keys.add_parser("list", help="list keys (never their secrets)").set_defaults(func=cmd_keys_list)
    kr = keys.add_parser("revoke", help="revoke an API key")
    kr.add_argument("key_id", type=int)
    kr.set_defaults(func=cmd_keys_revoke)

    worker = commands.add_parser("worker", help="run background jobs only (webhooks, analysis, auto-close)")
    worker.add_argument("--once", action="store_true", help="run what is due, then exit")
    worker.set_defaults(func=cmd_worker)

    jobs = commands.add_parser("jobs", help="inspect background jobs").add_subparsers(dest="action", required=True)
    jl = jobs.add_parser("list", help="recent jobs, newest first")
    jl.add_argument("--status", choices=["pending", "running", "done", "failed"])
    jl.add_argument("--limit", type=int, default=50)
    jl.set_defaults(func=cmd_jobs_list)
    jr = jobs.add_parser("retry", help="queue a failed job again")
    jr.add_argument("job_id", type=int)
    jr.set_defaults(func=cmd_jobs_retry)

    repair = commands.add_parser(
        "repair", help="rewrite stored text no longer accepted (lone surrogates, NUL, bad UTF-8) as U+FFFD")
    repair.add_argument("--dry-run", action="store_true", help="only count the rows it would rewrite")
    repair.set_defaults(func=cmd_repair)

    chat = commands.add_parser("chat", help="talk to a chat agent from the terminal (needs a running server)")
    chat.add_argument("agent_id")
    chat.add_argument("--workspace", type=int, default=1)
    chat.add_argument("--url", help="server URL (default: CHATPLANE_URL, else this host and port)")
    chat.add_argument("--key", help="API key (default: CHATPLANE_API_KEY)")
    chat.set_defaults(func=cmd_chat)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    settings = Settings()
    try:
        return args.func(settings, args)
    except AppError as exc:
        print(f"chatplane: {exc.message}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
