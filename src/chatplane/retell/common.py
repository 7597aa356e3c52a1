"""What every Retell route shares: the workspace from the key, the model a
hosted name runs on, Retell's times and paging.

The Retell routes (``/create-chat``, ``/get-retell-llm/{id}``, ...) serve the
same services as the ``/api`` routes; this package only maps names and shapes
(``docs/retell.md``).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import Depends, Header, Query
from pydantic import ConfigDict

from chatplane.auth import CurrentPrincipal
from chatplane.errors import AppError, error_responses
from chatplane.pagination import PageRequest, SortOrder, decode_cursor
from chatplane.schemas import StrictModel
from chatplane.settings import Settings

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


def ms(at: datetime | None) -> int | None:
    """Unix milliseconds, as Retell gives times."""
    return None if at is None else int(at.astimezone(UTC).timestamp() * 1000)


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
