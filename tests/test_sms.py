"""SMS through Twilio: phone numbers, inbound and outbound text chats.

Twilio is played by a local HTTP server standing in for its REST API
(``tests/twilio_fake.py``; the server's ``twilio`` client is pointed at it),
and inbound webhooks are signed with the ``twilio`` package's own
``RequestValidator``. These tests run their own server per backend (like the
webhook tests), with fast job polling and a short burst window.
"""

from __future__ import annotations

import asyncio
import json
import random
import secrets
import socket
import threading
import time
import uuid
from collections import Counter, deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography.fernet import Fernet
from sqlalchemy import select, text
from twilio.request_validator import RequestValidator

from chatplane import jobs, signing
from chatplane.chats import idle
from chatplane.db import utcnow
from chatplane.ids import new_id
from chatplane.models import Job, PhoneNumber, SmsMessage
from chatplane.settings import JobSettings, SmsSettings
from chatplane.sms.inbound import ask_inbound_webhook
from chatplane.sms.service import SEND_JOB, pick_agent
from chatplane.sms.twilio import TwilioMaybeSent, TwilioUnavailable, send_sms, split_text
from chatplane.testing import Fail, Reply, ScriptedModel
from tests.chat_helpers import make_agent, make_llm
from tests.conftest import (
    SCRIPTED_NO_RETRY,
    Api,
    Backend,
    assert_error,
    scripted_providers,
    served,
    tenant,
)
from tests.twilio_fake import Failure, FakeTwilio
from tests.webhook_receiver import eventually

PUBLIC_URL = "https://sms.chatplane.test"  # what Twilio is told; the signature covers it
HOOK = "/webhooks/twilio/sms"
BURST_S = 0.6
TWILIO_TIMEOUT_S = 3.0  # what the server waits for Twilio's answer here


# --- the server, Twilio, and the people texting --------------------------------


@pytest.fixture(scope="module")
def twilio() -> Iterator[FakeTwilio]:
    with FakeTwilio() as fake:
        yield fake


@pytest.fixture(scope="module")
def sms(backend: Backend, tmp_path_factory: pytest.TempPathFactory, twilio: FakeTwilio,
        scripted_model: ScriptedModel) -> Iterator[Backend]:
    with served(
        backend.kind, tmp_path_factory.mktemp(f"sms-{backend.kind}"),
        providers=scripted_providers(scripted_model),
        jobs=JobSettings(poll_s=0.05, backoff_base_s=0.05, backoff_cap_s=0.2),
        public_url=PUBLIC_URL,
        allow_private_networks=True,  # the inbound webhook receivers are on loopback
        sms=SmsSettings(twilio_api_base_url=twilio.url, burst_window_s=BURST_S, inbound_webhook_timeout_s=2,
                        twilio_timeout_s=TWILIO_TIMEOUT_S),
    ) as served_backend:
        yield served_backend


@pytest.fixture
def mine(sms: Backend) -> Iterator[Api]:
    with tenant(sms, "mine") as client:
        yield client


@pytest.fixture
def theirs(sms: Backend) -> Iterator[Api]:
    with tenant(sms, "theirs") as client:
        yield client


def a_number() -> str:
    return "+1555" + "".join(random.choices("0123456789", k=7))


@dataclass
class Number:
    """A phone number configured through the API, and its Twilio credentials."""

    number: str
    account_sid: str
    token: str
    body: dict[str, Any]


def make_number(api: Api, agents: list[dict[str, Any]] | None = None, **fields: Any) -> Number:
    number, sid, token = a_number(), "AC" + secrets.token_hex(16), secrets.token_hex(16)
    body = {"phone_number": number, "twilio_account_sid": sid, "twilio_auth_token": token}
    if agents is not None:
        body["inbound_sms_agents"] = [{"agent_id": a["agent_id"], "weight": 1 / len(agents)} for a in agents]
    response = api.post("/api/phone-numbers", {**body, **fields})
    assert response.status_code == 201, response.text
    return Number(number, sid, token, response.json())


def sms_agent(api: Api, **llm_fields: Any) -> dict[str, Any]:
    return make_agent(api, make_llm(api, **llm_fields))


def incoming(number: Number, user: str, body: str, *, sid: str | None = None,
             media: list[tuple[str, str]] = ()) -> dict[str, str]:
    """The form Twilio posts for a message from ``user`` to our ``number``."""
    sid = sid or "SM" + uuid.uuid4().hex
    params = {
        "ToCountry": "US", "SmsMessageSid": sid, "NumMedia": str(len(media)), "SmsSid": sid,
        "SmsStatus": "received", "Body": body, "To": number.number, "From": user, "MessageSid": sid,
        "AccountSid": number.account_sid, "NumSegments": "1", "ApiVersion": "2010-04-01",
    }
    for index, (url, content_type) in enumerate(media):
        params[f"MediaUrl{index}"], params[f"MediaContentType{index}"] = url, content_type
    return params


def twilio_signature(token: str, params: dict[str, str], url: str = PUBLIC_URL + HOOK) -> str:
    return RequestValidator(token).compute_signature(url, params)


def text_in(sms: Backend, number: Number, params: dict[str, str], *,
            signature: str | None = "sign", token: str | None = None) -> httpx.Response:
    """POST Twilio's webhook, signed as Twilio would (or with the given signature, or none)."""
    if signature == "sign":
        signature = twilio_signature(token or number.token, params)
    headers = {"X-Twilio-Signature": signature} if signature is not None else {}
    return httpx.post(sms.url + HOOK, data=params, headers=headers, timeout=10)


