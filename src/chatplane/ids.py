"""Opaque, prefixed, sortable ids: ``chat_agent_01hz…`` (lower-case ULID)."""

from ulid import ULID


def new_id(prefix: str) -> str:
    return f"{prefix}_{str(ULID()).lower()}"
