"""Webhooks: events POSTed to a real receiver on loopback, signed so that
retell-sdk's own verifier accepts them, retried, ordered per chat, logged,
redelivered, and not lost across a restart.

These tests run their own server (per backend) with a fast retry backoff and
their own scripted model, so that neither the retries nor the post-chat
analysis that ending a chat starts reach into other tests.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from retell import Retell
from sqlalchemy import select, update

from chatplane.db import migrate
from chatplane.models import Job, Workspace
from chatplane.settings import JobSettings, Settings
from chatplane.testing import Echo, ScriptedModel
from tests.chat_helpers import make_agent, make_chat, say
from tests.conftest import (
    Api,
    Backend,
    ServerThread,
    served,
    tenant,
    assert_error,
    dispose_settings,
    fresh_settings,
    make_api,
    scripted_providers,
)
from tests.webhook_receiver import Answer, Receiver, eventually
RETELL = Retell(api_key="not-used-by-verify")
FAST_JOBS = JobSettings(poll_s=0.05, backoff_base_s=0.05, backoff_cap_s=0.1)


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with Receiver() as r:
        yield r


# --- a server of our own, with fast retries -----------------------------------


def hooks_overrides(model: ScriptedModel, **jobs: Any) -> dict[str, Any]:
    return {
        "providers": scripted_providers(model),
        "jobs": FAST_JOBS.model_copy(update=jobs),
        "allow_private_networks": True,  # the receivers run on loopback
    }


def hooks_settings(kind: str, tmp: Path, model: ScriptedModel, **jobs: Any) -> Settings:
    return fresh_settings(kind, tmp, **hooks_overrides(model, **jobs))


@pytest.fixture(scope="module")
def hooks_model() -> Iterator[ScriptedModel]:
    # Echo, not a script: the post-chat analyses that ending chats starts call
    # this model too, in the background, and must not take a test's reply.
    model = ScriptedModel(default=Echo()).start_in_thread()
    yield model
    model.stop()


@pytest.fixture(scope="module")
def hooks(backend: Backend, tmp_path_factory: pytest.TempPathFactory, hooks_model: ScriptedModel) -> Iterator[Backend]:
    with served(backend.kind, tmp_path_factory.mktemp(f"hooks-{backend.kind}"), **hooks_overrides(hooks_model)) as b:
        yield b


@pytest.fixture
def mine(hooks: Backend) -> Iterator[Api]:
    with tenant(hooks, "mine") as client:
        yield client


@pytest.fixture
def theirs(hooks: Backend) -> Iterator[Api]:
    with tenant(hooks, "theirs") as client:
        yield client


def hooked_agent(api: Api, receiver: Receiver, events: list[str], **fields: Any) -> dict[str, Any]:
    return make_agent(api, webhook_url=receiver.url, webhook_events=events, **fields)


def deliveries(api: Api, **query: Any) -> list[dict[str, Any]]:
    response = api.get("/api/webhook-deliveries", **query)
    assert response.status_code == 200, response.text
    return response.json()["data"]


def delivery(api: Api, delivery_id: str) -> dict[str, Any]:
    response = api.get(f"/api/webhook-deliveries/{delivery_id}")
    assert response.status_code == 200, response.text
    return response.json()


def settled(api: Api, delivery_id: str, status: str = "delivered") -> dict[str, Any]:
    return eventually(
        lambda: d if (d := delivery(api, delivery_id))["status"] == status else None,
        what=f"delivery {delivery_id} to be {status}",
    )


def webhook_key(api: Api) -> str:
    response = api.http.get(f"/api/workspaces/{api.ws}/webhook-key")
    assert response.status_code == 200, response.text
    assert response.json()["workspaceId"] == api.ws
    return response.json()["webhook_key"]


def end(api: Api, chat_id: str) -> None:
    assert api.post(f"/api/chats/{chat_id}/end").status_code == 204


# --- what is sent -------------------------------------------------------------


def test_chat_started_and_chat_ended_are_posted_with_the_chat(mine: Api, receiver: Receiver) -> None:
    agent = make_agent(mine)
    # Webhooks are switched on through the API, like any agent setting.
    patched = mine.patch(
        f"/api/chat-agents/{agent['agent_id']}",
        {"webhook_url": receiver.url, "webhook_events": ["chat_started", "chat_ended"]},
    )
    assert patched.status_code == 200, patched.text
    chat = make_chat(mine, agent, metadata={"order": "A-1"})

    started = eventually(lambda: receiver.received("chat_started"), what="chat_started")[0]
    assert started.headers["content-type"] == "application/json"
    assert started.headers["user-agent"] == "chatplane-webhooks"
    assert started.headers["x-webhook-event"] == "chat_started"
    assert started.event_id.startswith("whd_")
    assert started.json["chat"]["chatId"] == chat["chatId"]
    assert started.json["chat"]["status"] == "ongoing"
    assert started.json["chat"]["metadata"] == {"order": "A-1"}
    assert set(started.json) == {"event", "chat"}
    # The chat as the API shows it, messages included.
    assert set(chat) <= set(started.json["chat"])

    end(mine, chat["chatId"])
    ended = eventually(lambda: receiver.received("chat_ended"), what="chat_ended")[0]
    assert ended.headers["x-webhook-event"] == "chat_ended"
    assert ended.event_id != started.event_id
    assert ended.json["chat"]["status"] == "ended"
    assert ended.json["chat"]["endedAt"] is not None
    # Compact JSON, exactly the bytes that were signed.
    assert ended.body == json.dumps(ended.json, separators=(",", ":"), ensure_ascii=False)


def test_the_signature_verifies_with_retell_sdk_and_fails_with_a_wrong_key(
    mine: Api, theirs: Api, receiver: Receiver
) -> None:
    chat = make_chat(mine, hooked_agent(mine, receiver, ["chat_started"]), metadata={"name": "Zoë 🚀 \"quoted\""})
    request = eventually(lambda: receiver.received("chat_started"), what="chat_started")[0]
    key = webhook_key(mine)
    signature = request.headers["x-retell-signature"]
    assert signature.startswith("v=")

    assert RETELL.verify(request.body, key, signature)
    # Retell's receiver example re-serialises the parsed body; that verifies too
    # (UTF-8 is sent as is, not \u-escaped).
    reserialised = json.dumps(json.loads(request.body), separators=(",", ":"), ensure_ascii=False)
    assert RETELL.verify(reserialised, key, signature)
    assert "Zoë 🚀" in request.body and request.json["chat"]["chatId"] == chat["chatId"]

    assert not RETELL.verify(request.body, key[::-1], signature)
    assert not RETELL.verify(request.body, webhook_key(theirs), signature)
    assert not RETELL.verify(request.body.replace("ongoing", "ended"), key, signature)


def test_events_the_agent_did_not_ask_for_are_not_sent(mine: Api, receiver: Receiver) -> None:
    chat = make_chat(mine, hooked_agent(mine, receiver, ["chat_ended"]))
    assert say(mine, chat["chatId"], "hi").status_code == 201
    end(mine, chat["chatId"])
    eventually(lambda: receiver.received("chat_ended"), what="chat_ended")
    # Events are recorded in the transaction that causes them, so the log is
    # complete as soon as the calls return.
    assert [d["event"] for d in deliveries(mine, chatId=chat["chatId"])] == ["chat_ended"]
    assert [r.event for r in receiver.received()] == ["chat_ended"]

    # No webhook_url: nothing is recorded at all.
    quiet = make_chat(mine, make_agent(mine, webhook_events=["chat_started", "chat_ended"]))
    end(mine, quiet["chatId"])
    assert deliveries(mine, chatId=quiet["chatId"]) == []


def test_transcript_updated_only_when_asked(mine: Api, receiver: Receiver) -> None:
    asked = make_chat(mine, hooked_agent(mine, receiver, ["transcript_updated"]))
    assert say(mine, asked["chatId"], "When do you open?").status_code == 201
    update_ = eventually(lambda: receiver.received("transcript_updated"), what="transcript_updated")[0]
    chat = update_.json["chat"]
    assert chat["chatId"] == asked["chatId"]
    assert [(m["role"], m["content"]) for m in chat["messages"]] == [
        ("user", "When do you open?"), ("assistant", "echo: When do you open?"),
    ]
    assert chat["transcript"] == "User: When do you open?\nAgent: echo: When do you open?\n"

    not_asked = make_chat(mine, hooked_agent(mine, receiver, ["chat_started", "chat_ended"]))
    assert say(mine, not_asked["chatId"], "hello").status_code == 201
    assert [d["event"] for d in deliveries(mine, chatId=not_asked["chatId"])] == ["chat_started"]


# --- retries, ordering, timeouts, redirects ----------------------------------


def test_a_failing_receiver_is_retried_with_the_same_event_id(mine: Api, receiver: Receiver) -> None:
    receiver.push(Answer(500), Answer(503))
    chat = make_chat(mine, hooked_agent(mine, receiver, ["chat_started"]))
    [logged] = deliveries(mine, chatId=chat["chatId"])
    done = settled(mine, logged["id"])

    sent = receiver.received()
    assert len(sent) == 3
    assert {r.event_id for r in sent} == {logged["id"]}
    assert len({r.body for r in sent}) == 1  # the same event, byte for byte
    key = webhook_key(mine)
    assert all(RETELL.verify(r.body, key, r.headers["x-retell-signature"]) for r in sent)

    assert [(a["attempt"], a["status_code"], a["error"]) for a in done["attempts"]] == [
        (1, 500, None), (2, 503, None), (3, 200, None),
    ]
    assert all(a["duration_ms"] >= 0 and a["at"] for a in done["attempts"])
    assert done["deliveredAt"] is not None


def test_one_chats_events_arrive_in_order_even_when_the_first_is_retried(mine: Api, receiver: Receiver) -> None:
    receiver.push(Answer(500), Answer(500))
    chat = make_chat(mine, hooked_agent(mine, receiver, ["chat_started", "chat_ended"]))
    end(mine, chat["chatId"])  # queued while chat_started is still failing
    eventually(lambda: receiver.received("chat_ended"), what="chat_ended")
    sent = receiver.received()
    assert [r.event for r in sent] == ["chat_started"] * 3 + ["chat_ended"]
    assert len({r.event_id for r in sent[:3]}) == 1


def test_a_receiver_slower_than_the_timeout_is_retried(mine: Api, receiver: Receiver) -> None:
    receiver.push(Answer(200, delay_s=2.5))
    chat = make_chat(mine, hooked_agent(mine, receiver, ["chat_started"], webhook_timeout_ms=1000))
    [logged] = deliveries(mine, chatId=chat["chatId"])
    done = settled(mine, logged["id"])
    first, second = done["attempts"]
    assert first["status_code"] is None and "timed out after 1000 ms" in first["error"]
    assert 900 <= first["duration_ms"] < 2400
    assert second["status_code"] == 200
    assert [r.event_id for r in receiver.received()] == [logged["id"]] * 2


def test_redirects_are_not_followed(mine: Api, receiver: Receiver) -> None:
    receiver.push(Answer(307, headers={"Location": receiver.url + "/elsewhere"}))
    chat = make_chat(mine, hooked_agent(mine, receiver, ["chat_started"]))
    [logged] = deliveries(mine, chatId=chat["chatId"])
    done = settled(mine, logged["id"])
    assert [a["status_code"] for a in done["attempts"]] == [307, 200]
    assert [r.path for r in receiver.received()] == [receiver.path] * 2
    assert receiver.path + "/elsewhere" not in receiver.strays


def test_a_receiver_that_never_succeeds_fails_the_delivery_and_the_chat_moves_on(
    mine: Api, receiver: Receiver, hooks: Backend
) -> None:
    receiver.default = Answer(500)
    chat = make_chat(mine, hooked_agent(mine, receiver, ["chat_started", "chat_ended"]))
    end(mine, chat["chatId"])
    started, ended = sorted(deliveries(mine, chatId=chat["chatId"]), key=lambda d: d["id"])
    failed = settled(mine, started["id"], "failed")
    assert [a["attempt"] for a in failed["attempts"]] == list(range(1, 16))  # events.MAX_ATTEMPTS
    assert {a["status_code"] for a in failed["attempts"]} == {500}
    assert failed["deliveredAt"] is None

    # The job is parked as failed beside it, with the receiver's answer.
    async def job_of(session):  # type: ignore[no-untyped-def]
        jobs = (await session.scalars(select(Job).where(Job.kind == "webhook.deliver"))).all()
        return [(j.status, j.attempts, j.last_error) for j in jobs if j.payload["delivery_id"] == started["id"]]

    [(status, attempts, last_error)] = hooks.run(job_of)
    assert (status, attempts) == ("failed", 15) and "HTTP 500" in last_error

    # Only then does the chat's next event go out; then it can be redelivered.
    receiver.default = Answer(200)
    settled(mine, ended["id"])
    assert mine.post(f"/api/webhook-deliveries/{started['id']}/redeliver").status_code == 202
    again = settled(mine, started["id"])
    assert again["attempts"][-1]["attempt"] == 16 and again["attempts"][-1]["status_code"] == 200


def test_410_gone_fails_at_once(mine: Api, receiver: Receiver) -> None:
    receiver.push(Answer(410))
    chat = make_chat(mine, hooked_agent(mine, receiver, ["chat_started", "chat_ended"]))
    [started] = deliveries(mine, chatId=chat["chatId"])
    failed = settled(mine, started["id"], "failed")
    assert [a["status_code"] for a in failed["attempts"]] == [410]
    end(mine, chat["chatId"])
    eventually(lambda: receiver.received("chat_ended"), what="chat_ended")
    # chat_ended waited for chat_started's job, which was not retried.
    assert [r.event for r in receiver.received()] == ["chat_started", "chat_ended"]


# --- the delivery log and redelivery ------------------------------------------


def test_the_delivery_log_lists_filters_and_pages(mine: Api, receiver: Receiver) -> None:
    agent = hooked_agent(mine, receiver, ["chat_started", "chat_ended"])
    first = make_chat(mine, agent)
    second = make_chat(mine, agent)
    end(mine, first["chatId"])
    eventually(lambda: len(receiver.received()) == 3, what="three deliveries")
    for d in deliveries(mine):
        settled(mine, d["id"])

    everything = deliveries(mine)
    assert [(d["chatId"], d["event"]) for d in everything] == [
        (first["chatId"], "chat_ended"), (second["chatId"], "chat_started"), (first["chatId"], "chat_started"),
    ]
    newest = everything[0]
    assert set(newest) == {
        "id", "chatId", "event", "url", "status", "attempts", "createdAt", "deliveredAt", "payload",
    }
    assert newest["url"] == receiver.url and newest["status"] == "delivered"
    assert newest["payload"]["event"] == "chat_ended" and newest["payload"]["chat"]["chatId"] == first["chatId"]
    assert newest["createdAt"].endswith("Z") and newest["deliveredAt"] >= newest["createdAt"]
    [attempt] = newest["attempts"]
    assert set(attempt) == {"at", "attempt", "status_code", "error", "duration_ms"}
    assert delivery(mine, newest["id"]) == newest

    assert [d["id"] for d in deliveries(mine, chatId=first["chatId"])] == [everything[0]["id"], everything[2]["id"]]
    assert [d["id"] for d in deliveries(mine, event="chat_started")] == [everything[1]["id"], everything[2]["id"]]
    assert len(deliveries(mine, status="delivered")) == 3 and deliveries(mine, status="failed") == []
    assert [d["id"] for d in deliveries(mine, sortOrder="ascending")] == [d["id"] for d in reversed(everything)]

    seen: list[str] = []
    key = None
    while True:
        query = {"limit": 1, **({"paginationKey": key} if key else {})}
        page = mine.get("/api/webhook-deliveries", **query).json()
        seen += [d["id"] for d in page["data"]]
        key = page["pagination_key"]
        if key is None:
            break
    assert seen == [d["id"] for d in everything]


def test_redeliver_sends_the_same_event_again(mine: Api, receiver: Receiver) -> None:
    chat = make_chat(mine, hooked_agent(mine, receiver, ["chat_started"]))
    [logged] = deliveries(mine, chatId=chat["chatId"])
    settled(mine, logged["id"])

    response = mine.post(f"/api/webhook-deliveries/{logged['id']}/redeliver")
    assert response.status_code == 202, response.text
    assert response.json()["status"] == "pending" and response.json()["id"] == logged["id"]
    assert response.json()["deliveredAt"] is None
    done = eventually(
        lambda: (d := delivery(mine, logged["id"]))["status"] == "delivered" and len(d["attempts"]) == 2 and d,
        what="the redelivery",
    )
    assert [a["attempt"] for a in done["attempts"]] == [1, 2]
    first, again = receiver.received()
    assert first.event_id == again.event_id == logged["id"]
    assert first.body == again.body


def test_webhook_key_is_made_on_first_read_and_signs_deliveries(mine: Api, receiver: Receiver, hooks: Backend) -> None:
    async def forget_key(session):  # type: ignore[no-untyped-def]
        await session.execute(update(Workspace).where(Workspace.id == mine.ws).values(webhook_key=None))

    hooks.run(forget_key)
    key = webhook_key(mine)
    assert len(key) >= 32 and webhook_key(mine) == key

    async def stored(session):  # type: ignore[no-untyped-def]
        return await session.scalar(select(Workspace.webhook_key).where(Workspace.id == mine.ws))

    assert hooks.run(stored) == key
    make_chat(mine, hooked_agent(mine, receiver, ["chat_started"]))
    request = eventually(lambda: receiver.received("chat_started"), what="chat_started")[0]
    assert RETELL.verify(request.body, key, request.headers["x-retell-signature"])


# --- tenancy and errors -------------------------------------------------------


def test_tenancy_and_errors(mine: Api, theirs: Api, receiver: Receiver) -> None:
    chat = make_chat(theirs, hooked_agent(theirs, receiver, ["chat_started"]))
    [their_delivery] = deliveries(theirs, chatId=chat["chatId"])
    their_id = their_delivery["id"]

    # Another workspace's delivery is a missing one.
    assert deliveries(mine) == []
    assert deliveries(mine, chatId=chat["chatId"]) == []
    assert_error(mine.get(f"/api/webhook-deliveries/{their_id}"), 404, "webhook_delivery_not_found")
    assert_error(mine.post(f"/api/webhook-deliveries/{their_id}/redeliver"), 404, "webhook_delivery_not_found")
    assert_error(mine.get("/api/webhook-deliveries/whd_nope"), 404, "webhook_delivery_not_found")
    # Naming their workspace with my key.
    assert_error(mine.get("/api/webhook-deliveries", workspaceId=theirs.ws), 404, "workspace_not_found")
    assert_error(mine.get(f"/api/webhook-deliveries/{their_id}", workspaceId=theirs.ws), 404, "workspace_not_found")
    assert_error(
        mine.http.post(f"/api/webhook-deliveries/{their_id}/redeliver", json={"workspaceId": theirs.ws}),
        404, "workspace_not_found",
    )
    assert_error(mine.http.get(f"/api/workspaces/{theirs.ws}/webhook-key"), 404, "workspace_not_found")
    for junk in ("abc", "-1", "99999999999999999999999", "1.5"):
        assert_error(mine.http.get(f"/api/workspaces/{junk}/webhook-key"), 404, "workspace_not_found")

    # No key, or a wrong one.
    anonymous = {"Authorization": ""}
    assert_error(mine.http.get("/api/webhook-deliveries", params={"workspaceId": mine.ws}, headers=anonymous), 401)
    assert_error(mine.http.get(f"/api/workspaces/{mine.ws}/webhook-key", headers=anonymous), 401, "unauthorized")
    wrong = {"Authorization": "Bearer cp_wrong"}
    assert_error(mine.http.get(f"/api/webhook-deliveries/{their_id}", params={"workspaceId": theirs.ws},
                               headers=wrong), 401, "unauthorized")
    assert_error(mine.http.post(f"/api/webhook-deliveries/{their_id}/redeliver", json={"workspaceId": theirs.ws},
                                headers=wrong), 401, "unauthorized")

    # Bad queries and bodies.
    assert_error(mine.get("/api/webhook-deliveries", status="bogus"), 422, "validation_error", "status")
    assert_error(mine.get("/api/webhook-deliveries", event="call_started"), 422, "validation_error", "event")
    assert_error(mine.get("/api/webhook-deliveries", limit=0), 422, "validation_error", "limit")
    assert_error(mine.get("/api/webhook-deliveries", sortOrder="sideways"), 422, "validation_error", "sortOrder")
    assert_error(mine.get("/api/webhook-deliveries", paginationKey="junk!"), 422, "validation_error", "paginationKey")
    assert_error(mine.http.get("/api/webhook-deliveries"), 422, "validation_error", "workspaceId")
    assert_error(mine.http.post(f"/api/webhook-deliveries/{their_id}/redeliver", json={}), 422, "validation_error")


# --- durability ---------------------------------------------------------------


def test_a_pending_delivery_survives_a_restart(
    backend: Backend, tmp_path: Path, hooks_model: ScriptedModel, receiver: Receiver
) -> None:
    """Stop the server while a delivery is still being retried; a new server
    on the same database delivers it, as the same event."""
    receiver.default = Answer(500)
    settings = hooks_settings(backend.kind, tmp_path, hooks_model, backoff_base_s=1.0, backoff_cap_s=2.0)
    try:
        migrate(settings)
        with ServerThread(settings) as first:
            hooks = Backend(backend.kind, settings, first.url, first)
            api = make_api(hooks, "restart")
            chat = make_chat(api, hooked_agent(api, receiver, ["chat_started"]))
            [logged] = deliveries(api, chatId=chat["chatId"])
            eventually(lambda: delivery(api, logged["id"])["attempts"], what="a first attempt")
            api.close()
        receiver.default = Answer(200)
        with ServerThread(settings) as second:
            api = Api(Backend(backend.kind, settings, second.url, second), api.ws, api.key)
            done = settled(api, logged["id"])
            api.close()
        assert [a["status_code"] for a in done["attempts"]][-1] == 200
        assert {a["status_code"] for a in done["attempts"][:-1]} == {500}
        sent = receiver.received()
        assert len(sent) == len(done["attempts"]) >= 2
        assert {r.event_id for r in sent} == {logged["id"]}
    finally:
        dispose_settings(settings)


def test_a_private_address_is_refused_without_a_call(api: Api) -> None:
    """The shared test server runs with allow_private_networks off (the default)."""
    from tests.chat_helpers import make_agent as plain_agent, make_chat as plain_chat

    agent = plain_agent(api, webhook_url="http://127.0.0.1:9/hook", webhook_events=["chat_started"])
    chat = plain_chat(api, agent)
    [started] = deliveries(api, chatId=chat["chatId"])
    failed = settled(api, started["id"], "failed")
    [attempt] = failed["attempts"]
    assert attempt["status_code"] is None
    assert attempt["error"] == "refused: not a public address"
