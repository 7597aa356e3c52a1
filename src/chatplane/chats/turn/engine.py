"""A turn: the user's message in, the agent's reply out, history kept.

The pipeline: take the chat's turn lock -> read the chat and what the history
cache lacks -> the responder answers (``respond``, which builds the model's
view with the ``context`` stages) -> write the user's message and the replies.
The lock, the read and the write are the store's (``store.TurnStore``, one per
database); the engine never asks which database it runs on.
``docs/architecture.md`` draws it.

The contract when several messages hit one chat: turns run one at a time, in
arrival order (``TurnLocks``), and a turn is written whole or not at all:
the user's message and the agent's replies go into the database in one
transaction after the responder has answered. A turn whose model call fails
leaves the chat exactly as it was, so the client can simply send again.
What the tools changed (state, collected variables, the end of the chat) is
written in the same transaction as the messages.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import httpx
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, AsyncSession

from chatplane import jobs
from chatplane.chats import lifecycle, tools
from chatplane.chats.locks import TurnLocks
from chatplane.chats.messages import NewMessage, message_rows
from chatplane.chats.service import Versions, chat_ended, chat_not_found
from chatplane.chats.turn.read import HistoryCache, Read, config_times, top_up
from chatplane.chats.turn.respond import LlmResponder, Responder, TurnInput
from chatplane.chats.turn.store import TurnStore, open_store
from chatplane.chats.turn.write import TurnWrite
from chatplane.db import utcnow
from chatplane.errors import Conflict
from chatplane.knowledge.retrieve import Retriever
from chatplane.models import Chat
from chatplane.providers import OnDelta, Registry
from chatplane.providers.base import Message
from chatplane.text import iso
from chatplane.webhooks.events import wants

END_REASON = "end_chat_tool"


@dataclass(frozen=True, slots=True)
class TurnAnswer:
    """What the completion route answers: the agent's new messages."""

    body: dict[str, Any]
    replayed: bool = False


def _message_json(row: dict[str, Any]) -> dict[str, Any]:
    """``message_out`` of a message row not yet read back, as JSON-ready data."""
    return {
        "role": row["role"],
        "content": row["content"],
        "name": row["name"],
        "tool_calls": row["tool_calls"] or [],
        "messageId": row["id"],
        # The same form the response models give every other datetime.
        "createdAt": iso(row["created_at"]),
        **({"manifest": row["manifest"]} if row["manifest"] else {}),
    }


class _Stale(Exception):  # a signal, not an error
    """A turn started from a memo whose configuration has changed since:
    nothing was written; it starts over from ``read`` (None: read it all)."""

    def __init__(self, read: Read | None = None) -> None:
        super().__init__()
        self.read = read


