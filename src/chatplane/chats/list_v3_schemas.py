"""The request and answer shapes of ``POST /v3/list-chats`` (``list_v3``): the
filters of ``filter_criteria`` as the Retell SDK types them, and their bounds."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any, Literal, Union

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    ValidationError,
    ValidatorFunctionWrapHandler,
    WrapValidator,
    model_validator,
)

from chatplane.chats.schemas import ChatStatus, ChatSummary, ChatType
from chatplane.errors import FieldError
from chatplane.pagination import SortOrder
from chatplane.schemas import MAX_VERSION
from chatplane.text import bad_text


EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
MAX_MS = 253_402_300_799_999  # 9999-12-31T23:59:59.999Z, the last millisecond a datetime holds
START_ID_SLACK_MS = 60_000
NUMERIC_PATTERN = r"^-?[0-9]+(\.[0-9]+)?$"

UserSentiment = Literal["Positive", "Neutral", "Negative", "Unknown"]
StringOp = Literal["eq", "ne", "sw", "ew", "co"]
NumberOp = Literal["eq", "ne", "gt", "ge", "lt", "le"]

_KIND_OF_OP = {
    "sw": "string", "ew": "string", "co": "string",
    "gt": "number", "ge": "number", "lt": "number", "le": "number",
    "bt": "range", "in": "enum", "pr": "present", "np": "present",
}
_OP_ORDER = ["eq", "ne", "sw", "ew", "co", "gt", "ge", "lt", "le", "bt", "in", "pr", "np"]


def _no_nul(value: str) -> str:
    # Refused on every backend alike rather than a 500 from the driver.
    if bad_text(value) is not None:
        raise ValueError("must not contain U+0000 or a lone UTF-16 surrogate")
    return value


Text = Annotated[str, AfterValidator(_no_nul), Field(max_length=1000)]
FiniteFloat = Annotated[float, Field(allow_inf_nan=False)]
UnixMs = Annotated[
    float, Field(ge=0, le=MAX_MS, allow_inf_nan=False, description="Unix time in milliseconds.")
]
JsonKey = Annotated[
    str,
    AfterValidator(_no_nul),
    Field(
        min_length=1,
        max_length=256,
        description="The custom attribute's name, or the `customAnalysisData` entry's name.",
    ),
]


# --- request shapes ----------------------------------------------------------


class _Strict(BaseModel):
    # Strict: "5" is not a number and "true" not a boolean; a wrong type is a 422.
    model_config = ConfigDict(extra="forbid", strict=True)


_TYPE_DESCRIPTION = "The filter's kind; may be left out, as `op` implies it."


class ChatStringFilter(_Strict):
    op: StringOp = Field(description="eq: equal, ne: not equal, sw: starts with, ew: ends with, co: contains.")
    type: Literal["string"] = Field(default="string", description=_TYPE_DESCRIPTION)
    value: Text = Field(description="Compared case-sensitively.")


class ChatNumberFilter(_Strict):
    op: NumberOp = Field(
        description="eq: equal, ne: not equal, gt: greater than, ge: greater or equal, "
        "lt: less than, le: less or equal."
    )
    type: Literal["number"] = Field(default="number", description=_TYPE_DESCRIPTION)
    value: FiniteFloat


class _RangeCheck(_Strict):
    @model_validator(mode="after")
    def _ordered(self) -> Any:
        lower, upper = self.value  # type: ignore[attr-defined]
        if lower > upper:
            raise FieldError("value", "the lower bound is greater than the upper bound")
        return self


class ChatRangeFilter(_RangeCheck):
    op: Literal["bt"] = Field(description="bt: between, both bounds included.")
    type: Literal["range"] = Field(default="range", description=_TYPE_DESCRIPTION)
    value: list[FiniteFloat] = Field(min_length=2, max_length=2, description="[lower_bound, upper_bound].")


class ChatTimestampFilter(ChatNumberFilter):
    value: UnixMs


class ChatTimestampRangeFilter(ChatRangeFilter):
    value: list[UnixMs] = Field(  # type: ignore[assignment]
        min_length=2, max_length=2, description="[lower_bound, upper_bound], Unix milliseconds."
    )


class ChatEnumFilter(_Strict):
    op: Literal["in"] = Field(description="in: the value is one of the listed values.")
    type: Literal["enum"] = Field(default="enum", description=_TYPE_DESCRIPTION)
    value: list[Text] = Field(min_length=1, max_length=1000)


class ChatStatusFilter(ChatEnumFilter):
    value: list[ChatStatus] = Field(min_length=1, max_length=3)  # type: ignore[assignment]


class ChatTypeFilter(ChatEnumFilter):
    value: list[ChatType] = Field(min_length=1, max_length=3)  # type: ignore[assignment]


class ChatUserSentimentFilter(ChatEnumFilter):
    value: list[UserSentiment] = Field(min_length=1, max_length=4)  # type: ignore[assignment]


class ChatBooleanFilter(_Strict):
    op: Literal["eq"]
    type: Literal["boolean"] = Field(default="boolean", description=_TYPE_DESCRIPTION)
    value: bool


class ChatPresentFilter(_Strict):
    op: Literal["pr", "np"] = Field(description="pr: has a value, np: has none.")
    type: Literal["present"] = Field(default="present", description=_TYPE_DESCRIPTION)


class ChatKeyStringFilter(ChatStringFilter):
    key: JsonKey


class ChatKeyNumberFilter(ChatNumberFilter):
    key: JsonKey


class ChatKeyRangeFilter(ChatRangeFilter):
    key: JsonKey


class ChatKeyEnumFilter(ChatEnumFilter):
    key: JsonKey
    value: list[Text] = Field(min_length=1, max_length=100)


class ChatKeyBooleanFilter(ChatBooleanFilter):
    key: JsonKey


class ChatKeyPresentFilter(ChatPresentFilter):
    key: JsonKey


def _field_path(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _one_of(*variants: type[_Strict]) -> Any:
    """A union of filter kinds, told apart by ``type`` (or what ``op`` implies).

    Errors name the field inside the filter (``op``, ``value``, …), never the
    kind pydantic tried, so a client reads ``filter_criteria.chat_id.op``.
    """
    kinds: dict[str, type[_Strict]] = {v.model_fields["type"].default: v for v in variants}
    ops: list[str] = []
    for variant in variants:
        for op in variant.model_fields["op"].annotation.__args__:  # type: ignore[union-attr]
            if op not in ops:
                ops.append(op)
    ops.sort(key=_OP_ORDER.index)
    scalar_kinds = [k for k in ("string", "number", "boolean") if k in kinds]

    def kind_of(value: Any) -> str | None:
        if isinstance(value, BaseModel):
            return getattr(value, "type", None)
        if not isinstance(value, dict):
            return None
        if value.get("type") is not None:
            return value["type"] if isinstance(value["type"], str) else None
        op = value.get("op")
        if not isinstance(op, str):
            return None
        if op in _KIND_OF_OP:
            return _KIND_OF_OP[op]
        if op not in ("eq", "ne"):
            return None
        if len(scalar_kinds) == 1:
            return scalar_kinds[0]
        given = value.get("value")
        if isinstance(given, bool):
            return "boolean"
        if isinstance(given, int | float):
            return "number"
        if isinstance(given, str):
            return "string"
        return None

    def validate(value: Any, handler: ValidatorFunctionWrapHandler) -> Any:
        if isinstance(value, BaseModel):
            return handler(value)
        if not isinstance(value, dict):
            raise ValueError("must be an object {op, type?, value}")
        given = value.get("type")
        if given is not None and given not in list(kinds):
            raise FieldError("type", f"must be one of: {', '.join(kinds)}")
        op = value.get("op")
        if op is None:
            raise FieldError("op", f"required, one of: {' '.join(ops)}")
        if not isinstance(op, str) or op not in ops:
            raise FieldError("op", f"{op!r} is not an operator of this filter; use one of: {' '.join(ops)}")
        if given is None and kind_of(value) not in kinds:
            raise FieldError("type", f"cannot tell the kind from op and value; send type, one of: {', '.join(kinds)}")
        try:
            return handler(value)
        except ValidationError as exc:
            error = exc.errors()[0]
            loc = tuple(error.get("loc", ()))
            if loc and loc[0] in kinds:
                loc = loc[1:]
            cause = (error.get("ctx") or {}).get("error")
            message = error.get("msg", "invalid")
            if isinstance(cause, FieldError):
                loc, message = (*loc, cause.field), str(cause)
            elif isinstance(cause, ValueError):
                message = str(cause)
            if not loc:
                raise ValueError(message) from None
            raise FieldError(_field_path(loc), message) from None

    if len(variants) == 1:
        return Annotated[variants[0], WrapValidator(validate)]
    union = Union[tuple(Annotated[v, Tag(k)] for k, v in kinds.items())]  # type: ignore[valid-type]
    return Annotated[union, Discriminator(kind_of), WrapValidator(validate)]


ChatIdCriterion = _one_of(ChatStringFilter, ChatEnumFilter)
StartCriterion = _one_of(ChatTimestampFilter, ChatTimestampRangeFilter)
EndCriterion = _one_of(ChatTimestampFilter, ChatTimestampRangeFilter, ChatPresentFilter)
CostCriterion = _one_of(ChatNumberFilter, ChatRangeFilter, ChatPresentFilter)
StatusCriterion = _one_of(ChatStatusFilter)
TypeCriterion = _one_of(ChatTypeFilter)
SentimentCriterion = _one_of(ChatUserSentimentFilter)
SuccessCriterion = _one_of(ChatBooleanFilter)
KeyCriterion = _one_of(
    ChatKeyStringFilter, ChatKeyNumberFilter, ChatKeyBooleanFilter, ChatKeyRangeFilter, ChatKeyEnumFilter, ChatKeyPresentFilter
)


def _whole_number(value: Any) -> Any:
    # The Retell SDK types versions as floats: 2.0 is version 2 (2.5 stays an error).
    return int(value) if isinstance(value, float) and value.is_integer() else value


class ChatAgentFilter(_Strict):
    agent_id: Annotated[str, AfterValidator(_no_nul)] = Field(min_length=1, max_length=64)
    version: list[Annotated[int, BeforeValidator(_whole_number), Field(ge=1, le=MAX_VERSION)]] | None = Field(
        default=None,
        max_length=100,
        description="Only these versions of the agent; left out or empty, every version.",
    )


class ChatFilterCriteria(_Strict):
    """Every filter given must hold (AND). Retell's filter shapes."""

    agent: list[ChatAgentFilter] | None = Field(
        default=None, min_length=1, max_length=100, description="Chats of any of these agents (OR)."
    )
    chat_id: ChatIdCriterion | None = Field(default=None, description="String filter, or enum `in` a list of ids.")
    chat_status: StatusCriterion | None = Field(default=None, description="Enum `in`: ongoing, ended, error.")
    chat_type: TypeCriterion | None = Field(default=None, description="Enum `in`: api_chat, web_chat, sms_chat.")
    chat_successful: SuccessCriterion | None = Field(
        default=None, description="Boolean `eq`, from the post-chat analysis; chats not analysed never match."
    )
    user_sentiment: SentimentCriterion | None = Field(
        default=None, description="Enum `in`: Positive, Neutral, Negative, Unknown."
    )
    start_timestamp: StartCriterion | None = Field(
        default=None, description="Number or range filter on the start time, Unix milliseconds."
    )
    end_timestamp: EndCriterion | None = Field(
        default=None,
        description="Number or range filter on the end time, Unix milliseconds; `np` for chats not ended.",
    )
    combined_cost: CostCriterion | None = Field(
        default=None,
        description="Number, range or present filter on `chatCost.combinedCost` (same unit).",
    )
    custom_attributes: list[KeyCriterion] | None = Field(
        default=None,
        max_length=20,
        description="Filters on `customAttributes` entries, each with its `key`. A number filter also "
        "matches a string written as a decimal number.",
    )
    custom_analysis_data: list[KeyCriterion] | None = Field(
        default=None,
        max_length=20,
        description="Filters on `chatAnalysis.customAnalysisData` entries, each with its `key`.",
    )