def say_by_sms(sms: Backend, number: Number, user: str, body: str, **kw: Any) -> dict[str, str]:
    params = incoming(number, user, body, **kw)
    response = text_in(sms, number, params)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/xml")
    assert "<Response></Response>" in response.text
    return params


def texts_to(twilio: FakeTwilio, user: str, count: int = 1) -> list:
    return eventually(lambda: t if len(t := twilio.sent_to(user)) >= count else None,
                      what=f"{count} text(s) to {user}")


def sms_chats(api: Api) -> list[dict[str, Any]]:
    response = api.get("/api/chats", type="sms_chat")
    assert response.status_code == 200, response.text
    return response.json()["data"]


def the_chat(api: Api, chat_id: str) -> dict[str, Any]:
    response = api.get(f"/api/chats/{chat_id}")
    assert response.status_code == 200, response.text
    return response.json()


def sms_log(sms: Backend, **where: Any) -> list[SmsMessage]:
    async def work(session):  # type: ignore[no-untyped-def]
        query = select(SmsMessage).order_by(SmsMessage.created_at, SmsMessage.id)
        for name, value in where.items():
            query = query.where(getattr(SmsMessage, name) == value)
        return list((await session.scalars(query)).all())

    return sms.run(work)


def requests_with(model: ScriptedModel, token: str) -> list[dict[str, Any]]:
    return [r for r in list(model.requests) if token in json.dumps(r["messages"])]


# --- the phone-number resource ---------------------------------------------------


def test_phone_number_crud_never_returns_the_credentials(mine: Api) -> None:
    first, second = sms_agent(mine), sms_agent(mine)
    number = make_number(
        mine, nickname="support line",
        inbound_sms_agents=[{"agent_id": first["agent_id"], "weight": 0.7},
                            {"agent_id": second["agent_id"], "weight": 0.3, "agent_version": 1}],
        outbound_sms_agents=[{"agent_id": second["agent_id"], "weight": 1}],
        inbound_sms_webhook_url="https://example.com/inbound",
    )
    created = number.body
    assert created["phone_number"] == number.number and created["nickname"] == "support line"
    assert created["inbound_sms_agents"][1] == {"agent_id": second["agent_id"], "weight": 0.3, "agent_version": 1}
    assert created["inbound_sms_webhook_url"] == "https://example.com/inbound"
    for response in (created, mine.get(f"/api/phone-numbers/{number.number}").json(),
                     mine.get("/api/phone-numbers").json()["data"][0]):
        text = json.dumps(response)
        assert number.token not in text and number.account_sid not in text
        assert "twilio_auth_token" not in response and "twilio_account_sid" not in response

    # "+" may also come percent-encoded.
    assert mine.get(f"/api/phone-numbers/%2B{number.number[1:]}").json()["phone_number"] == number.number

    patched = mine.patch(f"/api/phone-numbers/{number.number}", {
        "nickname": "sales", "inbound_sms_webhook_url": None, "twilio_auth_token": "a-new-token-123",
    })
    assert patched.status_code == 200, patched.text
    assert patched.json()["nickname"] == "sales" and patched.json()["inbound_sms_webhook_url"] is None
    assert patched.json()["inbound_sms_agents"] == created["inbound_sms_agents"]  # untouched
    assert "a-new-token-123" not in patched.text

    other = make_number(mine)
    listed = mine.get("/api/phone-numbers", limit=1, sortOrder="ascending").json()
    assert len(listed["data"]) == 1 and listed["pagination_key"]
    rest = mine.get("/api/phone-numbers", limit=1, sortOrder="ascending", paginationKey=listed["pagination_key"])
    assert {listed["data"][0]["phone_number"], rest.json()["data"][0]["phone_number"]} == {number.number, other.number}

    assert mine.delete(f"/api/phone-numbers/{number.number}").status_code == 204
    assert_error(mine.get(f"/api/phone-numbers/{number.number}"), 404, "phone_number_not_found")
    assert_error(mine.delete(f"/api/phone-numbers/{number.number}"), 404, "phone_number_not_found")


