"""Turning time filters into id ranges (chat ids are ULIDs: time-ordered)."""

from __future__ import annotations

from datetime import UTC, datetime

from ulid import ULID

from chatplane.errors import InvalidInput


def id_at(moment: datetime) -> str:
    """The smallest chat id that a chat started at ``moment`` can have."""
    ms = int(moment.timestamp() * 1000)
    return "chat_" + str(ULID.from_timestamp(ms / 1000)).lower()[:10] + "0" * 16


def id_bound(value: str | None, *, field: str) -> str | None:
    if value is None:
        return None
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise InvalidInput("not an ISO 8601 date-time", field=field) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return id_at(moment)
