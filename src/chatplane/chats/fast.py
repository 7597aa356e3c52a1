"""The completion route's common case, answered before FastAPI's routing.

``POST /api/chats/{chat_id}/completions`` is the hot path: every user message
is one. FastAPI's routing, dependency solving and request wrapping cost about
a tenth of a turn's CPU (py-spy, ``bench/peers.py``), for work that is fixed
for this one route: find the key, validate a two-field body, read one header.

``CompletionFastPath`` does exactly that for a request it can answer without
judgement calls: a known key, a JSON body that validates, no streaming. It
then calls what the route calls (``routes.complete``: the completion's work
and its answer, said once) and answers the route's answers, errors included
(``AppError`` as the app's handler renders it). Everything else (a missing or
unknown key, a body FastAPI would refuse, a long Idempotency-Key, another
content type, ``Accept: text/event-stream``) goes on to the route unchanged,
which gives its usual answer; so a request FastAPI refuses is refused by
FastAPI. The route stays the documented one (OpenAPI) and the fallback.
"""

from __future__ import annotations

import re
from typing import Any

from pydantic import ValidationError
from starlette.datastructures import Headers
from starlette.types import ASGIApp, Receive, Scope, Send

from chatplane.auth import bearer_token
from chatplane.chats.routes import IDEMPOTENCY_KEY_MAX, complete, wants_event_stream
from chatplane.chats.schemas import ChatCompletionRequest
from chatplane.errors import AppError, app_error_response
from chatplane.limits import PARSED_JSON, replay_body

# The route's own pattern: {chat_id} is one path segment.
_COMPLETIONS = re.compile(r"/api/chats/([^/]+)/completions")


class CompletionFastPath:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        found = _COMPLETIONS.fullmatch(scope["path"]) if scope["type"] == "http" else None
        if found is None or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        body, disconnected = await _read(receive)
        if disconnected:
            return
        request = await _request(scope)
        if request is None:  # the route answers it, whatever the answer is
            await self.app(scope, replay_body(body, receive), send)
            return
        principal, completion, idempotency_key = request
        try:
            response = await complete(scope["app"].state.turns, principal, found[1], completion, idempotency_key)
        except AppError as exc:
            response = app_error_response(exc)
        await response(scope, receive, send)


async def _read(receive: Receive) -> tuple[bytes, bool]:
    chunks = []
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return b"", True
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(chunks), False


async def _request(scope: Scope) -> tuple[Any, ChatCompletionRequest, str | None] | None:
    """The key's principal, the body and the Idempotency-Key, if nothing about
    the request needs the route's judgement; else None."""
    headers = Headers(scope=scope)
    if wants_event_stream(headers.get("accept", "")):
        return None
    content_type = headers.get("content-type", "").partition(";")[0].strip().lower()
    if not (content_type == "application/json" or (content_type.startswith("application/")
                                                     and content_type.endswith("+json"))):
        return None
    idempotency_key = headers.get("idempotency-key")
    if idempotency_key is not None and len(idempotency_key) > IDEMPOTENCY_KEY_MAX:
        return None
    token = bearer_token(headers.get("authorization", ""))
    if token is None:
        return None
    if PARSED_JSON not in scope:  # no body, or not JSON (InputGuard parsed and checked it)
        return None
    try:
        completion = ChatCompletionRequest.model_validate(scope[PARSED_JSON])
    except ValidationError:  # not this body
        return None
    principal = await scope["app"].state.principals.get(token)
    if principal is None:
        return None
    return principal, completion, idempotency_key
