"""``chatplane repair``: rewrite stored text that chatplane no longer accepts.

Before the edge refused it (``limits.InputGuard``), a lone UTF-16 surrogate
(``"\\ud800"``) or a NUL could be stored in a JSON column on SQLite, which
keeps JSON as text with the escape in it; every answer holding such a row
then failed. Reads now replace the bad code points with U+FFFD on the fly
(``text.loads`` as the engines' JSON deserializer); this rewrites the rows
themselves, the same way, so exports, backups and other readers of the file
see valid text too. Text columns are checked as bytes on SQLite (invalid
UTF-8 written by another program makes the row unreadable).

PostgreSQL refuses all of these (``jsonb`` and ``text`` alike), so there the
scan finds nothing to do; it runs the same way so that a report covers both.

Rows are read a page at a time by primary key; each page's rewrites are one
transaction, so a repair stopped half-way leaves every row either old or
repaired, and running it again finishes the job.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import JSON, LargeBinary, String, Table, Text, cast, select, tuple_, update
from sqlalchemy import text as sql
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine

from chatplane.db import schema_head
from chatplane.errors import Conflict
from chatplane.models import Base
from chatplane.text import bad_text, clean, clean_json

PAGE = 500


@dataclass
class Report:
    """What a repair found: rows scanned; per ``table.column`` the rows with
    bad text (rewritten unless a dry run) and rows whose JSON does not parse
    (left as they are: nothing chatplane wrote)."""

    dry_run: bool = False
    scanned: int = 0
    found: dict[str, int] = field(default_factory=dict)
    unreadable: dict[str, int] = field(default_factory=dict)

    def lines(self) -> list[str]:
        done = "found" if self.dry_run else "rewritten"
        lines = [f"scanned {self.scanned} rows: "
                 + (f"{sum(self.found.values())} {done}" if self.found else "nothing to repair")]
        lines += [f"  {name}: {count} row(s) {done}" for name, count in sorted(self.found.items())]
        lines += [f"  {name}: {count} row(s) not JSON, left alone"
                  for name, count in sorted(self.unreadable.items())]
        return lines


def _decoded(raw: str | bytes) -> tuple[bool, str]:
    """(bad, text) for a stored value: bytes that are not UTF-8 are bad."""
    if isinstance(raw, str):
        return False, raw
    try:
        return False, raw.decode("utf-8")
    except UnicodeDecodeError:
        return True, raw.decode("utf-8", "replace")


def _bad_json(node: Any) -> bool:
    if isinstance(node, str):
        return bad_text(node) is not None
    if isinstance(node, list):
        return any(_bad_json(item) for item in node)
    if isinstance(node, dict):
        return any(bad_text(key) is not None or _bad_json(item) for key, item in node.items())
    return False


def _repaired_json(raw: str | bytes) -> tuple[bool, Any]:
    """(bad, cleaned) for one stored JSON document; ValueError if it is not JSON."""
    bad, text = _decoded(raw)
    value = json.loads(text)
    return bad or _bad_json(value), clean_json(value)


def _repaired_text(raw: str | bytes) -> tuple[bool, str]:
    bad, text = _decoded(raw)
    return bad or bad_text(text) is not None, clean(text)


def _columns(table: Table) -> list[tuple[Any, str]]:
    kinds = []
    for column in table.columns:
        if isinstance(column.type, JSON):
            kinds.append((column, "json"))
        elif isinstance(column.type, (String, Text)):
            kinds.append((column, "text"))
    return kinds


async def _check_schema(engine: AsyncEngine, head: str) -> None:
    """Refuse a database whose schema is not the one these tables describe."""
    try:
        async with engine.connect() as conn:
            revision = (await conn.execute(sql("SELECT version_num FROM alembic_version"))).scalar()
    except DBAPIError:  # no alembic_version table: never migrated
        revision = None
    if revision != head:
        raise Conflict(f"the database's schema is at {revision or 'no revision'}, not {head}: "
                       "run `chatplane migrate` first")


async def repair(engine: AsyncEngine, *, dry_run: bool = False) -> Report:
    """Scan every text and JSON column of every table; rewrite what is bad.
    Only a database migrated to the current schema (``Conflict`` otherwise)."""
    await _check_schema(engine, schema_head())
    report = Report(dry_run=dry_run)
    sqlite = engine.dialect.name == "sqlite"
    for table in Base.metadata.sorted_tables:
        columns = _columns(table)
        if not columns:
            continue
        key = list(table.primary_key.columns)
        # As stored, unparsed: bytes on SQLite (a bad row's text may not
        # decode), text on PostgreSQL (its JSON would come back cleaned).
        read = [cast(column, LargeBinary if sqlite else Text) for column, _ in columns]
        after: tuple[Any, ...] | None = None
        while True:
            query = select(*key, *read).order_by(*key).limit(PAGE)
            if after is not None:
                query = query.where(tuple_(*key) > tuple_(*after))
            async with engine.begin() as conn:
                rows = (await conn.execute(query)).all()
                for row in rows:
                    ident, values = tuple(row[: len(key)]), row[len(key):]
                    fixes: dict[str, Any] = {}
                    for (column, kind), raw in zip(columns, values, strict=True):
                        if raw is None:
                            continue
                        name = f"{table.name}.{column.name}"
                        try:
                            bad, fixed = (_repaired_json if kind == "json" else _repaired_text)(raw)
                        except ValueError:
                            report.unreadable[name] = report.unreadable.get(name, 0) + 1
                            continue
                        if bad:
                            fixes[column.key] = fixed
                            report.found[name] = report.found.get(name, 0) + 1
                    if fixes and not dry_run:
                        match = [k == v for k, v in zip(key, ident, strict=True)]
                        await conn.execute(update(table).where(*match).values(**fixes))
                report.scanned += len(rows)
            if len(rows) < PAGE:
                break
            after = tuple(rows[-1][: len(key)])
    return report
