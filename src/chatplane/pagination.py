"""Cursor pagination shared by every list route.

The cursor is opaque to clients: URL-safe base64 of the last id returned and
the sort order it was taken in, so a key used with the other order is refused
rather than silently skipping rows. Ids are ULIDs, so id order is creation
order and a page boundary never moves while rows are being added.
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass
from typing import Annotated, Any, Generic, Literal, TypeVar

from fastapi import Depends, Query
from pydantic import BaseModel, Field

from chatplane.errors import InvalidInput
from chatplane.text import bad_text

T = TypeVar("T")
SortOrder = Literal["ascending", "descending"]


@dataclass(frozen=True, slots=True)
class PageRequest:
    limit: int
    after: str | None
    order: SortOrder


class Page(BaseModel, Generic[T]):
    data: list[T]
    pagination_key: str | None = Field(
        description="Pass as `paginationKey` to get the next page; null on the last page."
    )


def encode_cursor(last_id: str, order: SortOrder) -> str:
    raw = json.dumps({"a": last_id, "o": order[0]}, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(key: str, order: SortOrder, *, field: str = "paginationKey") -> str:
    try:
        raw = base64.urlsafe_b64decode(key + "=" * (-len(key) % 4))
        data = json.loads(raw)
        last_id, key_order = data["a"], data["o"]
    except (binascii.Error, ValueError, KeyError, TypeError):
        raise InvalidInput("not a pagination key this server issued", field=field) from None
    if not isinstance(last_id, str) or bad_text(last_id) or len(last_id) > 64:
        raise InvalidInput("not a pagination key this server issued", field=field)
    if key_order != order[0]:
        raise InvalidInput("pagination key was issued for another sort order", field=field)
    return last_id


def page_request(
    limit: Annotated[int, Query(ge=1, le=1000, description="Items per page (1..1000).")] = 50,
    pagination_key: Annotated[
        str | None, Query(alias="paginationKey", description="Cursor from the previous page.")
    ] = None,
    sort_order: Annotated[
        SortOrder, Query(alias="sortOrder", description="By creation time; newest first by default.")
    ] = "descending",
) -> PageRequest:
    after = decode_cursor(pagination_key, sort_order) if pagination_key else None
    return PageRequest(limit=limit, after=after, order=sort_order)


PageQuery = Annotated[PageRequest, Depends(page_request)]


async def fetch_page(session: Any, query: Any, id_column: Any, page: PageRequest) -> tuple[list[Any], str | None]:
    """Run ``query`` (a select of rows with a unique, sortable string id) as one page."""
    if page.order == "descending":
        query = query.order_by(id_column.desc())
        if page.after:
            query = query.where(id_column < page.after)
    else:
        query = query.order_by(id_column.asc())
        if page.after:
            query = query.where(id_column > page.after)
    rows = list((await session.scalars(query.limit(page.limit + 1))).all())
    return page_of(rows, [getattr(r, id_column.key) for r in rows], page)


def page_of(items: list[T], ids: list[str], request: PageRequest) -> tuple[list[T], str | None]:
    """Trim a fetch of ``limit + 1`` rows to a page and make the next cursor."""
    if len(items) > request.limit:
        return items[: request.limit], encode_cursor(ids[request.limit - 1], request.order)
    return items, None
