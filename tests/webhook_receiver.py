"""A webhook receiver on loopback that records what it is sent, and a poll helper."""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, TypeVar

T = TypeVar("T")


@dataclass
class Answer:
    status: int = 200
    delay_s: float = 0.0
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class Received:
    path: str
    headers: dict[str, str]  # lower-case names
    raw: bytes

    @property
    def body(self) -> str:
        return self.raw.decode()

    @property
    def json(self) -> dict[str, Any]:
        return json.loads(self.raw)

    @property
    def event(self) -> str:
        return self.json["event"]

    @property
    def event_id(self) -> str:
        return self.headers["x-webhook-event-id"]


class Receiver:
    """Records every request; answers each with the next scripted Answer, or the default.

    Its URL has a path of its own: a request for another path (a retry left
    over from an earlier test whose receiver had the same port) is answered
    410 Gone and not recorded.
    """

    def __init__(self) -> None:
        self.path = f"/hook/{uuid.uuid4().hex[:12]}"
        self.requests: list[Received] = []
        self.strays: list[str] = []  # paths of requests for other URLs
        self.script: deque[Answer] = deque()
        self.default = Answer(200)
        self._lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                length = int(self.headers.get("content-length", "0"))
                raw = self.rfile.read(length)
                if len(raw) < length:
                    return  # the sender died mid-request: nothing was delivered
                if self.path != receiver.path:
                    receiver.strays.append(self.path)
                    self.send_response(410)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                with receiver._lock:
                    receiver.requests.append(
                        Received(self.path, {k.lower(): v for k, v in self.headers.items()}, raw)
                    )
                    answer = receiver.script.popleft() if receiver.script else receiver.default
                if answer.delay_s:
                    time.sleep(answer.delay_s)
                try:
                    self.send_response(answer.status)
                    for name, value in answer.headers.items():
                        self.send_header(name, value)
                    self.send_header("Content-Length", "2")
                    self.end_headers()
                    self.wfile.write(b"ok")
                except OSError:
                    pass  # the sender gave up waiting (timeout tests)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}{self.path}"

    def push(self, *answers: Answer) -> None:
        with self._lock:
            self.script.extend(answers)

    def received(self, event: str | None = None) -> list[Received]:
        with self._lock:
            return [r for r in self.requests if event is None or r.event == event]

    def __enter__(self) -> Receiver:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


def eventually(check: Callable[[], T], *, timeout_s: float = 20.0, what: str = "condition") -> T:
    """Poll ``check`` until it returns something truthy, or fail at the deadline."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}; last value: {value!r}")
        time.sleep(0.02)
