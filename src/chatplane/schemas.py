"""Schema pieces shared by several features."""

from __future__ import annotations

from copy import copy
from typing import Annotated, Any, Literal, Optional, Union

from jsonschema import Draft202012Validator
from jsonschema.exceptions import SchemaError
from fastapi import Query
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, create_model

from chatplane import outbound
from chatplane.errors import FieldError, InvalidInput


class StrictModel(BaseModel):
    """Refuses unknown fields: a misspelt option fails loudly instead of being ignored."""

    model_config = ConfigDict(extra="forbid")


def _http_url(value: str) -> str:
    # The syntax half of the outbound rule: a URL that could never be called
    # (or that resolvers read differently) is refused once, here, instead of
    # failing at every call. Whether its address is public is decided at call
    # time: that depends on a setting and on DNS.
    outbound.parse_url(value)
    return value


HttpUrlStr = Annotated[str, Field(max_length=2048), AfterValidator(_http_url)]

Name = Annotated[
    str,
    Field(
        pattern=r"^[a-zA-Z0-9_-]{1,64}$",
        description="Letters, digits, `_` and `-`, at most 64 (the OpenAI function-name rule).",
    ),
]

Variables = Annotated[
    dict[str, str], Field(description="Values for `{{name}}` placeholders, strings only.")
]


def _json_schema(value: dict[str, Any]) -> dict[str, Any]:
    try:
        Draft202012Validator.check_schema(value)
    except SchemaError as exc:
        raise ValueError(f"not a valid JSON schema: {exc.message}") from None
    if value.get("type") != "object":
        raise ValueError('must be a JSON schema with "type": "object"')
    return value


ObjectSchema = Annotated[
    dict[str, Any],
    AfterValidator(_json_schema),
    Field(description='A JSON schema with `"type": "object"` for the arguments.'),
]


class _AnalysisFieldBase(StrictModel):
    name: Name
    description: str = Field(max_length=2000)
    required: bool = Field(default=False, description="If true, missing data marks the chat unsuccessful.")
    conditional_prompt: str | None = None


class StringField(_AnalysisFieldBase):
    type: Literal["string"]
    examples: list[str] = Field(default_factory=list)


class EnumField(_AnalysisFieldBase):
    type: Literal["enum"]
    choices: list[str] = Field(min_length=1)


class BooleanField(_AnalysisFieldBase):
    type: Literal["boolean"]


class NumberField(_AnalysisFieldBase):
    type: Literal["number"]


AnalysisField = Annotated[
    Union[StringField, EnumField, BooleanField, NumberField], Field(discriminator="type")
]


def unique_names(items: list[Any], field: str, what: str = "name") -> None:
    seen: set[str] = set()
    for index, item in enumerate(items):
        if item.name in seen:
            raise FieldError(f"{field}[{index}].name", f"{what} {item.name!r} is used twice")
        seen.add(item.name)


def partial_model(model: type[BaseModel], name: str) -> type[BaseModel]:
    """``model`` with every field optional: the body of a PATCH.

    Only the fields a client sends are applied (``exclude_unset``); the merged
    result is validated again as a whole ``model``.
    """
    fields: dict[str, Any] = {}
    for field_name, info in model.model_fields.items():
        # Keep the field's own rules (discriminator, bounds, validators), only
        # the default changes. The rules go inside the Optional: they hold for
        # a value sent, and a null (nothing to change) is not checked by them.
        value_type = Annotated[info.annotation, *info.metadata] if info.metadata else info.annotation
        optional = copy(info)
        optional.metadata = []
        optional.default = None
        optional.default_factory = None
        fields[field_name] = (Optional[value_type], optional)
    return create_model(name, __base__=StrictModel, **fields)


def validate_merged(model: type[BaseModel], current: dict[str, Any], patch: dict[str, Any]) -> BaseModel:
    """Apply a PATCH to a stored configuration and validate the result whole."""
    from pydantic import ValidationError

    try:
        return model.model_validate({**current, **patch})
    except ValidationError as exc:
        raise InvalidInput.from_pydantic(list(exc.errors())) from None


WorkspaceId = Annotated[int, Field(alias="workspaceId", description="Workspace the call acts in.")]


class WorkspaceBody(StrictModel):
    """A body that only names the workspace (publish, end, …)."""

    workspace_id: WorkspaceId


MAX_VERSION = 2_147_483_647  # a 32-bit integer column on every backend

VersionQuery = Annotated[
    int | None, Query(ge=1, le=MAX_VERSION, description="A version; the latest if unset.")
]
