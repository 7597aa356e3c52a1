"""The request head's limits (issue 13): header size and count answer 431, a
head that takes too long answers 408, an idle keep-alive connection is closed,
X-Forwarded-For is believed only from a trusted proxy; ordinary requests,
keep-alive and pipelining still work.

Raw sockets against the real server (``chatplane.http`` under uvicorn), on
SQLite only: nothing here reaches the database.
"""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

import pytest
import uvicorn

from chatplane.http import uvicorn_options
from chatplane.settings import ServerSettings, Settings
from tests.conftest import Backend, served

LIMITS = {"max_header_bytes": 8192, "max_headers": 20, "header_timeout_s": 1.0, "keep_alive_s": 1.0}
GET = b"GET /healthz HTTP/1.1\r\nHost: test\r\n\r\n"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Backend]:
    with served("sqlite", tmp_path_factory.mktemp("http-limits"), server=LIMITS) as backend:
        yield backend


def connect(backend: Backend) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", backend.server.port), timeout=10)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def read_response(stream: BinaryIO) -> tuple[int, dict[str, str], bytes]:
    """One response from ``stream``: status, headers (lower-case names), body (by content-length)."""
    status_line = stream.readline()
    assert status_line.startswith(b"HTTP/1.1 "), status_line
    headers: dict[str, str] = {}
    while (line := stream.readline()) not in (b"\r\n", b""):
        name, _, value = line.decode("latin-1").partition(":")
        headers[name.strip().lower()] = value.strip()
    body = stream.read(int(headers.get("content-length", "0")))
    return int(status_line.split()[1]), headers, body


def assert_closed(sock: socket.socket) -> None:
    """The server closed the connection: end of file (or a reset) before the timeout."""
    try:
        assert sock.recv(65536) == b""
    except ConnectionResetError:
        pass


def assert_refused(sock: socket.socket, status: int, code: str) -> None:
    with sock.makefile("rb") as stream:
        got, headers, body = read_response(stream)
        assert got == status, body
        assert headers["connection"] == "close"
        error = json.loads(body)["error"]
        assert error["code"] == code and error["message"], body
        assert stream.read() == b""  # and nothing after it: the connection is closed


def request_with(*headers: bytes) -> bytes:
    return b"GET /healthz HTTP/1.1\r\nHost: test\r\n" + b"".join(h + b"\r\n" for h in headers) + b"\r\n"


def test_too_many_headers_answer_431(server: Backend) -> None:
    with connect(server) as sock:
        sock.sendall(request_with(*(b"X-H%d: v" % i for i in range(20))))  # 21 with Host
        assert_refused(sock, 431, "request_header_fields_too_large")


def test_as_many_headers_as_allowed_are_served(server: Backend) -> None:
    with connect(server) as sock, sock.makefile("rb") as stream:
        sock.sendall(request_with(*(b"X-H%d: %s" % (i, b"v" * 300) for i in range(19))))
        assert read_response(stream)[0] == 200


def test_a_header_with_a_nul_or_a_control_character_is_refused_by_the_parser(server: Backend) -> None:
    """Headers are the one way in that no JSON rule sees: httptools refuses NUL
    and other controls in them (400), so an Idempotency-Key or a key can never
    carry one. Bytes over 0x7F read as Latin-1 (valid text): nothing to refuse."""
    for value in (b"a\x00b", b"a\x01b", b"a\x7fb"):
        with connect(server) as sock, sock.makefile("rb") as stream:
            sock.sendall(request_with(b"Idempotency-Key: " + value))
            assert read_response(stream)[0] == 400, value
    with connect(server) as sock, sock.makefile("rb") as stream:
        sock.sendall(request_with(b"X-Latin: caf\xe9"))
        assert read_response(stream)[0] == 200


def test_one_huge_header_answers_431(server: Backend) -> None:
    with connect(server) as sock:
        sock.sendall(request_with(b"Cookie: " + b"c" * 65536))
        assert_refused(sock, 431, "request_header_fields_too_large")


