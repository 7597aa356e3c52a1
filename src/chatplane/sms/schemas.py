"""Phone numbers and SMS chats: the shapes of the API (snake_case, as Retell's)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from pydantic import Field, model_validator

from chatplane.chats.schemas import StringMap
from chatplane.errors import FieldError
from chatplane.schemas import MAX_VERSION, HttpUrlStr, StrictModel, Variables, WorkspaceId, partial_model

E164 = Annotated[
    str,
    Field(
        pattern=r"^\+[1-9][0-9]{1,14}$",
        description="E.164: `+`, the country code, then the number, no spaces.",
        examples=["+14155550100"],
    ),
]
AccountSid = Annotated[str, Field(pattern=r"^AC[0-9a-fA-F]{32}$", description="The Twilio account the number is in.")]
AuthToken = Annotated[
    str,
    Field(min_length=8, max_length=256, description="The account's auth token. Stored encrypted; never returned."),
]
WEIGHT_TOLERANCE = 1e-6


class SmsAgent(StrictModel):
    agent_id: str = Field(min_length=1, max_length=64)
    weight: float = Field(gt=0, le=1, description="Chance of being picked; the weights of a list add up to 1.")
    agent_version: int | None = Field(
        default=None, ge=1, le=MAX_VERSION, description="Run this version; the latest if unset."
    )


def _check_weights(agents: list[SmsAgent], field: str) -> None:
    if not agents:
        return
    total = sum(agent.weight for agent in agents)
    if abs(total - 1) > WEIGHT_TOLERANCE:
        raise FieldError(field, f"weights must add up to 1 (these add up to {total:g})")
    seen: set[tuple[str, int | None]] = set()
    for index, agent in enumerate(agents):
        key = (agent.agent_id, agent.agent_version)
        if key in seen:
            raise FieldError(f"{field}[{index}].agent_id", f"agent {agent.agent_id} is listed twice")
        seen.add(key)


class PhoneNumberConfig(StrictModel):
    nickname: str | None = Field(default=None, max_length=200, description="For your reference only.")
    inbound_sms_agents: list[SmsAgent] = Field(
        default_factory=list,
        description="Who answers a text that starts a chat: one is picked by weight. "
        "Empty: only an `inbound_sms_webhook_url` can accept a text.",
    )
    outbound_sms_agents: list[SmsAgent] = Field(
        default_factory=list,
        description="Who texts first from `POST /api/chats/sms` without `override_agent_id`: one is picked by weight.",
    )
    inbound_sms_webhook_url: HttpUrlStr | None = Field(
        default=None,
        description="Asked before an inbound text starts a chat (Retell's `chat_inbound`): it may pick "
        "the agent, add dynamic variables and metadata, or reject the text. See docs/sms.md.",
    )

    @model_validator(mode="after")
    def _weights(self) -> PhoneNumberConfig:
        _check_weights(self.inbound_sms_agents, "inbound_sms_agents")
        _check_weights(self.outbound_sms_agents, "outbound_sms_agents")
        return self


class PhoneNumberCreate(PhoneNumberConfig):
    workspace_id: WorkspaceId
    phone_number: E164
    twilio_account_sid: AccountSid
    twilio_auth_token: AuthToken


class PhoneNumberUpdate(partial_model(PhoneNumberConfig, "PhoneNumberPatch")):  # type: ignore[misc]
    workspace_id: WorkspaceId
    twilio_account_sid: AccountSid | None = None
    twilio_auth_token: AuthToken | None = None


class PhoneNumberOut(PhoneNumberConfig):
    """A phone number as the API shows it: its Twilio credentials are never returned."""

    phone_number: E164
    phone_number_type: Literal["custom"] = Field(
        default="custom", description="Always `custom`: a number of your own Twilio account."
    )
    created_at: datetime
    updated_at: datetime
    last_modification_timestamp: int = Field(description="`updated_at` in Unix milliseconds.")


class CreateSmsChatRequest(StrictModel):
    workspace_id: WorkspaceId
    from_number: E164 = Field(description="One of the workspace's phone numbers.")
    to_number: E164 = Field(description="Who the agent texts.")
    override_agent_id: str | None = Field(
        default=None, min_length=1, max_length=64,
        description="Use this agent rather than one of the number's `outbound_sms_agents`.",
    )
    override_agent_version: int | None = Field(default=None, ge=1, le=MAX_VERSION)
    metadata: StringMap = Field(default_factory=dict)
    uponai_dynamic_variables: Variables = Field(default_factory=dict)