class Turns:
    """Runs turns for one process: its store (the database: lock, read,
    write), its responder and its history cache.

    The hot path speaks SQLAlchemy Core on a plain connection (no ORM unit of
    work): a turn is one read and one write around the responder. How each
    database makes those fast is its store's business (``store.TurnStore``).
    """

    def __init__(
        self,
        engine: AsyncEngine,
        registry: Registry,
        locks: TurnLocks,
        *,
        http: httpx.AsyncClient | None = None,
        allow_private_networks: bool = False,
        embedding_model: str | None = None,
    ) -> None:
        self.engine = engine
        self.registry = registry
        self.locks = locks
        self.retriever = Retriever(engine, registry, embedding_model)  # knowledge: turns' and the search route's
        self.responder: Responder = LlmResponder(
            registry, tools.ToolRunner(http, allow_private_networks=allow_private_networks), self.retriever
        )
        self.store: TurnStore = open_store(engine, locks)
        self.history = HistoryCache()

    async def aclose(self) -> None:
        """Wait for the writes still going out; give back what the store holds."""
        await self.store.aclose()

    def forget(self, chat_id: str) -> None:
        """The chat takes no more turns (ended, deleted): its history need not stay cached."""
        self.history.forget(chat_id)

    async def run(
        self,
        *,
        workspace_id: int,
        chat_id: str,
        content: str,
        idempotency_key: str | None = None,
        on_delta: OnDelta | None = None,
    ) -> TurnAnswer:
        """One turn, under the chat's turn lock.

        On PostgreSQL a turn that takes the lock back (``HeldOver``: the
        process's last turn on the chat ended a moment ago and its release had
        not gone out) reads nothing: it starts from what that turn left
        (``keep``), the chat row as it wrote it, which nobody else can have
        changed since (everything that changes a chat row holds its lock),
        with one exception: a draft agent or LLM configuration is edited in
        place without the lock. So such a turn checks its configurations'
        ``updated_at`` before a tool runs (a read) or in the statement that
        writes it (a guard); if they changed, nothing was written and the
        turn starts over from a fresh read, still under its lock. Streaming
        turns (their text is already out) and turns with an Idempotency-Key
        (the stored answer is not in the memo) read as every turn does.
        """
        request_hash = hashlib.sha256(content.encode()).hexdigest()
        async with self.store.hold(chat_id, workspace_id, idempotency_key) as found:
            # Reads under the turn lock need no transaction: nothing else can
            # change this chat's history until we let go.
            read: Read | None = None
            while True:
                if read is None:
                    read = await self.store.read(found, chat_id, workspace_id, idempotency_key,
                                                 self.history.get(chat_id), trust_memo=on_delta is None)
                    found = None  # a second read (_Stale) reads it all
                try:
                    return await self._turn(
                        read, chat_id=chat_id, workspace_id=workspace_id, content=content,
                        request_hash=request_hash, idempotency_key=idempotency_key, on_delta=on_delta,
                    )
                except _Stale as stale:
                    read = stale.read

    async def _turn(
        self,
        read: Read,
        *,
        chat_id: str,
        workspace_id: int,
        content: str,
        request_hash: str,
        idempotency_key: str | None,
        on_delta: OnDelta | None,
    ) -> TurnAnswer:
        row = read.chat
        if row is None:
            raise chat_not_found(chat_id)
        if read.earlier is not None:
            if read.earlier.request_hash != request_hash:
                raise Conflict(
                    "this Idempotency-Key was used for a different message on this chat",
                    code="idempotency_key_reused",
                )
            return TurnAnswer(body=read.earlier.response, replayed=True)
        if row.status != "ongoing":
            raise chat_ended(row)
        history = top_up(read.base, read)
        self.history.remember(chat_id, history)

        async def confirm() -> None:
            """An unchecked read's configurations, checked now (before a tool runs)."""
            if read.unchecked:
                fresh = await self.store.read(None, chat_id, workspace_id, None, history, trust_memo=False)
                if fresh.chat is None or config_times(fresh.chat) != config_times(row):
                    raise _Stale(fresh)
                read.unchecked = False

        started = utcnow()
        versions = Versions(agent=row.agent_config, llm=row.llm_config)
        effects = tools.TurnEffects(state=row.current_state, collected=dict(row.collected_dynamic_variables or {}))
        asked = Message(role="user", content=content)
        replies = await self.responder.respond(
            TurnInput(row, versions, history.messages, asked, effects, started), on_delta, confirm
        )

        model = row.llm_config["model"]
        rows, counters = message_rows(chat_id, row.message_count, [
            NewMessage("user", content, started),
            *(NewMessage("assistant", r.reply.content, r.at, r.tool_calls, model, r.reply.prompt_tokens,
                         r.reply.completion_tokens, r.manifest) for r in replies),
        ])
        agents = rows[1:]
        now = counters.last_agent_message_at
        body = {"messages": [_message_json(agent) for agent in agents]}
        after = {"b_chat_id": chat_id, "b_count": counters.message_count, "b_user_at": started, "b_agent_at": now}
        tool_changes = {"b_state": effects.state, "b_collected": effects.collected} if effects.changed else None
        idempotent = (
            {"chat_id": chat_id, "key": idempotency_key, "request_hash": request_hash,
             "response": body, "created_at": now}
            if idempotency_key else None
        )

        turn = TurnWrite(rows, after, tool_changes, idempotent)
        updated = ending = None
        if effects.end_chat or wants(row.agent_config, "transcript_updated"):
            await confirm()
            # Webhooks and the end of the chat go through the ORM, in the
            # same transaction as the messages.
            async with self.engine.begin() as conn:
                await self.store.write_in(conn, turn)
                updated = await _transcript_updated(conn, chat_id, row.agent_config)
                if effects.end_chat:
                    ending = await self._finish(conn, chat_id, now)
        else:  # with other chats' turns
            turn.guard = config_times(row) if read.unchecked else None
            if not await self.store.write(turn):
                if turn.guard is not None:
                    raise _Stale()
                raise chat_not_found(chat_id)  # gone meanwhile (deleted with its workspace)
        if updated is not None:
            jobs.committed(updated)
        if ending is not None:
            jobs.committed(ending)
            self.forget(chat_id)
            return TurnAnswer(body=body)
        history.messages.append(asked)
        for agent in agents:
            history.messages.extend(tools.history_messages("assistant", agent["content"], agent["tool_calls"]))
        history.rows += 1 + len(agents)
        self.history.remember(chat_id, history)
        # What this turn changed in the chat row, for the lock's next holder.
        changes = {"current_state": effects.state, "collected_dynamic_variables": effects.collected}
        self.store.keep(chat_id, row, message_count=after["b_count"], last_user_message_at=started,
                        last_agent_message_at=now, **(changes if effects.changed else {}))
        return TurnAnswer(body=body)


    async def _finish(self, conn: AsyncConnection, chat_id: str, now: datetime) -> AsyncSession:
        """End the chat (the end_chat tool) inside the turn's write transaction.

        ``finish_chat`` speaks ORM; a session bound to the turn's connection
        joins its transaction without committing it, so the end, its webhook
        and its analysis job commit or roll back with the turn's messages.
        """
        async with AsyncSession(bind=conn, expire_on_commit=False, autoflush=False) as session:
            chat = await session.get(Chat, chat_id)
            assert chat is not None  # read under the turn lock a moment ago
            await lifecycle.finish_chat(session, chat=chat, reason=END_REASON, now=now, registry=self.registry)
            await session.flush()
        return session


async def _transcript_updated(
    conn: AsyncConnection, chat_id: str, agent_config: dict[str, Any]
) -> AsyncSession | None:
    """Queue the ``transcript_updated`` webhook in the turn's own transaction, if
    the agent wants it: kept or dropped with the turn, and queued before the
    ``chat_ended`` of an ``end_chat`` tool. A turn nobody listens to costs nothing."""
    if not wants(agent_config, "transcript_updated"):
        return None
    async with AsyncSession(bind=conn, expire_on_commit=False, autoflush=False) as session:
        chat = await session.get(Chat, chat_id)
        assert chat is not None  # read under the turn lock a moment ago
        await lifecycle.emit(session, chat, "transcript_updated", agent_config)
        await session.flush()
    return session

