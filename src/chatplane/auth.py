"""API keys, workspaces, and the dependencies that put them on a request.

A key is shown once, when it is made, and stored as its SHA-256. A request
names its workspace (body for POST/PATCH, query for GET/DELETE); a workspace
the key was not granted answers 404, exactly like one that does not exist.
"""

from __future__ import annotations

import hashlib
import secrets
import time
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Query, Request
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, AsyncSession

from chatplane.db import transaction, utcnow
from chatplane.errors import NotFound, Unauthorized, shown
from chatplane.models import ApiKey, ApiKeyWorkspace, Workspace

KEY_PREFIX = "cp_"


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def new_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling: one API key and the workspaces it may use."""

    key_id: int
    workspace_ids: frozenset[int]

    def require(self, workspace_id: int) -> int:
        if workspace_id not in self.workspace_ids:
            raise NotFound(f"workspace {workspace_id} not found", code="workspace_not_found")
        return workspace_id


# --- services (no HTTP) -----------------------------------------------------


async def create_workspace(session: AsyncSession, *, name: str) -> Workspace:
    workspace = Workspace(name=name, webhook_key=secrets.token_hex(32))
    session.add(workspace)
    await session.flush()
    return workspace


async def list_workspaces(session: AsyncSession, *, ids: frozenset[int] | None = None) -> list[Workspace]:
    query = select(Workspace).order_by(Workspace.id)
    if ids is not None:
        query = query.where(Workspace.id.in_(ids))
    return list((await session.scalars(query)).all())


async def create_key(
    session: AsyncSession, *, workspace_ids: list[int], name: str = "", key: str | None = None
) -> tuple[ApiKey, str]:
    """Make a key for the given workspaces; returns the row and the secret (shown once)."""
    if not workspace_ids:
        raise ValueError("a key needs at least one workspace")
    found = set(
        (await session.scalars(select(Workspace.id).where(Workspace.id.in_(workspace_ids)))).all()
    )
    missing = sorted(set(workspace_ids) - found)
    if missing:
        raise NotFound(f"workspace {missing[0]} not found", code="workspace_not_found")
    secret = key or new_key()
    row = ApiKey(key_hash=hash_key(secret), prefix=secret[:10], name=name)
    session.add(row)
    await session.flush()
    session.add_all(ApiKeyWorkspace(api_key_id=row.id, workspace_id=w) for w in sorted(found))
    await session.flush()
    return row, secret


async def list_keys(session: AsyncSession) -> list[tuple[ApiKey, list[int]]]:
    keys = (await session.scalars(select(ApiKey).order_by(ApiKey.id))).all()
    grants = (await session.execute(select(ApiKeyWorkspace.api_key_id, ApiKeyWorkspace.workspace_id))).all()
    by_key: dict[int, list[int]] = {}
    for key_id, workspace_id in grants:
        by_key.setdefault(key_id, []).append(workspace_id)
    return [(key, sorted(by_key.get(key.id, []))) for key in keys]


async def revoke_key(session: AsyncSession, *, key_id: int) -> ApiKey:
    key = await session.get(ApiKey, key_id)
    if key is None:
        raise NotFound(f"API key {shown(key_id)} not found")
    if key.revoked_at is None:
        key.revoked_at = utcnow()
        await session.flush()
    return key


async def principal_for_key(session: AsyncSession | AsyncConnection, *, key: str) -> Principal | None:
    rows = (
        await session.execute(
            select(ApiKey.id, ApiKeyWorkspace.workspace_id)
            .join(ApiKeyWorkspace, ApiKeyWorkspace.api_key_id == ApiKey.id, isouter=True)
            .where(ApiKey.key_hash == hash_key(key), ApiKey.revoked_at.is_(None))
        )
    ).all()
    if not rows:
        return None
    return Principal(
        key_id=rows[0][0], workspace_ids=frozenset(w for _, w in rows if w is not None)
    )


class PrincipalCache:
    """Key -> Principal for a short while, so a hot client costs no query per call.

    A revoked key or a new grant takes effect within ``ttl_s`` (0 turns the
    cache off). Lookups use their own short connection, not the request's
    session: a route that then waits on a model (a completion) must not hold
    a connection, or on SQLite the write lock, while it waits.
    """

    def __init__(self, engine: AsyncEngine, ttl_s: float) -> None:
        self.engine = engine
        self.ttl_s = ttl_s
        self._entries: dict[str, tuple[float, Principal | None]] = {}

    async def get(self, key: str) -> Principal | None:
        digest = hash_key(key)
        now = time.monotonic()
        entry = self._entries.get(digest)
        if entry is not None and entry[0] > now:
            return entry[1]
        async with self.engine.connect() as conn:
            principal = await principal_for_key(conn, key=key)
        if self.ttl_s > 0:
            if len(self._entries) > 10_000:
                self._entries.clear()
            self._entries[digest] = (now + self.ttl_s, principal)
        return principal


# --- request dependencies ---------------------------------------------------


async def get_session(request: Request):  # type: ignore[no-untyped-def]
    """The request's session; committed when the route returns, rolled back if it raises.

    Used with ``scope="function"`` so the commit happens before the response
    is sent: a client never sees a 2xx for work that was not kept.
    """
    async with transaction(request.app.state.sessions) as session:
        yield session


Session = Annotated[AsyncSession, Depends(get_session, scope="function")]


def bearer_token(authorization: str) -> str | None:
    """The key of an ``Authorization: Bearer <key>`` header, or None."""
    scheme, _, token = authorization.partition(" ")
    token = token.strip()
    return token if scheme.lower() == "bearer" and token else None


async def authenticate(principals: PrincipalCache, authorization: str) -> Principal:
    """The caller an ``Authorization`` header names; raises ``Unauthorized``.

    Used by the ``get_principal`` dependency and by ``InputGuard``, which asks
    first when it refuses a body: a caller without a valid key learns only
    that (401), never how its body was read.
    """
    token = bearer_token(authorization)
    if token is None:
        raise Unauthorized(
            "missing API key: send 'Authorization: Bearer <key>'",
            headers={"WWW-Authenticate": "Bearer"},
        )
    principal = await principals.get(token)
    if principal is None:
        raise Unauthorized("invalid or revoked API key", headers={"WWW-Authenticate": "Bearer"})
    return principal


async def get_principal(request: Request) -> Principal:
    return await authenticate(request.app.state.principals, request.headers.get("authorization", ""))


CurrentPrincipal = Annotated[Principal, Depends(get_principal)]


async def query_workspace(
    principal: CurrentPrincipal,
    workspace_id: Annotated[
        int, Query(alias="workspaceId", description="Workspace the call acts in.")
    ],
) -> int:
    return principal.require(workspace_id)


QueryWorkspace = Annotated[int, Depends(query_workspace)]


async def bootstrap(session: AsyncSession, *, key: str | None = None) -> str | None:
    """On an empty database: workspace 1 ("default") and a first key for it.

    Returns the key to show once, or None when the database already had a
    workspace (nothing is changed then).
    """
    if await session.scalar(select(Workspace.id).limit(1)) is not None:
        return None
    workspace = await create_workspace(session, name="default")
    _, secret = await create_key(session, workspace_ids=[workspace.id], name="bootstrap", key=key)
    return secret
