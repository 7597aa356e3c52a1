"""``POST /v3/list-chats``: Retell's v3 chat list, with ``filter_criteria``.

Request: ``workspaceId``, ``filter_criteria``, ``sort_order`` (by start time,
``descending`` by default), ``limit`` (1..1000, default 50),
``pagination_key`` (the opaque cursor of ``chatplane.pagination``, tied to
its sort order) and ``include_total``. Answer: ``{items, has_more,
pagination_key, total?}``; items are chats without messages or transcript,
``total`` (only when asked for) counts every chat matching the filter,
whatever the cursor.

Decisions
---------
Filter shapes follow the Retell SDK (``retell/types/chat_list_params.py``):
every filter is an object ``{op, type, value}`` whose ``type`` names its
kind, one of

- ``string``  ``op`` in ``eq ne sw ew co``, ``value`` a string;
- ``number``  ``op`` in ``eq ne gt ge lt le``, ``value`` a number;
- ``range``   ``op`` ``bt``, ``value`` ``[lower, upper]``, both inclusive;
- ``enum``    ``op`` ``in``, ``value`` a non-empty list;
- ``boolean`` ``op`` ``eq``, ``value`` true or false;
- ``present`` ``op`` ``pr`` (has a value) or ``np`` (has none), no ``value``.

``type`` may be left out: it is implied by ``op`` (and, for ``eq``/``ne`` on
a custom key, by the JSON type of ``value``). Sent, it must agree with
``op``. Which kinds each field takes:

- ``agent``: ``[{agent_id, version?: [int]}]``, entries ORed; no or empty
  ``version`` means every version.
- ``chat_id``: string or enum (a list of ids).
- ``chat_status``, ``chat_type``, ``user_sentiment``: enum of their values.
- ``chat_successful``: boolean.
- ``start_timestamp``, ``end_timestamp``: number or range, in Unix
  milliseconds; a chat's timestamp is its ``startedAt``/``endedAt`` truncated
  to the millisecond, so ``eq`` matches the whole millisecond.
  ``end_timestamp`` also takes present (``np``: chats that have not ended).
- ``combined_cost``: number, range or present, in the unit of
  ``chatCost.combinedCost``.
- ``custom_attributes[]`` and ``custom_analysis_data[]``: any kind, each
  with a ``key`` (a custom attribute name, or a ``customAnalysisData`` entry
  of ``chatAnalysis``). A string op matches JSON strings only; a number op
  matches JSON numbers and strings written as decimal numbers
  (``-?[0-9]+(.[0-9]+)?``, because custom attributes are strings); boolean
  matches ``true``/``false`` and the strings ``"true"``/``"false"``; enum
  matches strings; ``pr`` means the key is there and not null.

Sizes are bounded so that a query stays within both databases' limit of
bound parameters (32766): at most 1000 values in an enum filter (100 on a
custom key), 100 agents with 100 versions each, 20 filters in each custom
list.

Every filter is ANDed with the others. ``ne`` is the exact negation of
``eq``: it also matches chats that have no value at all (use ``pr`` with it
to exclude them); every other op needs a value. String ops are
case-sensitive. Retell filters this server does not have (``agent_number``,
``duration_ms``, ``direction``, …) and ``skip`` are refused as unknown
fields, never ignored: a filter that is silently dropped returns wrong rows.

Order is by chat id, which is a ULID minted as the chat starts, so id order
is start order and the (workspace_id, id) index serves both the order and
the cursor. A ``start_timestamp`` bound also becomes an id bound
(``filters.id_at``) so that index narrows the scan; as a chat's id is minted
right after its ``started_at`` is taken, the id bound is widened by
``START_ID_SLACK_MS`` and the exact ``started_at`` comparison decides.

JSON keys are read with database functions instead of SQLAlchemy's
``column[key]``: the kind of the value must be tested before it is compared
(PostgreSQL's cast of a non-numeric string is an error), and SQLite's JSON
paths compare a key with its escaped form in the stored text (``é`` is
stored as ``\\u00e9``), so SQLite goes through ``json_each``, whose keys are
decoded. Both backends give the same answers.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Float,
    Numeric,
    and_,
    case,
    cast,
    exists,
    false,
    func,
    literal,
    not_,
    or_,
    select,
)
from sqlalchemy.ext.asyncio import AsyncSession

from chatplane.chats.filters import id_at
from chatplane.chats.list_v3_schemas import (
    EPOCH, MAX_MS, NUMERIC_PATTERN, START_ID_SLACK_MS, ChatBooleanFilter, ChatEnumFilter, ChatFilterCriteria,
    ChatPresentFilter, ChatRangeFilter, ChatStringFilter, ListChatsV3Request,
)
from chatplane.models import Chat
from chatplane.pagination import PageRequest, decode_cursor, fetch_page


# --- the query ---------------------------------------------------------------


def _at(ms: int) -> datetime:
    return EPOCH + timedelta(milliseconds=ms)


def _ms_interval(op: str, value: Any) -> tuple[int | None, int | None] | None:
    """``[lo, hi)`` in whole ms of the times whose millisecond satisfies ``op value``; None: empty."""
    if op == "bt":
        lo, hi = math.ceil(value[0]), math.floor(value[1]) + 1
    elif op == "eq":
        if value != math.floor(value):
            return None
        lo, hi = int(value), int(value) + 1
    else:
        lo, hi = {
            "gt": (math.floor(value) + 1, None),
            "ge": (math.ceil(value), None),
            "lt": (None, math.ceil(value)),
            "le": (None, math.floor(value) + 1),
        }[op]
    if lo is not None and lo > MAX_MS:
        return None
    if hi is not None and hi > MAX_MS:
        hi = None
    if lo is not None and hi is not None and lo >= hi:
        return None
    return lo, hi


def _time_condition(column: Any, criterion: Any) -> ColumnElement[bool]:
    if criterion.op in ("pr", "np"):
        return column.is_not(None) if criterion.op == "pr" else column.is_(None)
    interval = _ms_interval("eq" if criterion.op == "ne" else criterion.op, criterion.value)
    if interval is None:
        matched: ColumnElement[bool] = false()
    else:
        lo, hi = interval
        parts = [column >= _at(lo)] if lo is not None else [column.is_not(None)]
        if hi is not None:
            parts.append(column < _at(hi))
        matched = and_(*parts)
    return _negate(matched) if criterion.op == "ne" else matched


def _start_id_bounds(criterion: Any) -> list[ColumnElement[bool]]:
    if criterion.op == "ne":
        return []
    interval = _ms_interval(criterion.op, criterion.value)
    if interval is None:
        return []
    lo, hi = interval
    bounds = []
    if lo is not None and lo - START_ID_SLACK_MS > 0:
        bounds.append(Chat.id >= id_at(_at(lo - START_ID_SLACK_MS)))
    if hi is not None and hi + START_ID_SLACK_MS <= MAX_MS:
        bounds.append(Chat.id < id_at(_at(hi + START_ID_SLACK_MS)))
    return bounds


def _negate(condition: ColumnElement[bool]) -> ColumnElement[bool]:
    """NOT that is true where ``condition`` is false *or unknown* (SQL NULL)."""
    return not_(func.coalesce(condition, false()))


def _compare(value: Any, op: str, operand: Any) -> ColumnElement[bool]:
    return {
        "eq": lambda: value == operand,
        "gt": lambda: value > operand,
        "ge": lambda: value >= operand,
        "lt": lambda: value < operand,
        "le": lambda: value <= operand,
    }[op]()


def _number_condition(value: Any, criterion: Any, bind: Callable[[float], Any] = lambda v: v) -> ColumnElement[bool]:
    if criterion.op in ("pr", "np"):
        return value.is_not(None) if criterion.op == "pr" else value.is_(None)
    if criterion.op == "bt":
        return and_(value >= bind(criterion.value[0]), value <= bind(criterion.value[1]))
    if criterion.op == "ne":
        return _negate(value == bind(criterion.value))
    return _compare(value, criterion.op, bind(criterion.value))


def _string_condition(text: Any, op: str, operand: str, dialect: str) -> ColumnElement[bool]:
    if op in ("sw", "ew", "co") and operand == "":
        return text.is_not(None)
    n = len(operand)
    if op == "sw":
        return func.substr(text, 1, n) == operand
    if op == "ew":
        return func.substr(text, func.length(text) - n + 1) == operand
    if op == "co":
        return (func.strpos(text, operand) if dialect == "postgresql" else func.instr(text, operand)) > 0
    return text == operand  # eq; ne is the caller's negation


@dataclass(frozen=True, slots=True)
class _JsonEntry:
    """One JSON value of a chat (``key`` of an object column), seen the same on both backends."""

    is_string: ColumnElement[bool]
    is_number: ColumnElement[bool]
    text: Any  # the string, for JSON strings
    number: Any  # the value as a number: a JSON number, or a string written as one; else NULL
    is_bool: Callable[[bool], ColumnElement[bool]]
    is_present: ColumnElement[bool]
    bind_number: Callable[[float], Any]
    holds: Callable[[ColumnElement[bool]], ColumnElement[bool]]


def _postgres_entry(column: Any, path: tuple[str, ...]) -> _JsonEntry:
    node = func.jsonb_extract_path(column, *path)
    kind = func.jsonb_typeof(node)
    text = func.jsonb_extract_path_text(column, *path)
    # numeric, not float: a JSON number too big for a double is not an error.
    number = case(
        (kind == "number", cast(text, Numeric)),
        (and_(kind == "string", text.regexp_match(NUMERIC_PATTERN)), cast(text, Numeric)),
        else_=None,
    )
    return _JsonEntry(
        is_string=kind == "string",
        is_number=kind == "number",
        text=case((kind == "string", text), else_=None),
        number=number,
        is_bool=lambda v: and_(kind.in_(("boolean", "string")), text == ("true" if v else "false")),
        is_present=and_(kind.is_not(None), kind != "null"),
        bind_number=lambda v: literal(Decimal(repr(v)), Numeric()),
        holds=lambda condition: func.coalesce(condition, false()),
    )


def _sqlite_entry(column: Any, path: tuple[str, ...]) -> _JsonEntry:
    # json_each decodes keys; a JSON path would compare the escaped text.
    parent = "$" + "".join(f'."{p}"' for p in path[:-1])
    each = func.json_each(column, parent).table_valued("key", "type", "value", name="entry")
    kind, value = each.c.type, each.c.value
    rest = case((func.substr(value, 1, 1) == "-", func.substr(value, 2)), else_=value)
    looks_numeric = and_(
        kind == "text",
        rest.op("GLOB")("[0-9]*"),
        not_(rest.op("GLOB")("*[^0-9.]*")),
        not_(rest.op("GLOB")("*.*.*")),
        not_(rest.op("GLOB")("*.")),
    )
    number = case(
        (kind.in_(("integer", "real")), value),
        (looks_numeric, cast(value, Float)),
        else_=None,
    )

    def holds(condition: ColumnElement[bool]) -> ColumnElement[bool]:
        return exists(select(1).select_from(each).where(each.c.key == path[-1], condition))

    return _JsonEntry(
        is_string=kind == "text",
        is_number=kind.in_(("integer", "real")),
        text=case((kind == "text", value), else_=None),
        number=number,
        is_bool=lambda v: or_(kind == ("true" if v else "false"),
                              and_(kind == "text", value == ("true" if v else "false"))),
        is_present=and_(kind.is_not(None), kind != "null"),
        bind_number=lambda v: v,
        holds=holds,
    )


def _key_condition(column: Any, prefix: tuple[str, ...], criterion: Any, dialect: str) -> ColumnElement[bool]:
    path = (*prefix, criterion.key)
    entry = _postgres_entry(column, path) if dialect == "postgresql" else _sqlite_entry(column, path)
    op = criterion.op
    if isinstance(criterion, ChatPresentFilter):
        present = entry.holds(entry.is_present)
        return present if op == "pr" else not_(present)
    if isinstance(criterion, ChatStringFilter):
        matched = entry.holds(_string_condition(entry.text, "eq" if op == "ne" else op, criterion.value, dialect))
    elif isinstance(criterion, ChatEnumFilter):
        matched = entry.holds(entry.text.in_(criterion.value))
    elif isinstance(criterion, ChatBooleanFilter):
        matched = entry.holds(entry.is_bool(criterion.value))
    elif isinstance(criterion, ChatRangeFilter):
        low, high = (entry.bind_number(v) for v in criterion.value)
        matched = entry.holds(and_(entry.number >= low, entry.number <= high))
    else:
        matched = entry.holds(_compare(entry.number, "eq" if op == "ne" else op, entry.bind_number(criterion.value)))
    return not_(matched) if op == "ne" else matched


def conditions(criteria: ChatFilterCriteria | None, *, dialect: str) -> list[ColumnElement[bool]]:
    """The WHERE clauses for ``filter_criteria`` (besides the workspace)."""
    if criteria is None:
        return []
    where: list[ColumnElement[bool]] = []
    if criteria.agent:
        # The agents taken in every version as one IN, which PostgreSQL
        # answers from the agent index alone, even a count; an OR of
        # equalities is a bitmap scan that reads every matching row (two
        # agents, 20,000 matches: ~5 ms against ~100 ms).
        any_version = [a.agent_id for a in criteria.agent if not a.version]
        where.append(
            or_(
                *([Chat.agent_id.in_(any_version)] if any_version else []),
                *(
                    and_(Chat.agent_id == a.agent_id, Chat.agent_version.in_(a.version))
                    for a in criteria.agent
                    if a.version
                ),
            )
        )
    if (c := criteria.chat_id) is not None:
        if isinstance(c, ChatEnumFilter):
            where.append(Chat.id.in_(c.value))
        elif c.op == "ne":
            where.append(Chat.id != c.value)
        else:
            where.append(_string_condition(Chat.id, c.op, c.value, dialect))
    if criteria.chat_status is not None:
        where.append(Chat.status.in_(criteria.chat_status.value))
    if criteria.chat_type is not None:
        where.append(Chat.type.in_(criteria.chat_type.value))
    if criteria.user_sentiment is not None:
        where.append(Chat.user_sentiment.in_(criteria.user_sentiment.value))
    if criteria.chat_successful is not None:
        where.append(Chat.chat_successful.is_(criteria.chat_successful.value))
    if (c := criteria.start_timestamp) is not None:
        where.extend(_start_id_bounds(c))
        where.append(_time_condition(Chat.started_at, c))
    if criteria.end_timestamp is not None:
        where.append(_time_condition(Chat.ended_at, criteria.end_timestamp))
    if criteria.combined_cost is not None:
        where.append(_number_condition(Chat.combined_cost, criteria.combined_cost))
    for item in criteria.custom_attributes or []:
        where.append(_key_condition(Chat.custom_attributes, (), item, dialect))
    for item in criteria.custom_analysis_data or []:
        where.append(_key_condition(Chat.chat_analysis, ("customAnalysisData",), item, dialect))
    return where


@dataclass(frozen=True, slots=True)
class ChatPage:
    chats: list[Chat]
    pagination_key: str | None
    total: int | None


async def list_chats(session: AsyncSession, *, workspace_id: int, request: ListChatsV3Request) -> ChatPage:
    """One page of the workspace's chats matching ``request.filter_criteria``."""
    after = None
    if request.pagination_key:
        after = decode_cursor(request.pagination_key, request.sort_order, field="pagination_key")
    page = PageRequest(limit=request.limit, after=after, order=request.sort_order)
    dialect = session.get_bind().dialect.name
    where = [Chat.workspace_id == workspace_id, *conditions(request.filter_criteria, dialect=dialect)]

    query = select(Chat).where(*where).offset(request.skip or None)
    chats, key = await fetch_page(session, query, Chat.id, page)
    total = None
    if request.include_total:
        total = await session.scalar(select(func.count()).select_from(Chat).where(*where))
    return ChatPage(chats=chats, pagination_key=key, total=total)
