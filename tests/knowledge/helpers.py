"""Calls the knowledge tests make."""

from __future__ import annotations

from typing import Any

from tests.conftest import Api
from tests.webhook_receiver import eventually

BASE = "/api/knowledge-bases"


def settled(api: Api, kb_id: str) -> dict[str, Any]:
    """The knowledge base once no source waits for its job."""
    def check() -> dict[str, Any] | None:
        body = api.get(f"{BASE}/{kb_id}").json()
        busy = body["status"] in ("in_progress", "refreshing_in_progress") or any(
            s["status"] == "pending" for s in body["knowledge_base_sources"])
        return None if busy else body
    return eventually(check, what=f"knowledge base {kb_id} indexed")


def create(api: Api, **body: Any) -> dict[str, Any]:
    response = api.post(BASE, {"knowledge_base_name": "Help", **body})
    assert response.status_code == 201, response.text
    return response.json()


def search(api: Api, kb_id: str, query: str, **options: Any) -> list[dict[str, Any]]:
    response = api.post(f"{BASE}/{kb_id}/search", {"query": query, **options})
    assert response.status_code == 200, response.text
    return response.json()["chunks"]
