"""Dynamic variables, the system prompt and the transcript."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

_PLACEHOLDER = re.compile(r"\{\{\s*([A-Za-z0-9_./+-]+)\s*\}\}")
_TIME_FORMAT = "%A, %B %d, %Y at %I:%M:%S %p %Z"


# What ``ZoneInfo(name)`` raises for a name that is no zone: unknown, malformed,
# or so long that the file system refuses the path (OSError: name too long).
NOT_A_ZONE = (ZoneInfoNotFoundError, ValueError, OSError)


def format_time(now: datetime, zone: str) -> str:
    return now.astimezone(ZoneInfo(zone)).strftime(_TIME_FORMAT)


def merge_variables(*layers: Mapping[str, Any] | None) -> dict[str, str]:
    """Later layers win. Order, low to high: LLM defaults, agent, chat,
    the chat's overrides, values collected by tools."""
    merged: dict[str, str] = {}
    for layer in layers:
        for name, value in (layer or {}).items():
            merged[name] = value if isinstance(value, str) else str(value)
    return merged


def render(template: str | None, variables: Mapping[str, str], *, now: datetime, timezone: str) -> str:
    """Fill ``{{name}}`` placeholders; an unknown name stays as written.

    System variables: ``current_time`` (the agent's zone) and
    ``current_time_<IANA zone>`` (e.g. ``{{current_time_Europe/Paris}}``);
    ``chat_id`` and the SMS numbers come in ``variables``.
    """
    if not template:
        return ""

    def fill(match: re.Match[str]) -> str:
        name = match.group(1)
        if name in variables:
            return variables[name]
        if name == "current_time":
            return format_time(now, timezone)
        if name.startswith("current_time_"):
            try:
                return format_time(now, name[len("current_time_"):])
            except NOT_A_ZONE:
                return match.group(0)
        return match.group(0)

    return _PLACEHOLDER.sub(fill, template)


def transcript(messages: Sequence[Any]) -> str:
    """``Agent: …\\nUser: …\\n``, one line per spoken message, tool traffic left out."""
    lines = []
    for message in messages:
        if message.role in ("assistant", "user") and message.content:
            speaker = "Agent" if message.role == "assistant" else "User"
            lines.append(f"{speaker}: {message.content}\n")
    return "".join(lines)