def test_phone_number_errors(mine: Api, theirs: Api, sms: Backend) -> None:
    agent = sms_agent(mine)
    number = make_number(mine, [agent])
    path = f"/api/phone-numbers/{number.number}"
    good = {"phone_number": a_number(), "twilio_account_sid": "AC" + "0" * 32, "twilio_auth_token": "x" * 32}

    # A wrong key, or none.
    wrong = httpx.Client(base_url=sms.url, headers={"Authorization": "Bearer cp_wrong"})
    assert_error(wrong.get(path, params={"workspaceId": mine.ws}), 401, "unauthorized")
    assert_error(wrong.post("/api/phone-numbers", json={"workspaceId": mine.ws, **good}), 401, "unauthorized")
    assert_error(httpx.delete(sms.url + path, params={"workspaceId": mine.ws}), 401, "unauthorized")

    # Another workspace's number is missing, whichever workspace is named.
    assert_error(theirs.get(path), 404, "phone_number_not_found")
    assert_error(theirs.patch(path, {"nickname": "mine now"}), 404, "phone_number_not_found")
    assert_error(theirs.delete(path), 404, "phone_number_not_found")
    assert_error(theirs.get(path, workspaceId=mine.ws), 404, "workspace_not_found")
    assert_error(theirs.post("/api/phone-numbers", {**good, "workspaceId": mine.ws}), 404, "workspace_not_found")
    # Nor may its agents be used.
    assert_error(theirs.post("/api/phone-numbers", {**good, "inbound_sms_agents": [
        {"agent_id": agent["agent_id"], "weight": 1}]}), 422, "validation_error", "inbound_sms_agents[0].agent_id")

    # Unknown ids.
    assert_error(mine.get("/api/phone-numbers/+15550009999"), 404, "phone_number_not_found")
    assert_error(mine.patch("/api/phone-numbers/not-a-number", {}), 404, "phone_number_not_found")

    # Malformed bodies name the field.
    cases = [
        ({**good, "phone_number": "555-0100"}, "phone_number"),
        ({**good, "phone_number": "+0123"}, "phone_number"),
        ({**good, "twilio_account_sid": "SK123"}, "twilio_account_sid"),
        ({k: v for k, v in good.items() if k != "twilio_auth_token"}, "twilio_auth_token"),
        ({**good, "inbound_sms_agents": [{"agent_id": agent["agent_id"], "weight": 0.5}]}, "inbound_sms_agents"),
        ({**good, "outbound_sms_agents": [{"agent_id": agent["agent_id"], "weight": 1.5}]},
         "outbound_sms_agents[0].weight"),
        ({**good, "inbound_sms_agents": [{"agent_id": agent["agent_id"], "weight": 0.5},
                                         {"agent_id": agent["agent_id"], "weight": 0.5}]},
         "inbound_sms_agents[1].agent_id"),
        ({**good, "inbound_sms_agents": [{"agent_id": "chat_agent_nope", "weight": 1}]},
         "inbound_sms_agents[0].agent_id"),
        ({**good, "inbound_sms_webhook_url": "ftp://example.com"}, "inbound_sms_webhook_url"),
        ({**good, "colour": "blue"}, "colour"),
    ]
    for body, field in cases:
        assert_error(mine.post("/api/phone-numbers", body), 422, "validation_error", field)
    assert_error(mine.patch(path, {"outbound_sms_agents": [{"agent_id": agent["agent_id"], "weight": 0.2}]}),
                 422, "validation_error", "outbound_sms_agents")
    assert_error(mine.patch(path, {"twilio_account_sid": "nope"}), 422, "validation_error", "twilio_account_sid")
    headers = {"Authorization": f"Bearer {mine.key}", "content-type": "application/json"}
    assert_error(httpx.post(sms.url + "/api/phone-numbers", content=b"{", headers=headers), 422, "validation_error")

    # Oversized.
    huge = {**good, "nickname": "x" * (sms.settings.server.max_body_bytes + 1)}
    assert_error(mine.post("/api/phone-numbers", huge), 413, "payload_too_large")

    # A number is configured once, in one workspace.
    assert_error(mine.post("/api/phone-numbers", {**good, "phone_number": number.number}), 409, "phone_number_taken")
    assert_error(theirs.post("/api/phone-numbers", {**good, "phone_number": number.number}), 409,
                 "phone_number_taken")


def test_the_auth_token_is_stored_encrypted(mine: Api, sms: Backend) -> None:
    number = make_number(mine)

    async def stored(session):  # type: ignore[no-untyped-def]
        return await session.get(PhoneNumber, number.number)

    row = sms.run(stored)
    assert row.twilio_auth_token != number.token and number.token not in row.twilio_auth_token
    # With no encryption_key configured, the key is made on first use beside the database.
    key = (sms.settings.data_dir / "encryption.key").read_bytes().strip()
    assert Fernet(key).decrypt(row.twilio_auth_token.encode()).decode() == number.token


def test_an_agent_is_picked_by_weight() -> None:
    agents = [{"agent_id": "a", "weight": 0.8}, {"agent_id": "b", "weight": 0.2}]
    rng = random.Random(7)
    picks = Counter(pick_agent(agents, rng=rng)["agent_id"] for _ in range(10_000))
    assert 7700 < picks["a"] < 8300 and picks["a"] + picks["b"] == 10_000
    assert pick_agent([]) is None


def test_long_replies_are_split_between_words() -> None:
    text = ("word " * 700).strip()  # 3499 characters
    parts = split_text(text)
    assert len(parts) == 3 and all(len(p) <= 1600 for p in parts)
    assert " ".join(parts) == text


# --- inbound ----------------------------------------------------------------------


def test_a_text_starts_a_chat_and_the_reply_goes_back_through_twilio(
    mine: Api, sms: Backend, twilio: FakeTwilio, model: ScriptedModel
) -> None:
    agent = sms_agent(mine, general_prompt="You text {{user_number}} from {{agent_number}}.")
    number = make_number(mine, [agent])
    user, token = a_number(), uuid.uuid4().hex
    model.push(Reply("We open at nine.", when=token, delay_s=2.5))
    started = time.monotonic()
    say_by_sms(sms, number, user, f"When do you open? {token}")
    assert time.monotonic() - started < 2.0  # Twilio is answered without waiting for the model

    [sent] = texts_to(twilio, user)
    assert (sent.body, sent.from_, sent.to) == ("We open at nine.", number.number, user)
    assert (sent.account_sid, sent.username, sent.password) == (number.account_sid, number.account_sid, number.token)
    [chat] = sms_chats(mine)
    assert chat["type"] == "sms_chat" and chat["agentId"] == agent["agent_id"] and chat["status"] == "ongoing"
    [request] = requests_with(model, token)
    assert request["messages"][0] == {"role": "system", "content": f"You text {user} from {number.number}."}

    # The next text continues the same chat.
    second = uuid.uuid4().hex
    model.push(Reply("Until five.", when=second))
    say_by_sms(sms, number, user, f"And close? {second}")
    assert texts_to(twilio, user, 2)[1].body == "Until five."
    [same] = sms_chats(mine)
    assert same["chatId"] == chat["chatId"]
    messages = the_chat(mine, chat["chatId"])["messages"]
    assert [(m["role"], m["content"]) for m in messages] == [
        ("user", f"When do you open? {token}"), ("assistant", "We open at nine."),
        ("user", f"And close? {second}"), ("assistant", "Until five."),
    ]
    sent_log = sms_log(sms, user_number=user, direction="outbound")
    assert [s.status for s in sent_log] == ["sent", "sent"] and all(s.twilio_sid for s in sent_log)
    assert [s.status for s in sms_log(sms, user_number=user, direction="inbound")] == ["answered", "answered"]


