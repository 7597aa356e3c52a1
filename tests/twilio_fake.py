"""A stand-in for Twilio's REST API on loopback: ``POST
/2010-04-01/Accounts/{sid}/Messages.json``, as the ``twilio`` package calls it.

Records every text it is asked to send (with the Basic credentials it came
with) and answers 201 with a message resource, or, when a failure was
scripted for the recipient, Twilio's error document with that status. A
recipient's next message SIDs may be scripted too (Twilio's are unique; a
test can make one collide with a SID already stored), and its answers
stalled (the text taken, the answer later than the client waits).
"""

from __future__ import annotations

import base64
import json
import re
import threading
import time
import uuid
from collections import defaultdict, deque
from dataclasses import dataclass
from email.utils import formatdate
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs

_MESSAGES = re.compile(r"^/2010-04-01/Accounts/(AC[0-9a-fA-F]{32})/Messages\.json$")


@dataclass(frozen=True)
class SentText:
    account_sid: str
    username: str
    password: str
    to: str
    from_: str
    body: str
    sid: str


@dataclass(frozen=True)
class Failure:
    status: int = 500
    code: int = 20500
    message: str = "scripted failure"


class FakeTwilio:
    def __init__(self) -> None:
        self.texts: list[SentText] = []
        self.failures: dict[str, deque[Failure]] = defaultdict(deque)
        self.sids: dict[str, deque[str]] = defaultdict(deque)
        self.stalls: dict[str, float] = {}
        self.lock = threading.Lock()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                raw = self.rfile.read(int(self.headers.get("content-length", "0")))
                match = _MESSAGES.match(self.path)
                if match is None:
                    return self._answer(404, {"code": 20404, "message": "not found", "status": 404})
                form = {k: v[0] for k, v in parse_qs(raw.decode(), keep_blank_values=True).items()}
                scheme, _, encoded = self.headers.get("authorization", "").partition(" ")
                username, _, password = base64.b64decode(encoded).decode().partition(":") if scheme == "Basic" else ("", "", "")
                if username != match.group(1) or not password:
                    return self._answer(401, {"code": 20003, "message": "Authenticate", "status": 401})
                with fake.lock:
                    queued = fake.failures.get(form.get("To", ""))
                    failure = queued.popleft() if queued else None
                    if failure is None:
                        scripted = fake.sids.get(form.get("To", ""))
                        sid = scripted.popleft() if scripted else "SM" + uuid.uuid4().hex
                        text = SentText(match.group(1), username, password, form.get("To", ""),
                                        form.get("From", ""), form.get("Body", ""), sid)
                        fake.texts.append(text)
                    stall = fake.stalls.get(form.get("To", ""), 0.0)
                if stall:  # taken, and the answer comes too late for the client
                    time.sleep(stall)
                if failure is not None:
                    return self._answer(failure.status, {"code": failure.code, "message": failure.message,
                                                         "more_info": "https://www.twilio.com/docs/errors",
                                                         "status": failure.status})
                self._answer(201, {
                    "sid": text.sid, "account_sid": text.account_sid, "to": text.to, "from": text.from_,
                    "body": text.body, "status": "queued", "direction": "outbound-api", "num_segments": "1",
                    "num_media": "0", "date_created": formatdate(usegmt=True), "api_version": "2010-04-01",
                    "uri": f"/2010-04-01/Accounts/{text.account_sid}/Messages/{text.sid}.json",
                })

            def _answer(self, status: int, body: dict[str, Any]) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                try:
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):  # a stalled answer's client is gone
                    pass

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def fail(self, to: str, *failures: Failure) -> None:
        """The next texts to ``to`` fail like this, one failure each."""
        with self.lock:
            self.failures[to].extend(failures)

    def stall(self, to: str, seconds: float) -> None:
        """Texts to ``to`` are taken (recorded as sent) but answered only after ``seconds``."""
        with self.lock:
            self.stalls[to] = seconds

    def answer_with(self, to: str, *sids: str) -> None:
        """The next texts to ``to`` that are accepted get these message SIDs, one each."""
        with self.lock:
            self.sids[to].extend(sids)

    def sent_to(self, to: str) -> list[SentText]:
        with self.lock:
            return [t for t in self.texts if t.to == to]

    def __enter__(self) -> FakeTwilio:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
