"""LLM configurations ("LLM Models"): the response engine of a chat agent."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal, Union

from pydantic import BeforeValidator, Field, model_validator

from chatplane.errors import FieldError
from chatplane.schemas import (
    AnalysisField,
    HttpUrlStr,
    Name,
    ObjectSchema,
    StrictModel,
    Variables,
    WorkspaceId,
    partial_model,
    unique_names,
)

MAX_PARAMETERS_DEPTH = 32


def _not_too_deep(value: Any) -> Any:
    """Refuse deeply nested `parameters` before they are checked or stored.

    Checking a JSON schema recurses once per level (RecursionError near 100
    nested properties) and serialising stops at 255 levels: either would be a
    500 for what is the caller's mistake.
    """
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, (dict, list)):
            if depth > MAX_PARAMETERS_DEPTH:
                raise ValueError(f"nested more than {MAX_PARAMETERS_DEPTH} levels deep")
            children = item.values() if isinstance(item, dict) else item
            stack.extend((child, depth + 1) for child in children)
    return value


# The depth check wraps the schema check, so it runs first.
Parameters = Annotated[ObjectSchema, BeforeValidator(_not_too_deep)]


class EndChatTool(StrictModel):
    type: Literal["end_chat"]
    name: Name = "end_chat"
    description: str | None = Field(default=None, max_length=2000)


class CustomTool(StrictModel):
    type: Literal["custom"]
    name: Name
    description: str | None = Field(default=None, max_length=2000)
    url: HttpUrlStr
    method: Literal["GET", "POST", "PUT", "PATCH", "DELETE"] = "POST"
    headers: dict[str, str] = Field(default_factory=dict)
    query_params: dict[str, str] = Field(default_factory=dict)
    parameters: Parameters | None = None
    args_at_root: bool = Field(
        default=False, description="Send the arguments as the body itself, not under `args`."
    )
    timeout_ms: int = Field(default=120_000, ge=1_000, le=600_000)
    max_retry: int = Field(default=2, ge=0, le=5)
    response_variables: dict[str, str] = Field(
        default_factory=dict,
        description="Variable name -> JSON path in the response, copied into the chat's variables.",
    )


class ExtractDynamicVariableTool(StrictModel):
    type: Literal["extract_dynamic_variable"]
    name: Name
    description: str = Field(max_length=2000)
    variables: list[AnalysisField] = Field(min_length=1)

    @model_validator(mode="after")
    def _unique(self) -> ExtractDynamicVariableTool:
        unique_names(self.variables, "variables", "variable")
        return self


Tool = Annotated[
    Union[EndChatTool, CustomTool, ExtractDynamicVariableTool], Field(discriminator="type")
]


class StateEdge(StrictModel):
    destination_state_name: Name
    description: str = Field(max_length=2000)
    parameters: Parameters | None = None


class State(StrictModel):
    name: Name
    state_prompt: str = Field(default="", max_length=100_000)
    edges: list[StateEdge] = Field(default_factory=list)
    tools: list[Tool] = Field(default_factory=list)


MAX_KNOWLEDGE_BASES = 20


class KBConfig(StrictModel):
    top_k: int = Field(default=3, ge=1, le=10, description="At most this many chunks go into a turn's prompt.")
    filter_score: float = Field(
        default=0.6, ge=0, le=1,
        description="Chunks scoring below this are left out; 0..1, the scale docs/knowledge.md explains.",
    )


class LlmConfig(StrictModel):
    """What is stored for one version, and what every LLM object shows."""

    display_name: str = Field(min_length=1, max_length=200)
    model: str | None = Field(
        default=None,
        description="A model name the server's provider registry knows; the server default if unset.",
    )
    model_temperature: float = Field(default=0.0, ge=0, le=1)
    general_prompt: str | None = Field(default=None, max_length=100_000)
    begin_message: str | None = Field(
        default=None, max_length=10_000, description="If non-empty, the chat's first assistant message."
    )
    general_tools: list[Tool] = Field(default_factory=list)
    states: list[State] = Field(default_factory=list)
    starting_state: str | None = None
    knowledge_base_ids: list[Annotated[str, Field(max_length=64)]] = Field(
        default_factory=list,
        max_length=MAX_KNOWLEDGE_BASES,
        description="Knowledge bases of this workspace searched on every turn (their current content: a "
        "knowledge base is not versioned with the LLM). The best chunks go into the system prompt; "
        "`kb_config` says how many and how relevant.",
    )
    kb_config: KBConfig = Field(default_factory=KBConfig)
    default_dynamic_variables: Variables = Field(default_factory=dict)

    @model_validator(mode="after")
    def _consistent(self) -> LlmConfig:
        unique_names(self.general_tools, "general_tools", "tool")
        unique_names(self.states, "states", "state")
        if len(set(self.knowledge_base_ids)) < len(self.knowledge_base_ids):
            raise FieldError("knowledge_base_ids", "names a knowledge base twice")
        names = {state.name for state in self.states}
        if self.states:
            if self.starting_state is None:
                raise FieldError("starting_state", "required when states are given")
            if self.starting_state not in names:
                raise FieldError("starting_state", f"{self.starting_state!r} is not one of the states")
        elif self.starting_state is not None:
            raise FieldError("starting_state", "given without states")
        general = {tool.name for tool in self.general_tools}
        for i, state in enumerate(self.states):
            unique_names(state.tools, f"states[{i}].tools", "tool")
            for j, tool in enumerate(state.tools):
                if tool.name in general:
                    raise FieldError(f"states[{i}].tools[{j}].name", f"{tool.name!r} repeats a general tool")
            for j, edge in enumerate(state.edges):
                if edge.destination_state_name not in names:
                    raise FieldError(
                        f"states[{i}].edges[{j}].destination_state_name",
                        f"no state is named {edge.destination_state_name!r}",
                    )
        return self


class LlmCreate(LlmConfig):
    workspace_id: WorkspaceId


class LlmUpdate(partial_model(LlmConfig, "LlmPatch")):  # type: ignore[misc]
    workspace_id: WorkspaceId


class LlmOut(LlmConfig):
    llm_id: str
    version: int
    is_published: bool
    created_at: datetime
    updated_at: datetime
    last_modification_timestamp: int = Field(description="`updated_at` in Unix milliseconds.")
