"""A turn that comes right after the last one on its chat.

On PostgreSQL such a turn takes the chat's lock back before its release has
gone out and reads nothing: it starts from the chat row the last turn wrote
(``locks.HeldOver``, ``Turns.run``). What it must still see, however soon it
comes: a draft configuration edited in place meanwhile (checked when it
writes: a stale start is thrown away and the turn starts over), a chat
updated meanwhile (the update holds the lock and leaves nothing to start
from), an Idempotency-Key's stored answer, and a stream never shows text
from a start thrown away. The same tests run on SQLite, where every turn
reads: the answers must be the same.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest

from chatplane.testing import Reply
from tests.chat_helpers import make_agent, make_chat, make_llm, say
from tests.conftest import Api, Backend, ScriptedModel, hold_locks_over
from tests.test_streaming import stream_events


@pytest.fixture
def held_over(backend: Backend, monkeypatch: pytest.MonkeyPatch) -> Iterator[bool]:
    """Whether turns take their lock back here (PostgreSQL), deterministically."""
    hold_locks_over(backend.server, monkeypatch)
    yield backend.kind == "postgresql"


def _systems(model: ScriptedModel) -> list[str]:
    return [request["messages"][0]["content"] for request in model.requests]


def _contents(api: Api, chat_id: str) -> list[str]:
    return [message["content"] for message in api.get(f"/api/chats/{chat_id}").json()["messages"]]


def test_a_draft_edited_between_two_turns_is_seen_by_the_next(api: Api, model: ScriptedModel, held_over: bool) -> None:
    llm = make_llm(api, general_prompt="Prompt A.")
    chat_id = make_chat(api, make_agent(api, llm))["chatId"]
    model.push(Reply("from A", when="Prompt A."), Reply("from A again", when="Prompt A."),
               Reply("from B", when="Prompt B."))
    assert say(api, chat_id, "one").json()["messages"][0]["content"] == "from A"
    assert api.patch(f"/api/llms/{llm['llm_id']}", {"general_prompt": "Prompt B."}).status_code == 200

    second = say(api, chat_id, "two")
    assert second.status_code == 201, second.text
    assert second.json()["messages"][0]["content"] == "from B"
    assert _contents(api, chat_id) == ["one", "from A", "two", "from B"]  # nothing of the stale start
    # PostgreSQL: the turn started from the last turn's chat row, with the old
    # prompt; its write found the LLM changed, wrote nothing, and it started over.
    assert _systems(model) == (["Prompt A.", "Prompt A.", "Prompt B."] if held_over else ["Prompt A.", "Prompt B."])
    third = say(api, chat_id, "three")  # and goes on from the new prompt
    assert third.status_code == 201 and _systems(model)[-1] == "Prompt B."
    assert len(_contents(api, chat_id)) == 6


def test_a_chat_updated_between_two_turns_is_seen_by_the_next(api: Api, model: ScriptedModel, held_over: bool) -> None:
    llm = make_llm(api, general_prompt="Hi {{name}}.")
    chat_id = make_chat(api, make_agent(api, llm), uponai_dynamic_variables={"name": "Ada"})["chatId"]
    assert say(api, chat_id, "one").status_code == 201
    patched = api.patch(f"/api/chats/{chat_id}", {"override_dynamic_variables": {"name": "Bo"}})
    assert patched.status_code == 200, patched.text
    assert say(api, chat_id, "two").status_code == 201
    # The update held the turn lock and left nothing to start from: the
    # next turn read the chat, one model call.
    assert _systems(model) == ["Hi Ada.", "Hi Bo."]


@pytest.mark.parametrize("backend", ["postgresql"], indirect=True)  # SQLite locks a file: no round trip
def test_consecutive_turns_take_the_lock_back_without_a_round_trip(
    api: Api, model: ScriptedModel, held_over: bool, backend: Backend
) -> None:
    shared = backend.server.app.state.turns.locks.shared
    chat_id = make_chat(api)["chatId"]
    sent: list[tuple[int, int]] = []
    send = shared.round_trip

    async def counting(releases, asked):  # type: ignore[no-untyped-def]
        sent.append((len(releases), len(asked)))
        return await send(releases, asked)

    shared.round_trip = counting
    try:
        for n in range(5):
            assert say(api, chat_id, f"message {n}").status_code == 201
    finally:
        del shared.round_trip
    # One lock asked for: the first turn's (an earlier test's release may ride
    # along with it); the next four took it back.
    assert [asked for _, asked in sent] == [1]
    assert _contents(api, chat_id) == [text for n in range(5) for text in (f"message {n}", "ok")]


def test_an_idempotent_retry_right_after_its_turn_is_replayed(api: Api, model: ScriptedModel, held_over: bool) -> None:
    chat_id = make_chat(api)["chatId"]
    first = say(api, chat_id, "hello", headers={"Idempotency-Key": "k-1"})
    retry = say(api, chat_id, "hello", headers={"Idempotency-Key": "k-1"})
    assert first.status_code == retry.status_code == 201
    assert retry.json() == first.json() and retry.headers.get("idempotent-replayed") == "true"
    assert len(model.requests) == 1 and _contents(api, chat_id) == ["hello", "ok"]


def test_a_stream_right_after_an_edit_shows_only_the_new_prompt_s_text(
    api: Api, model: ScriptedModel, held_over: bool
) -> None:
    llm = make_llm(api, general_prompt="Prompt A.")
    chat_id = make_chat(api, make_agent(api, llm))["chatId"]
    model.push(Reply("from A", when="Prompt A."), Reply("stale text", when="Prompt A."),
               Reply("from B", when="Prompt B."))
    assert say(api, chat_id, "one").status_code == 201
    assert api.patch(f"/api/llms/{llm['llm_id']}", {"general_prompt": "Prompt B."}).status_code == 200
    status, events = stream_events(api, chat_id, "two")
    assert status == 201
    text = "".join(data["content"] for event, data in events if event == "delta")
    assert text.strip() == "from B" and events[-1][0] == "done"
    assert _systems(model) == ["Prompt A.", "Prompt B."]  # a stream reads: no start to throw away


def test_an_update_waits_for_the_turn_in_progress(api: Api, model: ScriptedModel) -> None:
    """Update chat holds the turn lock, as everything that changes a chat does:
    sent while a turn runs, it answers after the turn has been stored."""
    chat_id = make_chat(api)["chatId"]
    model.push(Reply("slow", delay_s=0.6))
    done: dict[str, float] = {}

    def turn() -> None:
        assert say(api, chat_id, "one").status_code == 201
        done["turn"] = time.monotonic()

    asked = len(model.requests)
    worker = threading.Thread(target=turn)
    worker.start()
    deadline = time.monotonic() + 10
    while len(model.requests) == asked and time.monotonic() < deadline:  # the turn is waiting for the model
        time.sleep(0.01)
    patched = api.patch(f"/api/chats/{chat_id}", {"metadata": {"k": "v"}})
    done["update"] = time.monotonic()
    worker.join(10)
    assert patched.status_code == 200, patched.text
    assert done["turn"] <= done["update"]
    assert [m["content"] for m in patched.json()["messages"]] == ["one", "slow"]  # it saw the stored turn
