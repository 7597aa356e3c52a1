"""Who answers a turn: the responder seam.

The engine hands a responder the turn (``TurnInput``: the chat as read, its
configurations, the model-facing history, the user's new message and the
tools' effects so far) and stores what it answers: one assistant message per
``Reply``. A responder has no database code; what it changes in the chat
(state, collected variables, the end of the chat) it puts in
``turn.effects``, which the engine writes with the messages.

Today there is one responder, ``LlmResponder``: the model and its tools, in
a loop. Next to come: a conversation flow (state of its own in the chat) and
a human (hand-off: the user's message is stored and nobody answers).

When the LLM has tools, a turn may take several model calls: the model asks
for tools, they run (``tools.py``), their results go back to it, and it is
called again, at most ``MAX_TOOL_ROUNDS`` times before it must answer in
words. Each model call becomes one assistant message (the ones that called
tools carry ``tool_calls``, each with its ``result``), so token usage stays
recorded per message.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from chatplane.chats import tools
from chatplane.chats.service import Versions, chat_variables
from chatplane.chats.turn import manifest
from chatplane.chats.turn.context import joined, prompt_sections
from chatplane.db import utcnow
from chatplane.knowledge.retrieve import Retriever, prompt_block
from chatplane.providers import ModelReply, ModelRequest, OnDelta, Registry
from chatplane.providers.base import Message

# Model calls that may ask for tools in one turn; the call after the last of
# them is made with tool_choice "none", so the turn always ends in words.
MAX_TOOL_ROUNDS = 5


@dataclass(slots=True)
class Reply:
    """One model call's answer, when it came, and the tool calls it made (each with its result)."""

    reply: ModelReply
    at: datetime
    tool_calls: list[dict[str, Any]] | None  # each with its result
    manifest: dict[str, Any] | None = None  # what the model was given (turn.manifest)


class ChatView:
    """The chat row as the tools left it: the prompt reads state and variables from here."""

    __slots__ = ("_row", "current_state", "collected_dynamic_variables")

    def __init__(self, row: Any, effects: tools.TurnEffects) -> None:
        self._row = row
        self.current_state = effects.state
        self.collected_dynamic_variables = effects.collected

    def __getattr__(self, name: str) -> Any:
        return getattr(self._row, name)


@dataclass(frozen=True, slots=True)
class TurnInput:
    """What a responder answers: the turn as the engine read it."""

    chat: Any  # the chat row (read.READ_CHAT)
    versions: Versions  # the agent's and LLM's configurations the chat is pinned to
    history: list[dict[str, Any]]  # model-facing messages before this turn
    asked: Message  # the user's new message
    effects: tools.TurnEffects  # what the tools change: the responder updates it
    started: datetime  # when the turn began (the prompt's {{current_time}})


class Responder(Protocol):
    async def respond(
        self, turn: TurnInput, on_delta: OnDelta | None, confirm: Callable[[], Awaitable[None]]
    ) -> list[Reply]:
        """The agent's replies to ``turn``, in order; ``on_delta`` gets streamed text.
        ``confirm()`` before anything with an effect outside the turn (a tool call):
        it raises when the turn must start over from a fresh read."""
        ...


class LlmResponder:
    """The LLM configuration's model, with its tools, in a loop."""

    def __init__(self, registry: Registry, runner: tools.ToolRunner, retriever: Retriever | None = None) -> None:
        self.registry = registry
        self.runner = runner
        self.retriever = retriever

    async def respond(
        self, turn: TurnInput, on_delta: OnDelta | None, confirm: Callable[[], Awaitable[None]]
    ) -> list[Reply]:
        """Call the model, run the tools it asks for, call it again: every
        reply, in order. ``confirm()`` comes before the first tool runs."""
        row, versions, history, asked = turn.chat, turn.versions, turn.history, turn.asked
        effects, started = turn.effects, turn.started
        llm_config = versions.llm
        model = llm_config["model"]
        toolbox = tools.toolbox(llm_config, effects.state) if tools.has_tools(llm_config) else None
        retrieval = None
        if self.retriever is not None and llm_config.get("knowledge_base_ids"):
            retrieval = await self.retriever.retrieve(llm_config, history, asked["content"] or "")
        knowledge = prompt_block(retrieval.hits) if retrieval else ""
        sections = prompt_sections(row, versions, now=started, knowledge=knowledge)
        system = joined(sections)
        conversation = [*history, asked]
        replies: list[Reply] = []
        context: tools.ChatContext | None = None
        while True:
            rounds = len(replies)
            last_call = bool(replies) and (rounds >= MAX_TOOL_ROUNDS or effects.end_chat)
            request = ModelRequest(
                messages=[*([{"role": "system", "content": system}] if system else []), *conversation],
                temperature=llm_config.get("model_temperature", 0.0),
                tools=toolbox.definitions if toolbox else None,
                tool_choice="none" if toolbox and last_call else None,
            )
            called = time.perf_counter()
            reply = await self.registry.complete(model, request, on_delta)
            about = manifest.manifest(
                manifest.prompt_part(sections, request.tools, request.messages[1 if system else 0:]), retrieval,
                manifest.model_part(model, reply, (time.perf_counter() - called) * 1000, self.registry.price(model)),
            )
            if not reply.tool_calls:
                replies.append(Reply(reply, utcnow(), None, about))
                return replies
            if last_call:
                # A provider that ignored tool_choice: keep the calls visible,
                # unrun, each with a result so the history stays well formed.
                reason = "not run: the chat is ending" if effects.end_chat else (
                    f"not run: this turn reached its limit of {MAX_TOOL_ROUNDS} tool rounds"
                )
                replies.append(Reply(reply, utcnow(), [tools.not_run(call, reason) for call in reply.tool_calls], about))
                return replies
            if context is None:
                await confirm()
            if context is None or effects.changed:
                context = tools.ChatContext(
                    chat_id=row.id, agent_id=row.agent_id, webhook_key=row.webhook_key,
                    variables=chat_variables(ChatView(row, effects), versions),
                )
            state_before = effects.state
            calls = []
            for call in reply.tool_calls:
                result = await self.runner.run(call, toolbox, effects, context)
                calls.append({**call, "result": result.as_json()})
            replies.append(Reply(reply, utcnow(), calls, about))
            conversation.extend(tools.history_messages("assistant", reply.content, calls))
            if effects.state != state_before:
                toolbox = tools.toolbox(llm_config, effects.state)
            if effects.changed:  # the next call sees the new state's prompt and the collected values
                sections = prompt_sections(ChatView(row, effects), versions, now=started, knowledge=knowledge)
                system = joined(sections)

