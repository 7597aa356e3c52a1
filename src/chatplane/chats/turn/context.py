"""What the responder is shown: the stages that build a turn's system prompt.

A stage is a small object with one method, ``parts(chat, versions)``: the
templates it adds to the system prompt, in order, from the chat as the turn
sees it (``chat.current_state`` and the variables as the tools leave them)
and the agent's and LLM's configurations. No database code: what a stage
needs is in the chat row the turn read. The templates are joined with blank
lines and rendered once with the chat's dynamic variables.

To add a stage: write the class, put it in ``STAGES`` where its text
belongs, and test it through a turn (the scripted model records the system
prompt it was sent). Knowledge retrieval needs the database, so it is not a
stage: the responder searches (``knowledge.retrieve``) and hands the block
in as ``knowledge``, which comes last and is not rendered.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import Any, Protocol

from chatplane.chats.prompt import render
from chatplane.chats.service import Versions, chat_variables


class PromptStage(Protocol):
    name: str  # the section's name in the context manifest

    def parts(self, chat: Any, versions: Versions) -> Iterable[str]:
        """Templates this stage adds to the system prompt (empty ones are dropped)."""
        ...


class GeneralPrompt:
    """The LLM configuration's ``general_prompt``."""

    name = "general_prompt"

    def parts(self, chat: Any, versions: Versions) -> Iterable[str]:
        return (versions.llm.get("general_prompt") or "",)


class StatePrompt:
    """The ``state_prompt`` of the chat's current state, if it has one."""

    name = "state_prompt"

    def parts(self, chat: Any, versions: Versions) -> Iterable[str]:
        if not chat.current_state:
            return ()
        return tuple(
            state["state_prompt"] for state in versions.llm.get("states") or []
            if state["name"] == chat.current_state and state.get("state_prompt")
        )


STAGES: tuple[PromptStage, ...] = (GeneralPrompt(), StatePrompt())


def prompt_sections(
    chat: Any, versions: Versions, *, now: datetime, knowledge: str = "", stages: tuple[PromptStage, ...] = STAGES
) -> list[tuple[str, str]]:
    """The system prompt's sections, (name, text), in order: every stage's
    templates rendered with the chat's variables, then ``knowledge`` (the
    retrieved block, ``knowledge.retrieve.prompt_block``) as it is: what a
    document says is never rendered as a template."""
    variables = chat_variables(chat, versions)
    timezone = versions.agent["timezone"]
    sections = []
    for stage in stages:
        template = "\n\n".join(part for part in stage.parts(chat, versions) if part)
        if template:
            sections.append((stage.name, render(template, variables, now=now, timezone=timezone)))
    if knowledge:
        sections.append(("knowledge", knowledge))
    return sections


def joined(sections: list[tuple[str, str]]) -> str:
    """The system prompt of a model call: its sections joined with blank lines."""
    return "\n\n".join(text for _, text in sections)
