"""Retell's phone-number routes and /create-sms-chat through the unchanged SDK,
against the fake Twilio of tests/test_sms.py: the Twilio credentials travel as
chatplane's documented extra fields, and never come back."""

from __future__ import annotations

import secrets

import pytest
from retell import ConflictError, NotFoundError, Retell, UnprocessableEntityError
from retell.types import ChatResponse, PhoneNumberResponse
from retell.types.phone_number_list_response import PhoneNumberListResponse

from tests.conftest import SCRIPTED, Api
from tests.retell.test_sdk import raw
from tests.test_sms import a_number, mine, sms, texts_to, theirs, twilio  # noqa: F401 - fixtures
from tests.twilio_fake import FakeTwilio


SIP = "sip.example.com"  # the SDK requires a SIP trunk; chatplane texts through Twilio instead


def _twilio() -> dict[str, str]:
    return {"twilio_account_sid": "AC" + secrets.token_hex(16), "twilio_auth_token": secrets.token_hex(16)}


def test_numbers_and_an_sms_chat_through_the_sdk(mine: Api, theirs: Api, twilio: FakeTwilio) -> None:  # noqa: F811
    retell = Retell(api_key=mine.key, base_url=mine.backend.url, max_retries=0)
    llm = retell.llm.create(model=SCRIPTED, begin_message="Hi {{name}}, your order shipped.")
    agent = retell.chat_agent.create(response_engine={"type": "retell-llm", "llm_id": llm.llm_id})
    number, user = a_number(), a_number()
    imported = raw(retell.phone_number.with_raw_response.import_(
        phone_number=number, nickname="support line", termination_uri=SIP,  # voice: not kept
        extra_body=_twilio(),
    ), PhoneNumberResponse)
    assert imported.phone_number == number and imported.phone_number_type == "custom"
    assert "twilio_auth_token" not in imported.to_dict() and imported.nickname == "support line"
    updated = raw(retell.phone_number.with_raw_response.update(
        number, outbound_sms_agents=[{"agent_id": agent.agent_id, "weight": 1}], inbound_agents=[],
    ), PhoneNumberResponse)
    assert [a.agent_id for a in updated.outbound_sms_agents] == [agent.agent_id]
    assert raw(retell.phone_number.with_raw_response.retrieve(number), PhoneNumberResponse).nickname == "support line"
    second = retell.phone_number.import_(phone_number=a_number(), termination_uri=SIP, extra_body=_twilio())
    listed = raw(retell.phone_number.with_raw_response.list(limit=1), PhoneNumberListResponse)
    assert listed.has_more and len(listed.items) == 1
    rest = retell.phone_number.list(limit=1, pagination_key=listed.pagination_key)
    assert {listed.items[0].phone_number, rest.items[0].phone_number} == {number, second.phone_number}

    chat = raw(retell.chat.with_raw_response.create_sms_chat(
        from_number=number, to_number=user, retell_llm_dynamic_variables={"name": "Sam"},
    ), ChatResponse)
    assert chat.chat_type == "sms_chat" and chat.agent_id == agent.agent_id
    assert [m.content for m in chat.message_with_tool_calls] == ["Hi Sam, your order shipped."]
    assert [t.body for t in texts_to(twilio, user)] == ["Hi Sam, your order shipped."]
    with pytest.raises(ConflictError):  # one ongoing chat between two numbers
        retell.chat.create_sms_chat(from_number=number, to_number=user)

    with pytest.raises(ConflictError):  # configured in a workspace already
        Retell(api_key=theirs.key, base_url=mine.backend.url, max_retries=0).phone_number.import_(
            phone_number=number, termination_uri=SIP, extra_body=_twilio())
    with pytest.raises(UnprocessableEntityError):  # no Twilio credentials: nothing to text with
        retell.phone_number.import_(phone_number=a_number(), termination_uri=SIP)
    with pytest.raises(UnprocessableEntityError):
        retell.phone_number.import_(phone_number="555-0100", termination_uri=SIP, extra_body=_twilio())
    with pytest.raises(NotFoundError):
        retell.chat.create_sms_chat(from_number=a_number(), to_number=user)
    retell.phone_number.delete(second.phone_number)
    with pytest.raises(NotFoundError):
        retell.phone_number.retrieve(second.phone_number)