def test_bad_missing_and_misdirected_signatures_are_403_and_nothing_is_kept(
    mine: Api, sms: Backend, twilio: FakeTwilio
) -> None:
    number = make_number(mine, [sms_agent(mine)])
    user = a_number()
    params = incoming(number, user, "hello")
    attempts = [
        text_in(sms, number, params, signature=None),  # missing
        text_in(sms, number, params, signature=""),
        text_in(sms, number, params, token="not-the-token"),  # signed with another token
        text_in(sms, number, params, signature=twilio_signature(number.token, params, sms.url + HOOK)),  # not our public URL
        text_in(sms, number, {**params, "Body": "tampered"}, signature=twilio_signature(number.token, params)),
        text_in(sms, number, {**params, "AccountSid": "AC" + "1" * 32}),  # another account's message
    ]
    stranger = Number(a_number(), number.account_sid, number.token, {})
    attempts.append(text_in(sms, stranger, incoming(stranger, user, "hello")))  # a number not configured here
    for response in attempts:
        assert_error(response, 403, "invalid_signature")
    time.sleep(BURST_S + 0.3)
    assert sms_log(sms, user_number=user) == [] and sms_chats(mine) == [] and twilio.sent_to(user) == []


def test_a_replayed_message_sid_makes_no_second_turn(
    mine: Api, sms: Backend, twilio: FakeTwilio, model: ScriptedModel
) -> None:
    number = make_number(mine, [sms_agent(mine)])
    user, token = a_number(), uuid.uuid4().hex
    model.push(Reply("Once.", when=token), Reply("Twice!", when=token))
    params = say_by_sms(sms, number, user, f"hello {token}")
    # Twilio retrying: while the first is still waiting to be answered, and after.
    for wait in (lambda: None, lambda: texts_to(twilio, user)):
        wait()
        response = text_in(sms, number, params)
        assert response.status_code == 200 and "<Response></Response>" in response.text
    time.sleep(BURST_S + 0.5)
    assert [t.body for t in twilio.sent_to(user)] == ["Once."]
    assert len(requests_with(model, token)) == 1
    assert len(sms_log(sms, user_number=user, direction="inbound")) == 1


def test_a_burst_of_three_texts_is_answered_once_as_one_turn(
    mine: Api, sms: Backend, twilio: FakeTwilio, model: ScriptedModel
) -> None:
    number = make_number(mine, [sms_agent(mine)])
    user, token = a_number(), uuid.uuid4().hex
    model.push(Reply("Got all three.", when=token))
    for part in (f"hi {token}", "I need help", "with my order"):
        say_by_sms(sms, number, user, part)
    texts_to(twilio, user)
    time.sleep(BURST_S + 0.5)
    assert [t.body for t in twilio.sent_to(user)] == ["Got all three."]
    [request] = requests_with(model, token)
    assert request["messages"][-1] == {"role": "user", "content": f"hi {token}\nI need help\nwith my order"}
    [chat] = sms_chats(mine)
    assert [m["role"] for m in the_chat(mine, chat["chatId"])["messages"]] == ["user", "assistant"]


def test_mms_media_is_recorded_and_the_agent_is_told_it_cannot_read_it(
    mine: Api, sms: Backend, twilio: FakeTwilio, model: ScriptedModel
) -> None:
    number = make_number(mine, [sms_agent(mine)])
    user, token = a_number(), uuid.uuid4().hex
    model.push(Reply("I can't open pictures; what does it show?", when=token))
    media = [("https://api.twilio.com/2010-04-01/Accounts/AC1/Messages/MM1/Media/ME1", "image/jpeg")]
    say_by_sms(sms, number, user, f"look at this {token}", media=media)
    texts_to(twilio, user)
    [request] = requests_with(model, token)
    told = request["messages"][-1]["content"]
    assert told.startswith(f"look at this {token}\n[The user sent 1 attachment by MMS (image/jpeg).")
    assert "cannot see or open" in told
    [chat] = sms_chats(mine)
    user_message = the_chat(mine, chat["chatId"])["messages"][0]
    assert user_message["multimedia"] == [{"url": media[0][0], "content_type": "image/jpeg"}]
    [logged] = sms_log(sms, user_number=user, direction="inbound")
    assert logged.media == user_message["multimedia"]


