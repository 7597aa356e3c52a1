"""One error tree; each error carries its HTTP status and a stable code.

Every failure leaves the server as ``{"error": {"code", "message", ...}}``.
Domain code raises these; only ``install_error_handlers`` knows about HTTP.
``error_responses`` describes that shape to OpenAPI, for the routes to
declare the statuses they answer.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

log = logging.getLogger(__name__)


SHOWN = 64  # characters of a client's value an error message repeats


def shown(value: object) -> str:
    """``value`` as an error message repeats it: a 10 KB id is not echoed whole."""
    text = str(value)
    return text if len(text) <= SHOWN else text[:SHOWN] + "…"


class AppError(Exception):
    status: int = 500
    code: str = "internal_error"

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        field: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        if code:
            self.code = code
        self.field = field
        self.headers = headers

    def body(self) -> dict[str, Any]:
        error: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.field:
            error["field"] = self.field
        return {"error": error}


class Unauthorized(AppError):
    status = 401
    code = "unauthorized"


class NotFound(AppError):
    status = 404
    code = "not_found"


class Conflict(AppError):
    status = 409
    code = "conflict"


class PayloadTooLarge(AppError):
    status = 413
    code = "payload_too_large"


class UnsupportedMediaType(AppError):
    status = 415
    code = "unsupported_media_type"


class InvalidInput(AppError):
    """A body that parses but breaks a rule the schema cannot express."""

    status = 422
    code = "validation_error"

    def __init__(self, message: str, *, field: str | None = None, details: list | None = None):
        super().__init__(f"{field}: {message}" if field and not details else message, field=field)
        self.details = details or [{"field": field or "body", "message": message}]

    @classmethod
    def from_pydantic(cls, errors: list[dict[str, Any]], *, prefix: tuple[Any, ...] = ("body",)) -> InvalidInput:
        """Errors of a model validated by hand: where they are is the body (``prefix``)."""
        body = validation_body([{**e, "loc": prefix + tuple(e.get("loc", ()))} for e in errors])
        error = body["error"]
        return cls(error["message"], field=error["field"], details=error["details"])

    def body(self) -> dict[str, Any]:
        body = super().body()
        body["error"]["details"] = self.details
        return body


class FieldError(ValueError):
    """Raised by a schema's cross-field check to name the field at fault."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


# Pydantic puts the member it tried into the location of a union error: the
# tag of a discriminated union ("custom", "uponai-llm", "enum") or the type
# of a plain one ("constrained-str", "list[...]"). A client wants the field,
# so such a segment is dropped, but only right after a field that holds a
# union: elsewhere the same word may be the client's own key.
UNION_FIELDS = frozenset(
    {"response_engine", "general_tools", "tools", "variables", "post_chat_analysis_data", "language"}
)


def _is_union_member(part: str) -> bool:
    return not part.isidentifier() or part[:1].isupper() or part in (
        "end_chat", "custom", "extract_dynamic_variable", "string", "enum", "boolean", "number", "str")


def _field_name(loc: tuple[Any, ...]) -> str:
    # Drop the "body"/"query" prefix FastAPI adds (only there: a field may be
    # named "query"); keep list indexes readable.
    parts: list[str] = []
    last_field = None
    if loc and loc[0] in ("body", "query", "path", "header"):
        loc = loc[1:]
    for p in loc:
        if isinstance(p, str) and last_field in UNION_FIELDS and _is_union_member(p):
            continue
        parts.append(str(p))
        if isinstance(p, str):
            last_field = p
    out = ""
    for part in parts:
        out += f"[{part}]" if part.isdigit() else (f".{part}" if out else part)
    return out or "body"


def validation_body(errors: list[dict[str, Any]]) -> dict[str, Any]:
    details = []
    for err in errors:
        field = _field_name(tuple(err.get("loc", ())))
        message = err.get("msg", "invalid")
        cause = (err.get("ctx") or {}).get("error")
        if isinstance(cause, ValueError):
            message = str(cause)
            if isinstance(cause, FieldError):
                field = f"{field}.{cause.field}" if field != "body" else cause.field
        if err.get("type") == "json_invalid":
            field, message = "body", "body is not valid JSON"
        details.append({"field": field, "message": message})
    # A union that failed reports once per member it tried: "language: not a
    # string" beside "language[1]: bad locale". Keep the deeper, which names
    # what is actually wrong.
    fields = {d["field"] for d in details}
    details = [
        d for d in details
        if not any(f != d["field"] and (f.startswith(d["field"] + ".") or f.startswith(d["field"] + "["))
                   for f in fields)
    ]
    first = details[0] if details else {"field": "body", "message": "invalid request"}
    return {
        "error": {
            "code": "validation_error",
            "message": f"{first['field']}: {first['message']}",
            "field": first["field"],
            "details": details,
        }
    }


class ErrorDetail(BaseModel):
    field: str
    message: str


class ErrorInfo(BaseModel):
    code: str = Field(description="Stable and machine-readable, e.g. `chat_not_found`, `validation_error`.")
    message: str
    field: str | None = Field(
        default=None, description="The field at fault, e.g. `general_tools[0].url` (validation errors)."
    )
    details: list[ErrorDetail] | None = Field(default=None, description="Every field at fault (validation errors).")


class ErrorResponse(BaseModel):
    """The one shape every error has."""

    error: ErrorInfo


_ERROR_DESCRIPTIONS = {
    400: "The API key may use several workspaces and the call names none (`workspace_required`): "
         "name one in the `X-Chatplane-Workspace` header.",
    401: "No API key, or one that is invalid or revoked (`unauthorized`).",
    404: "The workspace is not one of this key's (`workspace_not_found`), or the resource is not in it.",
    409: "The resource is not in a state that allows this; `code` says why.",
    413: "The request body is larger than the server accepts (`payload_too_large`).",
    415: "A file of a type the server does not read, or a compressed body (`unsupported_media_type`).",
    422: "The request is not valid (`validation_error`); `field` names what is wrong.",
    502: "The model provider failed (`provider_error`); nothing was stored, send it again.",
    504: "The model provider did not answer in time (`provider_timeout`); nothing was stored.",
}


def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """The OpenAPI ``responses`` of these error statuses, all ``ErrorResponse``.

    A route's statuses are part of its contract: a client (or a schema-driven
    test) must find every status the route can answer in the document.
    """
    return {status: {"model": ErrorResponse, "description": _ERROR_DESCRIPTIONS[status]} for status in statuses}


def app_error_response(exc: AppError) -> JSONResponse:
    """How every ``AppError`` is answered (the app's handler, and what answers before it)."""
    return JSONResponse(exc.body(), status_code=exc.status, headers=exc.headers)


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(AppError)
    async def _app_error(_: Request, exc: AppError) -> JSONResponse:
        return app_error_response(exc)

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse(validation_body(list(exc.errors())), status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        if exc.status_code == 400 and isinstance(exc.__cause__, UnicodeDecodeError):
            # FastAPI's answer to a JSON body that is not UTF-8: as unreadable
            # as any other body that is not JSON, so the same 422.
            return JSONResponse(validation_body([{"type": "json_invalid", "loc": ("body",)}]), status_code=422)
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        message = exc.detail if isinstance(exc.detail, str) else "request failed"
        return JSONResponse(
            {"error": {"code": code, "message": message}},
            status_code=exc.status_code,
            headers=getattr(exc, "headers", None),
        )

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        # A bug, not the caller's fault: log it whole, tell the caller nothing internal.
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return JSONResponse(
            {"error": {"code": "internal_error", "message": "internal server error"}},
            status_code=500,
        )
