"""What every Retell route shares: the workspace from the key, the model a
hosted name runs on, Retell's times and paging.

The Retell routes (``/create-chat``, ``/get-retell-llm/{id}``, ...) serve the
same services as the ``/api`` routes; this package only maps names and shapes
(``docs/retell.md``).
"""

from __future__ import annotations

from typing import Annotated, Any, TypeVar

from fastapi import Depends, Header, Query
from pydantic import BaseModel, ConfigDict, ValidationError

from chatplane import configs
from chatplane.auth import CurrentPrincipal
from chatplane.errors import AppError, Conflict, InvalidInput, error_responses
from chatplane.pagination import PageRequest, SortOrder, decode_cursor
from chatplane.schemas import StrictModel
from chatplane.settings import Settings

M = TypeVar("M", bound=BaseModel)
TAG = "Retell compatibility"
# The header that names the workspace when a key may use several (Retell has
# no workspaces: a key granted one needs nothing).
WORKSPACE_HEADER = "X-Chatplane-Workspace"
RESPONSES = error_responses(400, 401, 404, 422)


class WorkspaceRequired(AppError):
    status = 400
    code = "workspace_required"


async def retell_workspace(
    principal: CurrentPrincipal,
    chosen: Annotated[
        int | None,
        Header(alias=WORKSPACE_HEADER, description="The workspace, for a key granted several (else its one)."),
    ] = None,
) -> int:
    """The workspace a Retell call acts in: the key's only one, or the one the header names."""
    if chosen is not None:
        return principal.require(chosen)
    if len(principal.workspace_ids) == 1:
        return next(iter(principal.workspace_ids))
    ids = ", ".join(str(i) for i in sorted(principal.workspace_ids))
    raise WorkspaceRequired(
        f"this API key may use workspaces {ids}: name one in the {WORKSPACE_HEADER} header "
        f"(with the Retell SDK: Retell(..., default_headers={{'{WORKSPACE_HEADER}': '<id>'}}))"
    )


RetellWorkspace = Annotated[int, Depends(retell_workspace)]


class RetellBody(StrictModel):
    """A Retell request body: Retell's own field names; an unknown one is a 422."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)


def sent(body: BaseModel, names: set[str], ours: type[BaseModel], *, clear_nulls: bool,
         defaults: dict[str, Any] | None = None) -> dict[str, Any]:
    """The fields of ``names`` the Retell ``body`` sets. A null sets the field's
    default in ``ours`` (or ``defaults``) when ``clear_nulls`` (an update), else
    it is left out (a create)."""
    out: dict[str, Any] = {}
    for name, value in body.model_dump(include=names, exclude_unset=True).items():
        if value is not None:
            out[name] = value
        elif clear_nulls and name in ours.model_fields:
            fallback = ours.model_fields[name].get_default(call_default_factory=True)
            out[name] = (defaults or {}).get(name, fallback)
    return out


def validated(model: type[M], data: dict[str, Any]) -> M:
    """``data`` as chatplane's ``model``, its errors as chatplane's 422."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise InvalidInput.from_pydantic(list(exc.errors())) from None


async def latest(session: Any, model: type, *, workspace_id: int, id: str, version: int | None) -> Any:
    """The latest version of ``id``; 409 ``version_not_latest`` if ``version`` names another."""
    row = await configs.get(session, model, workspace_id=workspace_id, id=id)
    if version is not None and row.version != version:
        label = configs.LABELS[model][0]
        raise Conflict(f"version {version} of {label} {id} is not its latest ({row.version}): "
                       "only the latest version can be changed", code="version_not_latest")
    return row


def served_model(name: str | None, settings: Settings) -> str | None:
    """The model a Retell configuration runs on: a name the server's registry
    knows runs as itself; any other (Retell's hosted models: ``gpt-4.1``,
    ``claude-4.5-haiku``, ...) runs on the server's default model, which the
    answer then shows."""
    if name is None or name in settings.model_names:
        return name
    return settings.default_model


def renamed_tools(tools: list[dict[str, Any]] | None, names: dict[str, str]) -> list[dict[str, Any]] | None:
    """Tools with their ``type`` renamed by ``names`` (Retell's ``end_call`` is chatplane's ``end_chat``)."""
    if tools is None:
        return None
    return [{**tool, "type": names.get(tool.get("type"), tool.get("type"))} if isinstance(tool, dict) else tool
            for tool in tools]


def retell_page(
    limit: Annotated[int, Query(ge=1, le=1000, description="Items per page (1..1000).")] = 50,
    pagination_key: Annotated[str | None, Query(description="`pagination_key` of the previous page.")] = None,
    sort_order: Annotated[SortOrder, Query(description="By creation time; newest first by default.")] = "descending",
) -> PageRequest:
    """Retell's paging as its SDK sends it on GET lists (snake_case query)."""
    return page_of(limit, pagination_key, sort_order)


def page_of(limit: int, pagination_key: str | None, sort_order: SortOrder) -> PageRequest:
    after = decode_cursor(pagination_key, sort_order, field="pagination_key") if pagination_key else None
    return PageRequest(limit=limit, after=after, order=sort_order)


RetellPage = Annotated[PageRequest, Depends(retell_page)]


def listed(items: list[Any], key: str | None) -> dict[str, Any]:
    """Retell's list answer."""
    return {"items": items, "has_more": key is not None, "pagination_key": key}
