"""The per-process history cache is bounded by messages, not by chats."""

from __future__ import annotations

import pytest

from chatplane.chats.turn import read as read_module
from chatplane.chats.turn.engine import Turns
from chatplane.chats.turn.read import History, HistoryCache
from tests.chat_helpers import make_chat, say
from tests.conftest import Api, ScriptedModel


def _history(n: int) -> History:
    return History(n, [{"role": "user", "content": str(i)} for i in range(n)])


def test_the_least_recently_used_chats_go_when_the_message_budget_is_spent(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(read_module, "HISTORY_CACHE_MESSAGES", 100)
    cache = HistoryCache()
    for name in "abc":
        cache.remember(name, _history(40))
    # 120 > 100: "a", the least recently used, went; a long chat weighs more than a short one.
    assert cache.chats() == ["b", "c"] and cache.messages == 80
    grown = cache.get("b")
    grown.messages += [{"role": "assistant", "content": "x"}] * 30  # a turn appended to b's history
    cache.remember("b", grown)
    assert cache.chats() == ["b"] and cache.messages == 70  # c went, b is the newest
    cache.remember("b", _history(10))  # re-read from the database: replaces, not adds
    assert cache.messages == 10
    cache.forget("b")
    assert not cache.chats() and cache.messages == 0


def test_one_chat_larger_than_the_budget_is_still_kept(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(read_module, "HISTORY_CACHE_MESSAGES", 10)
    cache = HistoryCache()
    cache.remember("long", _history(50))
    assert cache.chats() == ["long"]


def test_a_chat_let_go_by_the_cache_while_its_turn_reads_keeps_its_history(
    api: Api, model: ScriptedModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another chat's turn may make the cache let go of this chat's history
    while this turn's read is on its way: the turn tops up the history it
    read against, not whatever the cache holds by then (nothing)."""
    turns: Turns = api.backend.server.app.state.turns
    chat_id = make_chat(api)["chatId"]
    assert say(api, chat_id, "first").status_code == 201
    read = turns.store.read

    async def read_then_evicted(*args, **kwargs):  # type: ignore[no-untyped-def]
        found = await read(*args, **kwargs)
        turns.forget(chat_id)  # as if another chat's turn had pushed it out meanwhile
        return found

    monkeypatch.setattr(turns.store, "read", read_then_evicted)
    assert say(api, chat_id, "second").status_code == 201
    sent = [m["content"] for m in model.requests[-1]["messages"] if m["role"] in ("user", "assistant")]
    assert sent == ["first", "ok", "second"]
