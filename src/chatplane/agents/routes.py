"""/api/chat-agents"""

from __future__ import annotations

from fastapi import APIRouter, Request, Response

from chatplane import configs
from chatplane.agents import service
from chatplane.agents.schemas import ChatAgentCreate, ChatAgentOut, ChatAgentUpdate
from chatplane.auth import CurrentPrincipal, QueryWorkspace, Session
from chatplane.errors import error_responses
from chatplane.models import ChatAgent
from chatplane.pagination import Page, PageQuery
from chatplane.schemas import VersionQuery, WorkspaceBody

router = APIRouter(prefix="/api/chat-agents", tags=["Chat Agents"], responses=error_responses(401, 404, 422))



def agent_out(row: ChatAgent) -> dict:
    """The API shape of one stored version (validated by the route's response model)."""
    return {
        **row.config,
        "agent_id": row.id,
        "version": row.version,
        "is_published": row.is_published,
        "created_at": row.created_at,
        "updated_at": row.updated_at,
        "last_modification_timestamp": int(row.updated_at.timestamp() * 1000),
    }


@router.post("", status_code=201, response_model=ChatAgentOut, summary="Create chat agent",
             responses=error_responses(413))
async def create_agent(body: ChatAgentCreate, request: Request, session: Session,
                       principal: CurrentPrincipal) -> dict:
    workspace_id = principal.require(body.workspace_id)
    row = await service.create_agent(
        session, workspace_id=workspace_id, config=body, settings=request.app.state.settings
    )
    return agent_out(row)


@router.get("", response_model=Page[ChatAgentOut], summary="List chat agents (latest versions)")
async def list_agents(session: Session, workspace_id: QueryWorkspace, page: PageQuery) -> dict:
    rows, key = await configs.list_latest(session, ChatAgent, workspace_id=workspace_id, page=page)
    return {"data": [agent_out(r) for r in rows], "pagination_key": key}


@router.get("/{agent_id}", response_model=ChatAgentOut, summary="Get chat agent")
async def get_agent(agent_id: str, session: Session, workspace_id: QueryWorkspace,
                    version: VersionQuery = None) -> dict:
    return agent_out(
        await configs.get(session, ChatAgent, workspace_id=workspace_id, id=agent_id, version=version)
    )


@router.get("/{agent_id}/versions", response_model=list[ChatAgentOut], summary="List chat agent versions")
async def list_agent_versions(agent_id: str, session: Session, workspace_id: QueryWorkspace) -> list[dict]:
    rows = await configs.list_versions(session, ChatAgent, workspace_id=workspace_id, id=agent_id)
    return [agent_out(r) for r in rows]


@router.patch("/{agent_id}", response_model=ChatAgentOut, summary="Update chat agent",
              description="Changes the latest version; if it is published, a new draft version is made instead.",
              responses=error_responses(413))
async def update_agent(agent_id: str, body: ChatAgentUpdate, request: Request, session: Session,
                       principal: CurrentPrincipal) -> dict:
    workspace_id = principal.require(body.workspace_id)
    row = await service.update_agent(
        session, workspace_id=workspace_id, agent_id=agent_id,
        patch=body.model_dump(mode="json", exclude_unset=True, exclude={"workspace_id"}),
        settings=request.app.state.settings,
    )
    return agent_out(row)


@router.post("/{agent_id}/publish", response_model=ChatAgentOut, summary="Publish chat agent",
             description="Freezes the latest version and the LLM version it uses; publishing a "
             "published version changes nothing. The next edit starts a new draft version. "
             "409 `llm_missing` if its LLM was deleted.",
             responses=error_responses(409, 413))
async def publish_agent(agent_id: str, body: WorkspaceBody, session: Session,
                        principal: CurrentPrincipal) -> dict:
    workspace_id = principal.require(body.workspace_id)
    return agent_out(await service.publish_agent(session, workspace_id=workspace_id, agent_id=agent_id))


@router.delete("/{agent_id}", status_code=204, summary="Delete chat agent (all versions)")
async def delete_agent(agent_id: str, session: Session, workspace_id: QueryWorkspace) -> Response:
    await configs.soft_delete(session, ChatAgent, workspace_id=workspace_id, id=agent_id)
    return Response(status_code=204)
