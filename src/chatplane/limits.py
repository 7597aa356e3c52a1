"""Input guards that run before any route: one rule for what enters.

- A body over the size limit answers 413; a body sent compressed
  (``Content-Encoding`` other than ``identity``) 415.
- Every string that enters (the path, each query parameter, every string and
  key of a JSON body) must be valid UTF-8 / Unicode with no NUL
  (``text.bad_text``), else 422 naming the field: PostgreSQL cannot store NUL
  and nobody can encode a lone surrogate, so either would otherwise be a 500
  (or, on SQLite, a stored row that breaks every read of it).
- A JSON body may nest at most ``MAX_DEPTH`` levels and carry only finite
  numbers, integers within 64 bits: deeper documents make recursive code
  (parsing, validation, rendering) overflow the stack, and a number out of
  those ranges is refused by the databases.

Uploads (multipart bodies to the paths ``InputGuard`` is given as
``upload_paths``: knowledge-base files) are not read here: they may be far
larger than a JSON body, so they stream through to the route's form parser
(which spools files to disk), counted on the way: past ``max_upload_bytes``
the read raises ``PayloadTooLarge`` (413). The route checks their fields.

Form bodies (Twilio's webhooks) are not checked here: what Twilio sends is a
person's text, which cannot be refused; the route keeps it ``text.clean``.
Headers need no check: the HTTP parser refuses NUL and control bytes in
them, and bytes read as Latin-1 are always valid Unicode.

A refused body of a caller without a valid API key answers 401 instead:
who may call is settled before what was sent.

The body is read here once and replayed to the app; a JSON body's parsed
document is left in the scope (``PARSED_JSON``) for the completion fast path.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any
from urllib.parse import unquote_to_bytes

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from chatplane.auth import authenticate
from chatplane.errors import PayloadTooLarge, Unauthorized
from chatplane.text import bad_text, clean

DRAIN_LIMIT = 16 * 1024 * 1024
MAX_DEPTH = 64
INT64 = 2**63
FIELD_SHOWN = 200  # a field path in an error is cut here (its keys are the client's)
PARSED_JSON = "chatplane.json"  # scope key: the JSON body, parsed and checked
FORM_TYPES = ("application/x-www-form-urlencoded", "multipart/form-data")

_STRING = re.compile(r'"(?:[^"\\]|\\.)*"', re.DOTALL)
_BRACKET = re.compile(r"[\[\]{}]")


class Refused(Exception):
    def __init__(self, status: int, code: str, message: str, field: str | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.field = status, code, message, field
        self.headers = headers or {}


def _invalid(field: str, message: str) -> Refused:
    """A 422 naming ``field``, which holds the client's own keys: shown cut
    short, with what made it refused (NUL, a surrogate) as U+FFFD."""
    return Refused(422, "validation_error", message, clean(field[:FIELD_SHOWN]))


def check_url(scope: Scope) -> None:
    """The path and each query parameter: UTF-8 once percent-decoded, no NUL."""
    raw_path: bytes = scope.get("raw_path") or scope["path"].encode()
    if b"%" in raw_path or not raw_path.isascii() or "\x00" in scope["path"]:
        _check_bytes(unquote_to_bytes(raw_path), "path")
    query: bytes = scope["query_string"]
    if query and (b"%" in query or not query.isascii()):
        for part in query.split(b"&"):
            name, _, value = part.partition(b"=")
            shown = unquote_to_bytes(name.replace(b"+", b" ")).decode("utf-8", "replace")
            _check_bytes(unquote_to_bytes(name.replace(b"+", b" ")), shown or "query")
            _check_bytes(unquote_to_bytes(value.replace(b"+", b" ")), shown or "query")


def _check_bytes(data: bytes, field: str) -> None:
    try:
        decoded = data.decode("utf-8")
    except UnicodeDecodeError:
        raise _invalid(field, "not valid UTF-8") from None
    if "\x00" in decoded:
        raise _invalid(field, "NUL (\\u0000) characters are not accepted")


def check_json(body: bytes) -> Any:
    """The parsed document of a JSON body that follows the rule; raises ``Refused``."""
    try:
        document = body.decode("utf-8")
    except UnicodeDecodeError:
        hint = " (it looks compressed)" if body[:2] == b"\x1f\x8b" else (
            " (it looks like UTF-16)" if b"\x00" in body[:4] else "")
        raise _invalid("body", f"body is not UTF-8{hint}; send JSON encoded as UTF-8") from None
    if document.count("[") + document.count("{") > MAX_DEPTH and _depth(document) > MAX_DEPTH:
        raise _invalid("body", f"JSON nested more than {MAX_DEPTH} levels deep")
    try:
        value = json.loads(document, parse_int=_int, parse_float=_float, parse_constant=_constant)
    except Refused:
        raise
    except (ValueError, RecursionError):
        if "\x00" in document:  # a raw NUL is a control character JSON does not allow
            raise _invalid("body", "NUL (\\u0000) characters are not accepted") from None
        raise _invalid("body", "body is not valid JSON") from None
    if "\\u" in document:  # only an escape brings a surrogate or NUL into the decoded strings
        found = _bad_string(value, "")
        if found:
            raise _invalid(*found)
    return value


def _depth(document: str) -> int:
    deepest = depth = 0
    for bracket in _BRACKET.findall(_STRING.sub('""', document)):
        depth += 1 if bracket in "[{" else -1
        deepest = max(deepest, depth)
    return deepest


def _int(digits: str) -> int:
    value = int(digits)
    if not -INT64 <= value < INT64:
        raise _invalid("body", f"integer out of range (64 bits): {digits[:40]}")
    return value


def _float(digits: str) -> float:
    value = float(digits)
    if not math.isfinite(value):
        raise _invalid("body", f"number out of range: {digits[:40]}")
    return value


def _constant(name: str) -> float:
    raise _invalid("body", f"{name} is not a JSON number")


def _bad_string(node: Any, path: str) -> tuple[str, str] | None:
    """The first string or key of ``node`` that ``bad_text`` refuses: (field, why)."""
    if isinstance(node, str):
        problem = bad_text(node)
        return (path or "body", problem) if problem else None
    if isinstance(node, list):
        for index, item in enumerate(node):
            if found := _bad_string(item, f"{path}[{index}]"):
                return found
    elif isinstance(node, dict):
        for key, item in node.items():
            here = f"{path}.{key}" if path else key
            if problem := bad_text(key):
                return here, f"key: {problem}"
            if found := _bad_string(item, here):
                return found
    return None


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


def counted(receive: Receive, limit: int) -> Receive:
    """``receive`` that raises ``PayloadTooLarge`` once more than ``limit`` bytes came."""
    size = 0

    async def count() -> Message:
        nonlocal size
        message = await receive()
        size += len(message.get("body", b""))
        if size > limit:
            raise PayloadTooLarge(f"request body is larger than {limit} bytes")
        return message

    return count


def _content_type(scope: Scope) -> str:
    for name, value in scope["headers"]:
        if name == b"content-type":
            return value.decode("latin-1").partition(";")[0].strip().lower()
    return ""


class InputGuard:
    """Applies the module's rule to every request before the app sees it.

    The body is read here (it is at most ``max_bytes``) and replayed to the
    app, so a route never sees a partial body.
    """

    def __init__(
        self, app: ASGIApp, *, max_bytes: int, upload_paths: tuple[str, ...] = (), max_upload_bytes: int = 0
    ) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.upload_paths = upload_paths  # path prefixes
        self.max_upload_bytes = max_upload_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        try:
            check_url(scope)
        except Refused as refused:
            await self._refuse(send, refused)
            return
        if scope["method"] in ("GET", "HEAD", "OPTIONS", "DELETE"):
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        encoding = headers.get(b"content-encoding", b"identity").strip().lower()
        upload = (
            self.upload_paths and scope["path"].startswith(self.upload_paths)
            and _content_type(scope) == "multipart/form-data" and encoding in (b"identity", b"")
        )
        limit = self.max_upload_bytes if upload else self.max_bytes
        declared = headers.get(b"content-length")
        if declared is not None and declared.isascii() and declared.isdigit() and int(declared) > limit:
            await self._drain(receive, int(declared))
            await self._too_large(send, limit)
            return
        if upload:
            await self.app(scope, counted(receive, limit), send)
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
                await self._too_large(send, self.max_bytes)
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        if encoding not in (b"identity", b""):
            await self._refuse(send, Refused(
                415, "unsupported_media_type",
                f"Content-Encoding {encoding.decode('latin-1')[:40]} is not accepted; send the body uncompressed"))
            return
        content_type = _content_type(scope)
        if body and content_type not in FORM_TYPES:
            try:
                scope[PARSED_JSON] = check_json(body)
            except Refused as refused:
                await self._refuse(send, await self._unauthenticated(scope) or refused)
                return
        await self.app(scope, replay_body(body, receive), send)

    async def _unauthenticated(self, scope: Scope) -> Refused | None:
        """A 401 for a caller without a valid key, which beats a refused body
        as it beats validation in the routes (every JSON route needs a key)."""
        authorization = dict(scope["headers"]).get(b"authorization", b"").decode("latin-1")
        try:
            await authenticate(scope["app"].state.principals, authorization)
        except Unauthorized as error:
            return Refused(error.status, error.code, error.message, headers=error.headers)
        return None

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

    async def _too_large(self, send: Send, limit: int) -> None:
        await self._refuse(send, Refused(413, "payload_too_large", f"request body is larger than {limit} bytes"))

    async def _refuse(self, send: Send, refused: Refused) -> None:
        error: dict[str, object] = {"code": refused.code, "message": refused.message}
        if refused.field:
            error["message"] = f"{refused.field}: {refused.message}"
            error["field"] = refused.field
            error["details"] = [{"field": refused.field, "message": refused.message}]
        payload = json.dumps({"error": error}).encode()
        await send(
            {
                "type": "http.response.start",
                "status": refused.status,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(payload)).encode()),
                    (b"connection", b"close"),
                    *((name.lower().encode(), value.encode()) for name, value in refused.headers.items()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": payload})
