"""/api/llms"""

from __future__ import annotations

from fastapi import APIRouter, Request, Response

from chatplane import configs
from chatplane.auth import CurrentPrincipal, QueryWorkspace, Session
from chatplane.errors import error_responses
from chatplane.llms import service
from chatplane.llms.schemas import LlmCreate, LlmOut, LlmUpdate
from chatplane.models import Llm
from chatplane.pagination import Page, PageQuery
from chatplane.schemas import VersionQuery, WorkspaceBody

router = APIRouter(prefix="/api/llms", tags=["LLM Models"], responses=error_responses(401, 404, 422))



def llm_out(row: Llm) -> dict:
    """The API shape of one stored version (validated by the route's response model)."""
    return {
        **row.config,
        "llm_id": row.id,
        "version": row.version,
        "is_published": row.is_published,
        "created_at": row.created_at,
        "updated_at": row.updated_at,
        "last_modification_timestamp": int(row.updated_at.timestamp() * 1000),
    }


@router.post("", status_code=201, response_model=LlmOut, summary="Create LLM configuration",
             responses=error_responses(413))
async def create_llm(body: LlmCreate, request: Request, session: Session, principal: CurrentPrincipal) -> dict:
    workspace_id = principal.require(body.workspace_id)
    row = await service.create_llm(
        session, workspace_id=workspace_id, config=body, settings=request.app.state.settings
    )
    return llm_out(row)


@router.get("", response_model=Page[LlmOut], summary="List LLM configurations (latest versions)")
async def list_llms(session: Session, workspace_id: QueryWorkspace, page: PageQuery) -> dict:
    rows, key = await configs.list_latest(session, Llm, workspace_id=workspace_id, page=page)
    return {"data": [llm_out(r) for r in rows], "pagination_key": key}


@router.get("/{llm_id}", response_model=LlmOut, summary="Get LLM configuration")
async def get_llm(llm_id: str, session: Session, workspace_id: QueryWorkspace, version: VersionQuery = None) -> dict:
    return llm_out(await configs.get(session, Llm, workspace_id=workspace_id, id=llm_id, version=version))


@router.get("/{llm_id}/versions", response_model=list[LlmOut], summary="List versions of an LLM configuration")
async def list_llm_versions(llm_id: str, session: Session, workspace_id: QueryWorkspace) -> list[dict]:
    return [llm_out(r) for r in await configs.list_versions(session, Llm, workspace_id=workspace_id, id=llm_id)]


@router.patch("/{llm_id}", response_model=LlmOut, summary="Update LLM configuration",
              description="Changes the latest version; if it is published, a new draft version is made instead.",
              responses=error_responses(413))
async def update_llm(llm_id: str, body: LlmUpdate, request: Request, session: Session,
                     principal: CurrentPrincipal) -> dict:
    workspace_id = principal.require(body.workspace_id)
    row = await service.update_llm(
        session, workspace_id=workspace_id, llm_id=llm_id,
        patch=body.model_dump(mode="json", exclude_unset=True, exclude={"workspace_id"}),
        settings=request.app.state.settings,
    )
    return llm_out(row)


@router.post("/{llm_id}/publish", response_model=LlmOut, summary="Publish LLM configuration",
             description="Freezes the latest version; the next edit starts a new draft version. "
             "Publishing a chat agent also publishes the LLM version it uses.",
             responses=error_responses(413))
async def publish_llm(llm_id: str, body: WorkspaceBody, session: Session, principal: CurrentPrincipal) -> dict:
    workspace_id = principal.require(body.workspace_id)
    row = await configs.get(session, Llm, workspace_id=workspace_id, id=llm_id, for_update=True)
    return llm_out(await configs.mark_published(session, row))


@router.delete("/{llm_id}", status_code=204, summary="Delete LLM configuration (all versions)",
               description="409 `llm_in_use` while a chat agent uses it.", responses=error_responses(409))
async def delete_llm(llm_id: str, session: Session, workspace_id: QueryWorkspace) -> Response:
    await service.delete_llm(session, workspace_id=workspace_id, llm_id=llm_id)
    return Response(status_code=204)