def test_a_model_failure_texts_an_apology_and_leaves_the_chat_as_it_was(
    mine: Api, sms: Backend, twilio: FakeTwilio, model: ScriptedModel
) -> None:
    agent = sms_agent(mine, model=SCRIPTED_NO_RETRY, begin_message="Hi, this is Acme.")
    number = make_number(mine, [agent])
    user, token = a_number(), uuid.uuid4().hex
    model.push(Fail(500, "the model fell over"))  # the next turn's model call, whichever it is
    say_by_sms(sms, number, user, f"hello {token}")
    sent = texts_to(twilio, user, 2)
    assert [t.body for t in sent] == ["Hi, this is Acme.", sms.settings.sms.apology]
    [chat] = sms_chats(mine)
    assert [m["content"] for m in the_chat(mine, chat["chatId"])["messages"]] == ["Hi, this is Acme."]
    [failed] = sms_log(sms, user_number=user, direction="inbound")
    assert failed.status == "failed" and "provider" in failed.error

    # The chat is intact: the next text is an ordinary turn on it.
    again = uuid.uuid4().hex
    model.push(Reply("Back now. How can I help?", when=again))
    say_by_sms(sms, number, user, f"hello again {again}")
    assert texts_to(twilio, user, 3)[2].body == "Back now. How can I help?"
    assert [(m["role"], m["content"]) for m in the_chat(mine, chat["chatId"])["messages"]] == [
        ("assistant", "Hi, this is Acme."), ("user", f"hello again {again}"),
        ("assistant", "Back now. How can I help?"),
    ]


def test_a_nul_in_a_text_is_kept_as_u_fffd_not_a_500(
    mine: Api, sms: Backend, twilio: FakeTwilio, model: ScriptedModel
) -> None:
    number = make_number(mine, [sms_agent(mine)])
    user, token = a_number(), uuid.uuid4().hex
    model.push(Reply("Fine.", when=token))
    say_by_sms(sms, number, user, f"a\x00b {token}")
    texts_to(twilio, user)
    [logged] = sms_log(sms, user_number=user, direction="inbound")
    assert logged.body == f"a\ufffdb {token}"


def test_an_ended_chat_is_not_continued_a_new_one_starts(
    mine: Api, sms: Backend, twilio: FakeTwilio, model: ScriptedModel
) -> None:
    number = make_number(mine, [sms_agent(mine)])
    user = a_number()
    say_by_sms(sms, number, user, "first")
    texts_to(twilio, user)
    [first] = sms_chats(mine)
    assert mine.post(f"/api/chats/{first['chatId']}/end").status_code == 204
    say_by_sms(sms, number, user, "second")
    texts_to(twilio, user, 2)
    chats = sms_chats(mine)
    assert len(chats) == 2 and chats[0]["chatId"] != first["chatId"] and chats[0]["status"] == "ongoing"


def test_a_text_to_a_number_without_agents_is_rejected_quietly(
    mine: Api, sms: Backend, twilio: FakeTwilio
) -> None:
    number = make_number(mine)
    user = a_number()
    say_by_sms(sms, number, user, "anyone there?")
    eventually(lambda: [t.status for t in sms_log(sms, user_number=user)] == ["rejected"], what="rejection")
    assert sms_chats(mine) == [] and twilio.sent_to(user) == []


# --- the number's inbound webhook ---------------------------------------------------


class InboundHook:
    """A receiver for a number's ``inbound_sms_webhook_url``: answers each POST with the next scripted answer."""

    def __init__(self) -> None:
        self.requests: list[tuple[dict[str, str], bytes]] = []
        self.answers: deque[tuple[int, Any]] = deque()
        hook = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                raw = self.rfile.read(int(self.headers.get("content-length", "0")))
                hook.requests.append(({k.lower(): v for k, v in self.headers.items()}, raw))
                status, body = hook.answers.popleft() if hook.answers else (200, None)
                data = b"" if body is None else json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/inbound"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def hook() -> Iterator[InboundHook]:
    receiver = InboundHook()
    yield receiver
    receiver.close()


def webhook_key(api: Api) -> str:
    return api.http.get(f"/api/workspaces/{api.ws}/webhook-key").json()["webhook_key"]


def test_the_inbound_webhook_picks_the_agent_and_adds_variables(
    mine: Api, sms: Backend, twilio: FakeTwilio, model: ScriptedModel, hook: InboundHook
) -> None:
    default = sms_agent(mine)
    chosen = sms_agent(mine, begin_message="Hi {{name}}, this is {{agent_number}}.")
    number = make_number(mine, [default], inbound_sms_webhook_url=hook.url)
    hook.answers.append((200, {"chat_inbound": {
        "override_agent_id": chosen["agent_id"], "dynamic_variables": {"name": "Sam"}, "metadata": {"crm": "42"},
    }}))
    user = a_number()
    say_by_sms(sms, number, user, "hello")
    assert [t.body for t in texts_to(twilio, user, 2)] == [f"Hi Sam, this is {number.number}.", "ok"]
    [chat] = sms_chats(mine)
    assert chat["agentId"] == chosen["agent_id"]
    assert chat["uponai_dynamic_variables"] == {"name": "Sam"} and chat["metadata"] == {"crm": "42"}
    [(headers, raw)] = hook.requests
    assert json.loads(raw) == {"event": "chat_inbound", "chat_inbound": {
        "agent_id": default["agent_id"], "agent_version": None, "from_number": user, "to_number": number.number}}
    assert signing.verify(raw.decode(), webhook_key(mine), headers["x-retell-signature"])


def test_the_inbound_webhook_may_reject_a_text(
    mine: Api, sms: Backend, twilio: FakeTwilio, hook: InboundHook
) -> None:
    # As Retell: with no inbound agent on the number, a text the webhook names no agent for is rejected.
    number = make_number(mine, inbound_sms_webhook_url=hook.url)
    hook.answers.append((200, {"chat_inbound": {}}))
    user = a_number()
    say_by_sms(sms, number, user, "spam spam spam")
    eventually(lambda: [t.status for t in sms_log(sms, user_number=user)] == ["rejected"], what="rejection")
    assert sms_chats(mine) == [] and twilio.sent_to(user) == [] and len(hook.requests) == 1


