"""``chatplane repair``: rows stored before the edge checked text, rewritten.

Each test has a database of its own (the command rewrites every table), a
real server on it, and runs the command as a user does: a process.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from sqlalchemy import text

from chatplane.db import schema_head
from tests.chat_helpers import make_chat, say
from tests.conftest import BACKENDS, Api, Backend, make_api, scripted_providers, served
from tests.test_cli import _env

POISON = '{"\\ud800": "a\\udc00b", "k": "\\u0000"}'
CLEANED = {"\ufffd": "a\ufffdb", "k": "\ufffd"}


@contextmanager
def _own(kind: str, tmp_path: Path, scripted_model) -> Iterator[Api]:  # type: ignore[no-untyped-def]
    with served(kind, tmp_path, providers=scripted_providers(scripted_model)) as backend:
        api = make_api(backend, "repair")
        try:
            yield api
        finally:
            api.close()


@pytest.fixture(params=BACKENDS)
def own(request: pytest.FixtureRequest, tmp_path: Path, scripted_model) -> Iterator[Api]:  # type: ignore[no-untyped-def]
    with _own(request.param, tmp_path, scripted_model) as api:
        yield api


@pytest.fixture
def own_sqlite(tmp_path: Path, scripted_model) -> Iterator[Api]:  # type: ignore[no-untyped-def]
    """SQLite only: PostgreSQL cannot hold the poison (the test above shows it)."""
    with _own("sqlite", tmp_path, scripted_model) as api:
        yield api


def _repair(backend: Backend, *args: str) -> list[str]:
    env = _env(backend.settings.data_dir, CHATPLANE_DATABASE_URL=backend.settings.resolved_database_url)
    done = subprocess.run([sys.executable, "-m", "chatplane.cli", "repair", *args],
                          env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return done.stdout.splitlines()


def test_repair_refuses_a_database_not_at_the_current_schema(tmp_path: Path) -> None:
    """Repair rewrites the tables as this version knows them: an empty or
    older database is refused with what to do, nothing written."""
    env = _env(tmp_path)
    done = subprocess.run([sys.executable, "-m", "chatplane.cli", "repair"],
                          check=False, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 1, done.stderr
    assert "no revision" in done.stderr and "chatplane migrate" in done.stderr
    assert "Traceback" not in done.stderr
    older = subprocess.run([sys.executable, "-m", "chatplane.cli", "migrate", "0008"],
                           check=False, env=env, capture_output=True, text=True, timeout=120)
    assert older.returncode == 0, older.stderr
    done = subprocess.run([sys.executable, "-m", "chatplane.cli", "repair"],
                          check=False, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 1 and f"at 0008, not {schema_head()}" in done.stderr, done.stderr


def _raw(backend: Backend, sql: str, **params: object) -> list[tuple]:
    async def read(session):  # type: ignore[no-untyped-def]
        return [tuple(row) for row in (await session.execute(text(sql), params)).all()]

    return backend.run(read)


def _poison(backend: Backend, chat: str) -> None:
    async def store(session):  # type: ignore[no-untyped-def]
        await session.execute(text("UPDATE chats SET metadata = :m, custom_attributes = :m WHERE id = :id"),
                              {"m": POISON, "id": chat})
        # Text another program wrote as bytes that are not UTF-8 ("a", 0xFF, "b").
        await session.execute(text("UPDATE chat_messages SET content = CAST(X'61FF62' AS TEXT) "
                                   "WHERE chat_id = :id AND role = 'user'"), {"id": chat})
        # Not JSON at all: counted, left alone.
        await session.execute(text("UPDATE chats SET chat_cost = 'not json' WHERE id = :id"), {"id": chat})

    backend.run(store)


def test_repair_rewrites_bad_text_as_u_fffd_and_reports_it(own: Api) -> None:
    backend = own.backend
    chat = make_chat(own, metadata={"k": "v"})["chatId"]
    clean_chat = make_chat(own, metadata={"fine": "\u05e9\u05dc\u05d5\u05dd \U0001f600"})["chatId"]
    assert say(own, chat, "hello").status_code == 201
    if backend.kind == "postgresql":
        # jsonb and text refuse every one of these: nothing bad can be stored.
        with pytest.raises(Exception, match="(?i)unicode|surrogate|json|utf8|encoding"):
            _poison(backend, chat)
        lines = _repair(backend)
        assert lines[0].startswith("scanned ") and lines[0].endswith("nothing to repair"), lines
        return

    _poison(backend, chat)
    before = _raw(backend, "SELECT metadata, custom_attributes, chat_cost FROM chats WHERE id = :id", id=chat)

    dry = _repair(backend, "--dry-run")
    assert dry[0].endswith(": 3 found"), dry
    assert "  chats.metadata: 1 row(s) found" in dry
    assert "  chats.custom_attributes: 1 row(s) found" in dry
    assert "  chat_messages.content: 1 row(s) found" in dry
    assert "  chats.chat_cost: 1 row(s) not JSON, left alone" in dry
    assert _raw(backend, "SELECT metadata, custom_attributes, chat_cost FROM chats WHERE id = :id", id=chat) == before

    done = _repair(backend)
    assert done[0].endswith(": 3 rewritten"), done
    assert "  chat_messages.content: 1 row(s) rewritten" in done
    [(metadata, attributes)] = _raw(backend, "SELECT metadata, custom_attributes FROM chats WHERE id = :id", id=chat)
    for stored in (metadata, attributes):
        assert "\\ud800" not in stored and "\\u0000" not in stored and "\\udc00" not in stored
    [(content,)] = _raw(backend, "SELECT CAST(content AS BLOB) FROM chat_messages "
                                 "WHERE chat_id = :id AND role = 'user'", id=chat)
    assert content == "a\ufffdb".encode()
    [(cost,)] = _raw(backend, "SELECT chat_cost FROM chats WHERE id = :id", id=chat)
    assert cost == "not json"

    again = _repair(backend)
    assert again[0].endswith("nothing to repair"), again
    # The untouched chat kept its (valid, non-ASCII) text exactly.
    assert own.get(f"/api/chats/{clean_chat}").json()["metadata"] == {"fine": "\u05e9\u05dc\u05d5\u05dd \U0001f600"}


def test_repaired_rows_read_back_through_the_api(own_sqlite: Api) -> None:
    own, backend = own_sqlite, own_sqlite.backend
    chat = make_chat(own, metadata={"k": "v"})["chatId"]
    assert say(own, chat, "hello").status_code == 201

    async def store(session):  # type: ignore[no-untyped-def]
        await session.execute(text("UPDATE chats SET metadata = :m WHERE id = :id"), {"m": POISON, "id": chat})

    backend.run(store)
    _repair(backend)
    got = own.get(f"/api/chats/{chat}")
    assert got.status_code == 200, got.text
    assert got.json()["metadata"] == CLEANED
    assert own.post("/v3/list-chats", {}).status_code == 200
