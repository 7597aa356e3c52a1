"""Auto-refresh, on both databases: the monitor's pass (run with a clock a
day or more ahead) queues URL sources that are due, once, and only a page
whose text changed is re-indexed."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from chatplane.knowledge import refresh
from tests.conftest import Api
from tests.knowledge.helpers import BASE, create, search, settled
from tests.knowledge.pages import Site

DAY = timedelta(days=1)


def monitor_pass(api: Api, now: datetime) -> int:
    return api.backend.server.call(lambda services: refresh.queue_due_refreshes(services, now=now))


def chunk_ids(api: Api, kb_id: str, source_id: str) -> list[int]:
    page = api.get(f"{BASE}/{kb_id}/sources/{source_id}/chunks").json()
    return [c["chunk_id"] for c in page["data"]]


def source_of(body: dict[str, Any]) -> dict[str, Any]:
    [source] = body["knowledge_base_sources"]
    return source


def test_due_url_sources_are_fetched_again_and_only_changes_reindexed(kb: Api, site: Site) -> None:
    url = site.html("/refresh/a", "Opening hours", "The shop opens at nine on weekdays.")
    made = create(kb, knowledge_base_urls=[url], enable_auto_refresh=True)
    kb_id = made["knowledge_base_id"]
    first = source_of(settled(kb, kb_id))
    assert first["status"] == "complete"
    before = chunk_ids(kb, kb_id, first["source_id"])
    hits = site.hits["/refresh/a"]
    fetched = datetime.fromisoformat(first["refreshed_at"].replace("Z", "+00:00"))

    # Not due yet: not queued.
    monitor_pass(kb, fetched + DAY - timedelta(minutes=1))
    assert source_of(kb.get(f"{BASE}/{kb_id}").json())["status"] == "complete"
    assert site.hits["/refresh/a"] == hits

    # Due, page unchanged: fetched again, nothing re-indexed (the same chunk rows).
    assert monitor_pass(kb, fetched + DAY) >= 1
    again = source_of(settled(kb, kb_id))
    assert site.hits["/refresh/a"] == hits + 1
    assert again["refreshed_at"] > first["refreshed_at"] and again["indexed_at"] == first["indexed_at"]
    assert chunk_ids(kb, kb_id, first["source_id"]) == before

    # Changed page: re-indexed, the new words searchable and the old gone.
    site.html("/refresh/a", "Opening hours", "The shop now opens at eight, also on saturdays.")
    later = datetime.fromisoformat(again["refreshed_at"].replace("Z", "+00:00")) + DAY
    assert monitor_pass(kb, later) >= 1
    changed = source_of(settled(kb, kb_id))
    assert changed["indexed_at"] > first["indexed_at"]
    assert search(kb, kb_id, "saturdays") and not search(kb, kb_id, "nine weekdays", filter_score=0.9)


def test_two_monitors_queue_a_source_once(kb: Api, site: Site) -> None:
    url = site.html("/refresh/once", "Parking", "Parking is free after six.")
    kb_id = create(kb, knowledge_base_urls=[url], enable_auto_refresh=True)["knowledge_base_id"]
    fetched = datetime.fromisoformat(source_of(settled(kb, kb_id))["refreshed_at"].replace("Z", "+00:00"))
    hits = site.hits["/refresh/once"]
    monitor_pass(kb, fetched + DAY)
    monitor_pass(kb, fetched + DAY)  # another process, the same moment: the source is pending already
    settled(kb, kb_id)
    assert site.hits["/refresh/once"] == hits + 1


def test_without_auto_refresh_or_not_a_url_nothing_is_fetched(kb: Api, site: Site) -> None:
    url = site.html("/refresh/off", "Menu", "Soup of the day.")
    off = create(kb, knowledge_base_urls=[url])["knowledge_base_id"]
    texts = create(kb, knowledge_base_texts=[{"title": "t", "text": "Plain text."}], enable_auto_refresh=True)
    settled(kb, off)
    settled(kb, texts["knowledge_base_id"])
    hits = site.hits["/refresh/off"]
    monitor_pass(kb, datetime.now(UTC) + 3 * DAY)
    settled(kb, off)
    assert site.hits["/refresh/off"] == hits
    assert kb.get(f"{BASE}/{off}").json()["status"] == "complete"


def test_a_failing_page_is_tried_again_a_period_later_and_keeps_its_chunks(kb: Api, site: Site) -> None:
    url = site.html("/refresh/gone", "Prices", "Tea costs two euros.")
    kb_id = create(kb, knowledge_base_urls=[url], enable_auto_refresh=True)["knowledge_base_id"]
    fetched = datetime.fromisoformat(source_of(settled(kb, kb_id))["refreshed_at"].replace("Z", "+00:00"))
    del site.pages["/refresh/gone"]
    assert monitor_pass(kb, fetched + DAY) >= 1
    failed = source_of(settled(kb, kb_id))
    assert failed["status"] == "error" and "404" in failed["error_message"]
    assert search(kb, kb_id, "tea euros")  # the chunks it had stay
    tried = datetime.fromisoformat(failed["refreshed_at"].replace("Z", "+00:00"))
    hits = site.hits["/refresh/gone"]
    monitor_pass(kb, tried + timedelta(hours=1))  # not again at every pass
    settled(kb, kb_id)
    assert site.hits["/refresh/gone"] == hits