def test_many_medium_headers_over_the_byte_limit_answer_431(server: Backend) -> None:
    with connect(server) as sock:
        sock.sendall(request_with(*(b"X-H%d: %s" % (i, b"v" * 1000) for i in range(12))))
        assert_refused(sock, 431, "request_header_fields_too_large")


def test_a_header_that_never_ends_answers_431_without_waiting_for_the_timeout(server: Backend) -> None:
    """httptools holds a header's value until it ends: the raw bytes are counted meanwhile."""
    with connect(server) as sock:
        started = time.monotonic()
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: test\r\nCookie: " + b"c" * 20000)
        assert_refused(sock, 431, "request_header_fields_too_large")
        assert time.monotonic() - started < LIMITS["header_timeout_s"]


def test_megabytes_of_headers_are_refused_and_the_answer_still_arrives(server: Backend) -> None:
    """The attacker's 16 MB (4 here): the server drops the rest it is sent
    before it closes, so the client is not reset before it reads the 431."""
    with connect(server) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: test\r\n" + b"X-Pad: " + b"p" * 4_000_000 + b"\r\n\r\n")
        assert_refused(sock, 431, "request_header_fields_too_large")


def test_a_head_sent_in_pieces_within_the_limits_is_served(server: Backend) -> None:
    request = request_with(*(b"X-H%d: %s" % (i, b"v" * 300) for i in range(15)))
    with connect(server) as sock, sock.makefile("rb") as stream:
        for start in range(0, len(request), 700):
            sock.sendall(request[start:start + 700])
            time.sleep(0.02)
        assert read_response(stream)[0] == 200


def test_slowloris_is_answered_408_after_the_header_timeout_and_others_are_served(server: Backend) -> None:
    with connect(server) as slow:
        started = time.monotonic()
        slow.sendall(b"GET /healthz HTTP/1.1\r\nHost: test\r\nX-Slow: ")
        slow.settimeout(0.3)
        answer = b""
        while not answer and time.monotonic() - started < 10:
            try:
                answer = slow.recv(65536)
            except TimeoutError:
                slow.sendall(b"a")  # a byte every 0.3 s: never idle, never done
                if time.monotonic() - started > 0.5:
                    with connect(server) as other, other.makefile("rb") as stream:
                        other.sendall(GET)
                        assert read_response(stream)[0] == 200
        elapsed = time.monotonic() - started
        assert answer.startswith(b"HTTP/1.1 408 "), answer
        assert b'"request_timeout"' in answer and b"connection: close" in answer
        assert LIMITS["header_timeout_s"] * 0.9 <= elapsed < LIMITS["header_timeout_s"] + 2
        slow.settimeout(5)
        assert_closed(slow)


def test_a_connection_that_sends_nothing_is_closed_after_the_header_timeout(server: Backend) -> None:
    with connect(server) as sock:
        started = time.monotonic()
        assert_closed(sock)  # no 408 for a request that never began (a browser's preconnect)
        assert LIMITS["header_timeout_s"] * 0.9 <= time.monotonic() - started < LIMITS["header_timeout_s"] + 2


def test_an_idle_keep_alive_connection_is_closed_after_keep_alive_s(server: Backend) -> None:
    with connect(server) as sock, sock.makefile("rb") as stream:
        sock.sendall(GET)
        assert read_response(stream)[0] == 200
        started = time.monotonic()
        assert stream.read() == b""
        assert LIMITS["keep_alive_s"] * 0.9 <= time.monotonic() - started < LIMITS["keep_alive_s"] + 2


def test_keep_alive_serves_several_requests_on_one_connection(server: Backend) -> None:
    with connect(server) as sock, sock.makefile("rb") as stream:
        for _ in range(5):
            sock.sendall(request_with(b"Accept: application/json", b"X-Trace: " + b"t" * 2000))
            status, headers, body = read_response(stream)
            assert (status, json.loads(body)) == (200, {"status": "ok"})
            assert headers.get("connection") != "close"
            time.sleep(0.3)  # idle, but less than keep_alive_s each time


