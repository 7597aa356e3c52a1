"""Input guards that run before any route: the body-size limit, and NUL.

PostgreSQL cannot store U+0000 in text or JSON, so a NUL anywhere in the
path, the query or a JSON string would otherwise surface as a database error
(a 500) on PostgreSQL and be stored on SQLite. It is refused up front, on
every backend alike, with a 422.
"""

from __future__ import annotations

import json
import re

from starlette.types import ASGIApp, Message, Receive, Scope, Send


DRAIN_LIMIT = 16 * 1024 * 1024
# \u0000 in JSON text, not preceded by an escaped backslash.
_JSON_NUL = re.compile(rb"(?<!\\)(?:\\\\)*\\u0000")


def _nul_field(body: bytes) -> str:
    """Where the first NUL sits in a JSON body, as an error field name."""
    try:
        document = json.loads(body)
    except ValueError:
        return "body"

    def walk(node: object, path: str) -> str | None:
        if isinstance(node, str):
            return path if "\x00" in node else None
        if isinstance(node, list):
            items = enumerate(node)
            return next((f for i, v in items if (f := walk(v, f"{path}[{i}]"))), None)
        if isinstance(node, dict):
            for key, value in node.items():
                here = f"{path}.{key}" if path else key
                if "\x00" in key or (found := walk(value, here)):
                    return here if "\x00" in key else found
        return None

    return walk(document, "") or "body"


def replay_body(body: bytes, receive: Receive) -> Receive:
    """A ``receive`` that gives ``body`` (already read) as one message, then
    whatever ``receive`` gives (a disconnect)."""
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


class BodyLimit:
    """Answers 413 for a body over ``max_bytes``, declared or streamed.

    The body is read here (it is at most ``max_bytes``) and replayed to the
    app, so a route never sees a partial body.
    """

    def __init__(self, app: ASGIApp, *, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if "\x00" in scope["path"] or b"%00" in scope["query_string"]:
            await self._refuse(send, 422, "validation_error", "NUL characters are not accepted in a URL", "path")
            return
        if scope["method"] in ("GET", "HEAD", "OPTIONS", "DELETE"):
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await self._drain(receive, int(declared))
            await self._too_large(send)
            return
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_bytes:
                if message.get("more_body", False):
                    await self._drain(receive, None)
                await self._too_large(send)
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        if b"\x00" in body or (b"\\u0000" in body and _JSON_NUL.search(body)):
            await self._refuse(
                send, 422, "validation_error", "NUL (\\u0000) characters are not accepted", _nul_field(body)
            )
            return
        await self.app(scope, replay_body(body, receive), send)

    async def _drain(self, receive: Receive, declared: int | None) -> None:
        """Read (and drop) what the client is still sending, up to a bound.

        A client that writes its whole body before reading the answer (most
        do) gets a connection reset instead of the 413 if the server closes
        on unread bytes. Past the bound the connection is closed anyway.
        """
        if declared is not None and declared > DRAIN_LIMIT:
            return
        drained = 0
        while drained <= DRAIN_LIMIT:
            message = await receive()
            if message["type"] != "http.request":
                return
            drained += len(message.get("body", b""))
            if not message.get("more_body", False):
                return

    async def _too_large(self, send: Send) -> None:
        await self._refuse(
            send, 413, "payload_too_large", f"request body is larger than {self.max_bytes} bytes", None
        )

    async def _refuse(self, send: Send, status: int, code: str, message: str, field: str | None) -> None:
        error: dict[str, object] = {"code": code, "message": message}
        if field:
            error["field"] = field
            error["details"] = [{"field": field, "message": message}]
        payload = json.dumps({"error": error}).encode()
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(payload)).encode()),
                    (b"connection", b"close"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": payload})
