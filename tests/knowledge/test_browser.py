"""What a person's browser does with a knowledge source's original, in a real
browser (Debian's chromium, driven by Playwright): an uploaded or fetched
HTML page comes as a download, byte for byte, and its scripts never run in
the server's origin; another workspace's source is a plain JSON 404."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from playwright.sync_api import Browser, Error, sync_playwright

from tests.conftest import Api
from tests.knowledge.helpers import BASE, settled
from tests.knowledge.pages import Page, Site
from tests.knowledge.test_routes import multipart


def in_browser(work: Callable[[Browser], Any]) -> Any:
    """``work(browser)`` with a headless chromium, in a thread of its own: the
    sync API runs an event loop, and the fixtures here call asyncio.run."""
    def run() -> Any:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=shutil.which("chromium"), args=["--no-sandbox"])
            try:
                return work(browser)
            finally:
                browser.close()

    with ThreadPoolExecutor(1) as pool:
        return pool.submit(run).result(timeout=120)


def hostile_page(site: Site) -> bytes:
    """A page whose scripts and images, if they ran or loaded, would call the test site."""
    beacon = site.url("/pwned")
    return (f"<html><head><title>Returns</title><script>fetch('{beacon}?script');"
            f"document.title = 'pwned';</script></head><body><h1>Returns</h1>"
            f"<p>Returns are accepted within 30 days.</p><img src='{beacon}?img'></body></html>").encode()


@dataclass
class Visit:
    title: str
    text: str  # the page's text, when it showed one
    download: bytes | None  # what it downloaded instead


def visit(api: Api, url: str, linger_ms: int = 300) -> Visit:
    """Open ``url`` as a person with this key would, and wait ``linger_ms``
    (time for a script or an image to call out, had one run)."""
    def work(browser: Browser) -> Visit:
        context = browser.new_context(extra_http_headers={"Authorization": f"Bearer {api.key}"},
                                      accept_downloads=True)
        try:
            page = context.new_page()
            downloads: list[Any] = []
            page.on("download", lambda download: downloads.append(download))
            try:
                page.goto(url)
            except Error as exc:  # a navigation that turned into a download is aborted
                assert "download" in str(exc).lower() or "ERR_ABORTED" in str(exc), exc
            page.wait_for_timeout(linger_ms)
            data = Path(downloads[0].path()).read_bytes() if downloads else None
            text = page.locator("body").inner_text() if data is None else ""
            return Visit(page.title(), text, data)
        finally:
            context.close()

    return in_browser(work)


def test_an_uploaded_html_page_downloads_and_runs_nothing(kb: Api, site: Site) -> None:
    original = hostile_page(site)
    response = multipart(kb, BASE, {"knowledge_base_name": "Pages"}, [("returns.html", original, "text/html")])
    assert response.status_code == 201, response.text
    done = settled(kb, response.json()["knowledge_base_id"])
    [source] = done["knowledge_base_sources"]
    seen = visit(kb, f"{kb.backend.url}{source['file_url']}?workspaceId={kb.ws}")
    assert seen.download == original
    assert site.hits.get("/pwned?script", 0) == 0 and site.hits.get("/pwned?img", 0) == 0
    assert seen.title != "pwned"


def test_a_fetched_page_downloads_as_it_was_fetched(kb: Api, site: Site) -> None:
    url = site.url("/kb/browser-returns")
    site.pages["/kb/browser-returns"] = Page(hostile_page(site))
    made = kb.post(BASE, {"knowledge_base_name": "Site", "knowledge_base_urls": [url]}).json()
    [source] = settled(kb, made["knowledge_base_id"])["knowledge_base_sources"]
    assert source["status"] == "complete", source
    content = f"{kb.backend.url}{BASE}/{made['knowledge_base_id']}/sources/{source['source_id']}/content"
    seen = visit(kb, f"{content}?workspaceId={kb.ws}")
    assert seen.download == site.pages["/kb/browser-returns"].body
    assert site.hits.get("/pwned?script", 0) == 0 and seen.title != "pwned"


def test_another_workspaces_source_is_a_json_404_in_the_browser(kb: Api, kb_other: Api) -> None:
    made = kb.post(BASE, {"knowledge_base_name": "Mine",
                          "knowledge_base_texts": [{"title": "t", "text": "secret text"}]}).json()
    [source] = settled(kb, made["knowledge_base_id"])["knowledge_base_sources"]
    url = f"{kb.backend.url}{source['content_url']}?workspaceId={kb_other.ws}"
    seen = visit(kb_other, url, linger_ms=0)
    assert seen.download is None
    assert '"code":"knowledge_base_not_found"' in seen.text.replace(" ", "") and "secret text" not in seen.text
