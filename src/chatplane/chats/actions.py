"""What a chat route does beyond one service call, said once for the ``/api``
routes and the Retell ones (``chatplane.retell.chats``): each takes the app's
``Services`` and the workspace the call acts in, and answers ``chat_out``."""

from __future__ import annotations

from typing import Any

from chatplane.chats import analysis, lifecycle, service
from chatplane.db import transaction
from chatplane.errors import Conflict


async def get(services: Any, workspace_id: int, chat_id: str) -> dict[str, Any]:
    async with services.sessions() as session:
        chat = await service.get_chat(session, workspace_id=workspace_id, chat_id=chat_id)
        return service.chat_out(chat, await service.get_messages(session, chat_id=chat.id, manifests=True))


async def update(services: Any, workspace_id: int, chat_id: str, changes: dict[str, Any]) -> dict[str, Any]:
    # Under the turn lock, as everything that changes a chat row: a turn that
    # takes the lock back starts from the row its predecessor wrote.
    async with services.turns.locks.hold(chat_id), transaction(services.sessions) as session:
        chat = await service.update_chat(session, workspace_id=workspace_id, chat_id=chat_id, changes=changes)
        return service.chat_out(chat, await service.get_messages(session, chat_id=chat.id, manifests=True))


async def end(services: Any, workspace_id: int, chat_id: str) -> None:
    """End the chat, after the turn in progress (409 if it has ended)."""
    async with services.turns.locks.hold(chat_id):
        async with transaction(services.sessions) as session:
            chat = await service.get_chat(session, workspace_id=workspace_id, chat_id=chat_id, for_update=True)
            await lifecycle.finish_chat(session, chat=chat, reason="api", registry=services.registry)
        services.turns.forget(chat_id)  # no more turns: its history need not stay cached


async def delete(services: Any, workspace_id: int, chat_id: str) -> None:
    async with services.turns.locks.hold(chat_id):
        async with transaction(services.sessions) as session:
            await service.delete_chat(session, workspace_id=workspace_id, chat_id=chat_id)
        services.turns.forget(chat_id)


async def rerun_analysis(services: Any, workspace_id: int, chat_id: str) -> dict[str, Any]:
    """Analyse an ended chat again, now (409 while it is ongoing)."""
    async with services.sessions() as session:
        chat = await service.get_chat(session, workspace_id=workspace_id, chat_id=chat_id)
        if chat.status == "ongoing":
            raise Conflict(f"chat {chat_id} is still ongoing; end it first", code="chat_ongoing")
    await analysis.analyze(services.sessions, registry=services.registry, chat_id=chat_id)
    return await get(services, workspace_id, chat_id)