def test_a_failing_inbound_webhook_falls_back_to_the_numbers_agents(
    mine: Api, sms: Backend, twilio: FakeTwilio, hook: InboundHook
) -> None:
    agent = sms_agent(mine)
    number = make_number(mine, [agent], inbound_sms_webhook_url=hook.url)
    hook.answers.extend([(500, None), (200, "not an object"), (503, None)])
    user = a_number()
    say_by_sms(sms, number, user, "hello")
    texts_to(twilio, user)
    assert len(hook.requests) == 3
    [chat] = sms_chats(mine)
    assert chat["agentId"] == agent["agent_id"]


def test_the_inbound_webhook_may_not_reach_private_addresses_unless_allowed(hook: InboundHook) -> None:
    import asyncio

    async def ask(allow_private: bool):  # type: ignore[no-untyped-def]
        async with httpx.AsyncClient() as http:
            return await ask_inbound_webhook(
                http, url=hook.url, key="k", default_agent=None, agent_number="+15550000000",
                user_number="+15550000001", timeout_s=2, allow_private=allow_private,
            )

    hook.answers.append((200, {"chat_inbound": {"metadata": {"secret": "internal"}}}))
    assert asyncio.run(ask(False)) is None and hook.requests == []
    assert asyncio.run(ask(True)).metadata == {"secret": "internal"} and len(hook.requests) == 1


# --- outbound -----------------------------------------------------------------------


def test_an_outbound_sms_chat_texts_the_begin_message_and_takes_the_reply(
    mine: Api, sms: Backend, twilio: FakeTwilio, model: ScriptedModel
) -> None:
    agent = sms_agent(mine, begin_message="Hi {{name}}! Your order shipped. Reply here to {{agent_number}}.")
    number = make_number(mine, outbound_sms_agents=[{"agent_id": agent["agent_id"], "weight": 1}])
    user = a_number()
    response = mine.post("/api/chats/sms", {
        "from_number": number.number, "to_number": user, "metadata": {"order": "A1"},
        "uponai_dynamic_variables": {"name": "Sam"},
    })
    assert response.status_code == 201, response.text
    chat = response.json()
    begin = f"Hi Sam! Your order shipped. Reply here to {number.number}."
    assert chat["type"] == "sms_chat" and chat["agentId"] == agent["agent_id"] and chat["metadata"] == {"order": "A1"}
    assert [m["content"] for m in chat["messages"]] == [begin]
    [sent] = texts_to(twilio, user)
    assert (sent.body, sent.from_, sent.to) == (begin, number.number, user)

    token = uuid.uuid4().hex
    model.push(Reply("You're welcome.", when=token))
    say_by_sms(sms, number, user, f"thanks {token}")
    assert texts_to(twilio, user, 2)[1].body == "You're welcome."
    assert [m["role"] for m in the_chat(mine, chat["chatId"])["messages"]] == ["assistant", "user", "assistant"]
    assert len(sms_chats(mine)) == 1


def test_outbound_sms_chat_errors(mine: Api, theirs: Api, sms: Backend) -> None:
    with_begin = sms_agent(mine, begin_message="Hello!")
    silent = sms_agent(mine)
    number = make_number(mine)
    user = a_number()
    body = {"from_number": number.number, "to_number": user}
    assert_error(httpx.post(sms.url + "/api/chats/sms", json={"workspaceId": mine.ws, **body}), 401, "unauthorized")
    assert_error(theirs.post("/api/chats/sms", body), 404, "phone_number_not_found")
    assert_error(theirs.post("/api/chats/sms", {**body, "workspaceId": mine.ws}), 404, "workspace_not_found")
    assert_error(mine.post("/api/chats/sms", {**body, "from_number": a_number()}), 404, "phone_number_not_found")
    assert_error(mine.post("/api/chats/sms", {**body, "to_number": "12345"}), 422, "validation_error", "to_number")
    assert_error(mine.post("/api/chats/sms", {"to_number": user}), 422, "validation_error", "from_number")
    assert_error(mine.post("/api/chats/sms", body), 422, "validation_error", "override_agent_id")
    assert_error(mine.post("/api/chats/sms", {**body, "override_agent_id": "chat_agent_nope"}), 404,
                 "chat_agent_not_found")
    assert_error(mine.post("/api/chats/sms", {**body, "override_agent_id": silent["agent_id"]}), 409,
                 "begin_message_missing")
    huge = {**body, "metadata": {"x": "y" * (sms.settings.server.max_body_bytes + 1)}}
    assert_error(mine.post("/api/chats/sms", huge), 413, "payload_too_large")
    assert sms_chats(mine) == []  # nothing of the refused ones was kept

    started = mine.post("/api/chats/sms", {**body, "override_agent_id": with_begin["agent_id"]})
    assert started.status_code == 201, started.text
    assert_error(mine.post("/api/chats/sms", {**body, "override_agent_id": with_begin["agent_id"]}), 409,
                 "sms_chat_ongoing")


# --- SMS chats in the rest of the life of a chat ---------------------------------------


