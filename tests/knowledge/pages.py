"""A website on loopback for URL sources: pages a test sets, changes and slows down."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class Page:
    body: bytes = b""
    status: int = 200
    content_type: str = "text/html; charset=utf-8"
    headers: dict[str, str] = field(default_factory=dict)
    delay_s: float = 0.0  # before the answer
    hold: threading.Event | None = None  # the answer waits until it is set


class Site:
    """Serves ``pages`` by path (404 for the rest) and counts the requests for each."""

    def __init__(self) -> None:
        self.pages: dict[str, Page] = {}
        self.hits: dict[str, int] = {}
        site = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's name
                site.hits[self.path] = site.hits.get(self.path, 0) + 1
                page = site.pages.get(self.path)
                if page is None:
                    self.send_error(404)
                    return
                if page.hold is not None:
                    page.hold.wait(30)
                if page.delay_s:
                    time.sleep(page.delay_s)
                try:
                    self.send_response(page.status)
                    self.send_header("Content-Type", page.content_type)
                    self.send_header("Content-Length", str(len(page.body)))
                    for name, value in page.headers.items():
                        self.send_header(name, value)
                    self.end_headers()
                    self.wfile.write(page.body)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the fetch gave up (a timeout test)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}{path}"

    def html(self, path: str, title: str, *paragraphs: str, **options: Any) -> str:
        """Put an HTML article at ``path`` (with navigation and a footer around it); its URL."""
        body = "".join(f"<p>{p}</p>" for p in paragraphs)
        page = (
            f"<html><head><title>{title}</title><script>var tracking = 'SCRIPTTEXT';</script></head><body>"
            f"<nav><a href='/'>Home</a> <a href='/about'>About us</a></nav>"
            f"<article><h1>{title}</h1>{body}</article>"
            f"<footer>Copyright footer text</footer></body></html>"
        )
        self.pages[path] = Page(page.encode(), **options)
        return self.url(path)

    def __enter__(self) -> Site:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
