"""Turning time filters into id ranges (chat ids are ULIDs: time-ordered)."""

from __future__ import annotations

from datetime import UTC, datetime

from ulid import ULID

from chatplane.errors import InvalidInput

# Chat ids hold milliseconds since 1970 (ULIDs); a datetime ends in year 9999.
EARLIEST = datetime(1970, 1, 1, tzinfo=UTC)
LATEST = datetime(9999, 12, 31, 23, 59, 59, 999000, tzinfo=UTC)


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
    try:
        in_range = EARLIEST <= moment.astimezone(UTC) <= LATEST
    except OverflowError:  # year 1 or 9999 moved past the ends by its offset
        in_range = False
    if not in_range:
        raise InvalidInput("must be between 1970-01-01T00:00:00Z and 9999-12-31T23:59:59.999Z", field=field)
    return id_at(moment)
