"""The HTTP/1.1 connection: uvicorn's httptools protocol with limits on the request head.

Why: uvicorn's httptools protocol takes headers of any size and number (16 MB
of them were accepted) and has no deadline for them, so a client that sends
a header byte every few seconds holds a connection forever (slowloris).
uvicorn's h11 protocol has a size limit, but answers it 400, and is much
slower than httptools on the completions hot path. Another server (granian,
hypercorn) was not worth it: hypercorn parses with h11 too, and granian runs
its own processes, so neither ``serve``'s SO_REUSEPORT supervisor nor the
tests' in-thread server would carry over.

What: ``LimitedHttpToolsProtocol`` measures the request line and headers as
they arrive, answers **431** past ``max_header_bytes`` or
``max_headers``, and **408** when a request's head is not complete
``header_timeout_s`` after its first byte (or after the connection opened,
for its first request; a connection that sent nothing by then is closed
without an answer, as an idle keep-alive connection is). Both answers are the
API's error shape with ``connection: close``. ``uvicorn_options`` turns
``ServerSettings`` into the options every uvicorn config here is built with.
"""

from __future__ import annotations

import asyncio
import functools
import json
from dataclasses import dataclass
from typing import Any

import httptools
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

from chatplane.settings import ServerSettings

# After a refusal the socket is half-closed and what the client still sends is
# read and dropped for this long: closing with unread bytes would send a reset,
# which can destroy the answer before the client reads it.
LINGER_S = 2.0


@dataclass(frozen=True)
class HeaderLimits:
    max_bytes: int
    max_count: int
    timeout_s: float


class _Stop(Exception):
    """Raised in ``on_headers_complete`` to stop parsing a refused request."""


class LimitedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with size, count and time limits on a request's head.

    Sizes are counted per chunk read, not per header, to keep the usual
    request free of extra work (a callback per header was most of this
    class's cost): a head that begins and ends in a chunk no larger than the
    limit is within it, so its headers are added up only when the chunk was
    larger or the head spanned chunks. httptools buffers a header's value
    until it ends, so a head still incomplete after a chunk is refused as
    soon as the chunks it came in pass the limit, at most one read past it.
    A request's timer is armed only if its head did not arrive in the chunk
    that began it, so the usual request pays for no timer either.
    """

    def __init__(self, *args: Any, limits: HeaderLimits, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.limits = limits
        self.reading_head = False  # from a request's first byte until its headers are complete
        self.head_chunks = 0  # bytes of the chunks that arrived while the head was incomplete
        self.check_head = False  # the head that ends in this chunk may be over the limit: add it up
        self.message_ended = False  # a request ended in the chunk being parsed
        self.head_timer: asyncio.TimerHandle | None = None
        self.refused = False

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self.head_timer = self.loop.call_later(self.limits.timeout_s, self._head_timed_out)

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_head_timer()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        # uvicorn's own, with the checks around feeding the parser.
        if self.refused:
            return
        self._unset_keepalive_if_required()
        continues_head = self.reading_head
        self.check_head = continues_head or len(data) > self.limits.max_bytes
        self.message_ended = False
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            if self.refused:  # on_headers_complete refused the request (_Stop, wrapped by httptools)
                return
            msg = "Invalid HTTP request received."
            self.logger.warning(msg)
            self.send_400_response(msg)
            return
        except httptools.HttpParserUpgrade:
            if self._should_upgrade():
                self.handle_websocket_upgrade()
            else:
                self._unsupported_upgrade_warning()
            return
        if not self.reading_head:
            return
        if continues_head:
            self.head_chunks += len(data)
        elif not self.message_ended:  # the head began this chunk (anything before it was blank lines)
            self.head_chunks = len(data)
        if self.head_chunks > self.limits.max_bytes:
            self._refuse_too_large()
        elif self.head_timer is None:
            self.head_timer = self.loop.call_later(self.limits.timeout_s, self._head_timed_out)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self.reading_head = True
        self.head_chunks = 0

    def on_headers_complete(self) -> None:
        self.reading_head = False
        self._cancel_head_timer()
        if len(self.headers) > self.limits.max_count or (
            self.check_head
            and len(self.url) + sum(len(name) + len(value) + 4 for name, value in self.headers)  # ": ", CRLF
            > self.limits.max_bytes
        ):
            self._refuse_too_large()
            raise _Stop
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        self.message_ended = True
        super().on_message_complete()

    def _cancel_head_timer(self) -> None:
        if self.head_timer is not None:
            self.head_timer.cancel()
            self.head_timer = None

    def _head_timed_out(self) -> None:
        self.head_timer = None
        if self.transport.is_closing():
            return
        if not self.reading_head:  # opened, and not a byte of a request since
            self.transport.close()
            return
        self._refuse(
            408, "request_timeout",
            f"The request's headers did not arrive within {self.limits.timeout_s:g} s.",
        )

    def _refuse_too_large(self) -> None:
        self._refuse(
            431, "request_header_fields_too_large",
            f"The request line and headers must be at most {self.limits.max_bytes} bytes "
            f"and {self.limits.max_count} headers.",
        )

    def _refuse(self, status: int, code: str, message: str) -> None:
        """Answer ``status`` in the API's error shape and close the connection,
        or, if a request before this one is still being answered (pipelining),
        close it after that answer without another."""
        self.refused = True
        self.reading_head = False
        self._cancel_head_timer()
        if self.cycle is not None and not self.cycle.response_complete:
            self.cycle.keep_alive = False
            return
        self._unset_keepalive_if_required()
        body = json.dumps({"error": {"code": code, "message": message}}, separators=(",", ":")).encode()
        head = [STATUS_LINE[status]]
        for name, value in self.server_state.default_headers:
            head.extend([name, b": ", value, b"\r\n"])
        head.append(b"content-type: application/json\r\ncontent-length: %d\r\nconnection: close\r\n\r\n" % len(body))
        self.transport.write(b"".join(head) + body)
        if self.transport.can_write_eof():
            self.transport.write_eof()
            self.loop.call_later(LINGER_S, self.transport.close)
        else:
            self.transport.close()


def uvicorn_options(server: ServerSettings) -> dict[str, Any]:
    """The uvicorn ``Config`` options that come from ``server``: the protocol
    with its header limits, the keep-alive timeout and the trusted proxies.
    Picklable, for ``serve``'s spawned workers."""
    limits = HeaderLimits(server.max_header_bytes, server.max_headers, server.header_timeout_s)
    return {
        "http": functools.partial(LimitedHttpToolsProtocol, limits=limits),
        "timeout_keep_alive": server.keep_alive_s,
        # Without trusted proxies, no middleware: uvicorn's default trusts 127.0.0.1.
        "proxy_headers": bool(server.forwarded_allow_ips),
        "forwarded_allow_ips": server.forwarded_allow_ips,
    }