def test_an_idle_sms_chat_is_closed_by_text_then_analysed_and_costed(
    mine: Api, sms: Backend, twilio: FakeTwilio, model: ScriptedModel
) -> None:
    agent = make_agent(mine, make_llm(mine), end_chat_after_silence_ms=120_000,
                       auto_close_message="Closing this chat. Text us any time!")
    number = make_number(mine, [agent])
    user, token = a_number(), uuid.uuid4().hex
    model.push(Reply("Sure.", when=token, prompt_tokens=1000, completion_tokens=100))
    say_by_sms(sms, number, user, f"hi {token}")
    texts_to(twilio, user)
    [chat] = sms_chats(mine)

    later = utcnow() + timedelta(seconds=121)
    queued = sms.server.call(lambda services: idle.queue_idle_chats(services, now=later))
    assert queued >= 1
    assert texts_to(twilio, user, 2)[1].body == "Closing this chat. Text us any time!"
    ended = eventually(lambda: c if (c := the_chat(mine, chat["chatId"]))["chatAnalysis"] else None,
                       what="the analysis of the closed chat")
    assert ended["status"] == "ended" and ended["chatCost"]["combinedCost"] > 0
    assert ended["messages"][-1]["content"] == "Closing this chat. Text us any time!"


# --- Twilio failing ---------------------------------------------------------------------


def test_twilio_failures_are_retried_and_refusals_are_not(
    mine: Api, sms: Backend, twilio: FakeTwilio
) -> None:
    number = make_number(mine, [sms_agent(mine)])
    flaky, refused = a_number(), a_number()
    twilio.fail(flaky, Failure(503, 20503, "busy"), Failure(500, 20500, "oops"))
    say_by_sms(sms, number, flaky, "hello")
    texts_to(twilio, flaky)
    eventually(lambda: [t.status for t in sms_log(sms, user_number=flaky, direction="outbound")] == ["sent"],
               what="the retried text to be sent")

    twilio.fail(refused, Failure(400, 21211, "The 'To' number is not a valid phone number."))
    say_by_sms(sms, number, refused, "hello")
    [failed] = eventually(lambda: [t for t in sms_log(sms, user_number=refused, direction="outbound")
                                   if t.status == "failed"], what="the refused text")
    assert "21211" in failed.error and twilio.sent_to(refused) == []


def test_a_text_twilio_took_without_answering_in_time_is_never_sent_again(
    mine: Api, sms: Backend, twilio: FakeTwilio
) -> None:
    """A read timeout: the request went out, Twilio may have taken it. Retrying
    could text the person twice, so the text fails, saying why, and the job
    does not send it again."""
    number = make_number(mine, [sms_agent(mine)])
    user = a_number()
    twilio.stall(user, TWILIO_TIMEOUT_S + 2)
    say_by_sms(sms, number, user, "hello")
    text = eventually(lambda: sms_log(sms, user_number=user, direction="outbound") and settled(sms, user), timeout_s=30, what="the text's jobs to finish")
    assert text.status == "failed" and "may have gone out" in text.error, text.error
    assert len(twilio.sent_to(user)) == 1


def test_twilio_unreachable_is_retried_and_no_answer_is_not(tmp_path: Path) -> None:
    """Through real sockets: a refused connection never reached Twilio (retry);
    a server that takes the request and never answers may have sent it (no retry)."""
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    refused_port = closed.getsockname()[1]
    closed.close()
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen()
    try:
        def attempt(port: int) -> None:
            settings = SmsSettings(twilio_api_base_url=f"http://127.0.0.1:{port}", twilio_timeout_s=0.5)
            asyncio.run(send_sms(settings, account_sid="AC" + "0" * 32, auth_token="t" * 32,
                                 to="+15550100000", from_="+15550100001", body="hi"))

        with pytest.raises(TwilioUnavailable, match="could not be reached"):
            attempt(refused_port)
        with pytest.raises(TwilioMaybeSent, match="may have gone out"):
            attempt(silent.getsockname()[1])
    finally:
        silent.close()


def outbound_texting(api: Api) -> tuple[Number, str]:
    """A number whose outbound chat texts one begin message, and a new person to text."""
    agent = sms_agent(api, begin_message=f"Your code is {uuid.uuid4().hex[:6]}.")
    return make_number(api, outbound_sms_agents=[{"agent_id": agent["agent_id"], "weight": 1}]), a_number()


def text_first(api: Api, number: Number, user: str) -> None:
    response = api.post("/api/chats/sms", {"from_number": number.number, "to_number": user})
    assert response.status_code == 201, response.text


def settled(sms: Backend, user: str) -> SmsMessage:
    """The one text to ``user`` once every job about it has finished (its retries included)."""

    async def work(session):  # type: ignore[no-untyped-def]
        query = select(SmsMessage).where(SmsMessage.user_number == user, SmsMessage.direction == "outbound")
        [text_out] = (await session.scalars(query)).all()
        statuses = list((await session.scalars(select(Job.status).where(Job.dedupe_key == text_out.id))).all())
        if not statuses or any(s not in ("done", "failed") for s in statuses):
            return None
        # Read again: what the finished jobs wrote.
        return await session.scalar(query.execution_options(populate_existing=True))

    return eventually(lambda: sms.run(work), what=f"the jobs of the text to {user} to finish")


def test_a_message_sid_that_collides_is_kept_and_the_text_is_not_sent_again(
    mine: Api, sms: Backend, twilio: FakeTwilio
) -> None:
    number, user = outbound_texting(mine)
    # A SID already stored: an inbound text's (rejected: the number has no inbound agents).
    taken = "SM" + uuid.uuid4().hex
    say_by_sms(sms, number, a_number(), "hello?", sid=taken)
    eventually(lambda: sms_log(sms, twilio_sid=taken), what="the inbound text")
    twilio.answer_with(user, taken)

    text_first(mine, number, user)
    sent = settled(sms, user)
    assert len(twilio.sent_to(user)) == 1
    assert sent.status == "sent" and sent.sent_at is not None and sent.twilio_sid is None
    assert taken in sent.error and "already recorded" in sent.error
    [holder] = sms_log(sms, twilio_sid=taken)
    assert holder.direction == "inbound"  # untouched