class ListChatsV3Request(_Strict):
    workspace_id: int | None = Field(
        default=None, alias="workspaceId",
        description="The workspace: the answer is then chatplane's shape. Left out (Retell's SDK), the "
        "workspace comes from the key (`X-Chatplane-Workspace` for a key granted several) and the items "
        "are Retell's `ChatResponse`.",
    )
    filter_criteria: ChatFilterCriteria | None = Field(default=None, description="Left out: every chat.")
    sort_order: SortOrder = Field(default="descending", description="By start time; newest first by default.")
    limit: int = Field(default=50, ge=1, le=1000, description="Items per page (1..1000).")
    pagination_key: str | None = Field(
        default=None,
        max_length=1000,
        description="`pagination_key` of the previous answer, with the same `sort_order`.",
    )
    include_total: bool = Field(
        default=False, description="Also count every chat matching `filter_criteria` (one more query)."
    )
    skip: int = Field(default=0, ge=0, le=1_000_000, description="Leave out this many chats first (Retell's `skip`).")


class ListChatsV3Response(BaseModel):
    items: list[ChatSummary] = Field(description="Chats without messages and transcript.")
    has_more: bool = Field(description="Whether another page follows.")
    pagination_key: str | None = Field(description="Pass back to get the next page; null on the last one.")
    total: int | None = Field(
        default=None,
        description="Chats matching `filter_criteria`, whatever the cursor; only when `include_total` is true.",
    )