def test_two_pipelined_requests_in_one_write_are_both_answered(server: Backend) -> None:
    with connect(server) as sock, sock.makefile("rb") as stream:
        sock.sendall(GET + b"GET /healthz?second HTTP/1.1\r\nHost: test\r\n\r\n")
        assert read_response(stream)[0] == 200
        assert read_response(stream)[0] == 200
        sock.sendall(GET)  # and the connection goes on
        assert read_response(stream)[0] == 200


def test_a_pipelined_post_and_the_start_of_the_next_head_in_one_write(server: Backend) -> None:
    """The bytes before a head that began mid-chunk belong to the request before it, not to the head."""
    body = json.dumps({"pad": "x" * 20000}).encode()
    post = request_with(b"Content-Type: application/json", b"Content-Length: %d" % len(body)).replace(b"GET", b"POST")
    with connect(server) as sock, sock.makefile("rb") as stream:
        sock.sendall(post + body + GET[:20])
        assert read_response(stream)[0] == 405
        sock.sendall(GET[20:])
        assert read_response(stream)[0] == 200


def test_an_oversized_head_pipelined_after_a_good_request_closes_after_its_answer(server: Backend) -> None:
    with connect(server) as sock, sock.makefile("rb") as stream:
        sock.sendall(GET + request_with(b"Cookie: " + b"c" * 65536))
        assert read_response(stream)[0] == 200
        rest = stream.read()  # the 431 only if the first answer was out before the second head was read
        assert rest == b"" or rest.startswith(b"HTTP/1.1 431 "), rest[:100]


# Trusted proxies: a plain ASGI app that says whom it sees, under the same options.

async def _whoami(scope, receive, send) -> None:  # type: ignore[no-untyped-def]
    if scope["type"] != "http":
        return
    body = json.dumps({"client": scope["client"][0], "scheme": scope["scheme"]}).encode()
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"%d" % len(body))]})
    await send({"type": "http.response.body", "body": body})


def _seen_through_a_proxy(server_settings: ServerSettings) -> dict[str, str]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.bind(("127.0.0.1", 0))
    config = uvicorn.Config(_whoami, log_level="warning", lifespan="off", **uvicorn_options(server_settings))
    server = uvicorn.Server(config)
    thread = threading.Thread(target=lambda: asyncio.run(server.serve(sockets=[sock])), daemon=True)
    thread.start()
    try:
        while not server.started:
            time.sleep(0.01)
        with socket.create_connection(sock.getsockname(), timeout=10) as client, client.makefile("rb") as stream:
            client.sendall(request_with(b"X-Forwarded-For: 203.0.113.7", b"X-Forwarded-Proto: https"))
            return json.loads(read_response(stream)[2])
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()


def test_x_forwarded_for_is_ignored_unless_the_peer_is_a_trusted_proxy() -> None:
    assert _seen_through_a_proxy(ServerSettings()) == {"client": "127.0.0.1", "scheme": "http"}
    trusted = ServerSettings(forwarded_allow_ips=["127.0.0.1"])
    assert _seen_through_a_proxy(trusted) == {"client": "203.0.113.7", "scheme": "https"}
    elsewhere = ServerSettings(forwarded_allow_ips=["10.0.0.0/8"])
    assert _seen_through_a_proxy(elsewhere) == {"client": "127.0.0.1", "scheme": "http"}


def test_forwarded_allow_ips_reads_a_comma_separated_environment_variable(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("CHATPLANE_SERVER__FORWARDED_ALLOW_IPS", "127.0.0.1, 10.0.0.0/8")
    assert Settings(data_dir=tmp_path).server.forwarded_allow_ips == ["127.0.0.1", "10.0.0.0/8"]