@pytest.fixture
def blocked_bookkeeping(sms: Backend) -> Iterator[Callable[[str, bool], None]]:
    """A real failure of the write that records a text as sent: while a
    person's number is blocked, the database refuses to store a Twilio SID on
    their texts (a trigger)."""
    if sms.kind == "postgresql":
        setup = [
            "CREATE TABLE test_sid_blocks (user_number text PRIMARY KEY)",
            """CREATE FUNCTION test_block_sid() RETURNS trigger LANGUAGE plpgsql AS $$
               BEGIN
                 IF NEW.twilio_sid IS NOT NULL
                    AND EXISTS (SELECT 1 FROM test_sid_blocks WHERE user_number = NEW.user_number) THEN
                   RAISE EXCEPTION 'the test blocks this write';
                 END IF;
                 RETURN NEW;
               END $$""",
            """CREATE TRIGGER test_block_sid BEFORE UPDATE ON sms_messages
               FOR EACH ROW EXECUTE FUNCTION test_block_sid()""",
        ]
        teardown = ["DROP TRIGGER test_block_sid ON sms_messages", "DROP FUNCTION test_block_sid()",
                    "DROP TABLE test_sid_blocks"]
    else:
        setup = [
            "CREATE TABLE test_sid_blocks (user_number TEXT PRIMARY KEY)",
            """CREATE TRIGGER test_block_sid BEFORE UPDATE ON sms_messages
               WHEN NEW.twilio_sid IS NOT NULL
                    AND NEW.user_number IN (SELECT user_number FROM test_sid_blocks)
               BEGIN SELECT RAISE(ABORT, 'the test blocks this write'); END""",
        ]
        teardown = ["DROP TRIGGER test_block_sid", "DROP TABLE test_sid_blocks"]

    def execute(statements: list[str], **params: Any) -> None:
        async def work(session):  # type: ignore[no-untyped-def]
            for statement in statements:
                await session.execute(text(statement), params)

        sms.run(work)

    def block(user: str, blocked: bool) -> None:
        statement = ("INSERT INTO test_sid_blocks (user_number) VALUES (:user)" if blocked
                     else "DELETE FROM test_sid_blocks WHERE user_number = :user")
        execute([statement], user=user)

    execute(setup)
    try:
        yield block
    finally:
        execute(teardown)


def test_a_failed_bookkeeping_write_is_retried_and_the_text_is_not_sent_again(
    mine: Api, sms: Backend, twilio: FakeTwilio, blocked_bookkeeping: Callable[[str, bool], None]
) -> None:
    number, user = outbound_texting(mine)
    blocked_bookkeeping(user, True)
    text_first(mine, number, user)
    [accepted] = texts_to(twilio, user)
    time.sleep(0.4)  # a few retries' worth (backoff 0.05-0.2 s): every write fails meanwhile
    assert len(twilio.sent_to(user)) == 1
    # Readable meanwhile: handed to Twilio, its answer not yet recorded.
    [pending] = sms_log(sms, user_number=user, direction="outbound")
    assert (pending.status, pending.twilio_sid) == ("sending", None)

    blocked_bookkeeping(user, False)
    sent = eventually(lambda: t if (t := settled(sms, user)).twilio_sid else None, what="the SID recorded")
    assert (sent.status, sent.twilio_sid, sent.error) == ("sent", accepted.sid, None) and sent.sent_at
    assert len(twilio.sent_to(user)) == 1


def test_a_text_found_sending_on_a_retry_is_not_sent_again(mine: Api, sms: Backend, twilio: FakeTwilio) -> None:
    # The worker died after marking the text `sending`: Twilio may have taken it, or not.
    number, user = outbound_texting(mine)

    async def interrupted(session):  # type: ignore[no-untyped-def]
        row = SmsMessage(
            id=new_id("sms"), workspace_id=mine.ws, direction="outbound", agent_number=number.number,
            user_number=user, body="Did this go out?", media=[], status="sending", created_at=utcnow(),
        )
        session.add(row)
        await session.flush()
        await jobs.enqueue(session, SEND_JOB, {"sms_id": row.id}, dedupe_key=row.id, max_attempts=6)

    sms.run(interrupted)
    given_up = settled(sms, user)
    assert given_up.status == "failed" and "may have gone out" in given_up.error
    assert twilio.sent_to(user) == []


def test_deleting_an_sms_chat_deletes_its_texts(mine: Api, sms: Backend, twilio: FakeTwilio) -> None:
    number = make_number(mine, [sms_agent(mine)])
    user = a_number()
    say_by_sms(sms, number, user, "please forget me")
    texts_to(twilio, user)
    [chat] = sms_chats(mine)
    eventually(lambda: [t.status for t in sms_log(sms, user_number=user)] == ["answered", "sent"], what="the log")
    assert mine.delete(f"/api/chats/{chat['chatId']}").status_code == 204
    assert sms_log(sms, user_number=user) == []


def test_sms_variables_are_only_in_sms_chats(mine: Api) -> None:
    agent = sms_agent(mine, begin_message="Texting {{user_number}} from {{agent_number}}.")
    chat = mine.post("/api/chats", {"agent_id": agent["agent_id"]}).json()
    assert chat["messages"][0]["content"] == "Texting {{user_number}} from {{agent_number}}."
