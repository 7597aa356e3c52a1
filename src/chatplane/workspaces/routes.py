"""/api/workspaces"""

from __future__ import annotations

from fastapi import APIRouter
from pydantic import BaseModel

from chatplane import auth
from chatplane.auth import CurrentPrincipal, Session
from chatplane.errors import error_responses

router = APIRouter(prefix="/api/workspaces", tags=["Account"], responses=error_responses(401))


class WorkspaceOut(BaseModel):
    id: int
    name: str


@router.get("", response_model=list[WorkspaceOut], summary="List the workspaces this key may use")
async def list_workspaces(session: Session, principal: CurrentPrincipal) -> list[dict]:
    rows = await auth.list_workspaces(session, ids=principal.workspace_ids)
    return [{"id": w.id, "name": w.name} for w in rows]
