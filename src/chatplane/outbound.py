"""Calls this server makes on its users' behalf (custom tools, webhooks, the
SMS inbound webhook) reach only public addresses, unless the
``allow_private_networks`` setting says so: otherwise any tenant could make
the server probe the network it runs in (SSRF).

"Public" is a policy, not a list of bad ranges: an address passes only if it
is globally routable unicast. A list of what to refuse always misses a form;
the attacker's test found IPv6 addresses that carry a loopback or private
IPv4 inside them (``::127.0.0.1``, ``64:ff9b::a00:1``, ``2002:7f00:1::``),
which a NAT64 gateway, a 6to4 relay or an old stack turns back into that
IPv4. So every embedded IPv4 is taken out and must be public too.

A refusal never says what a name resolved to: that would tell a tenant about
the internal network. It says ``REFUSED``, and callers may add the host the
tenant gave (which they know already).

``parse_url`` is the syntax half of the same rule, checked when a URL is
saved (``chatplane.schemas``) and again before each call: a host that
``getaddrinfo`` would read as an IPv4 address written in octal, hex or as one
number (``0177.0.0.1``, ``0x7f.1``, ``2130706433``) is refused rather than
resolved, as is anything httpx itself cannot send.
"""

from __future__ import annotations

import asyncio
import ipaddress
import re
import socket
from dataclasses import dataclass
from typing import Any

import httpx

Address = ipaddress.IPv4Address | ipaddress.IPv6Address

REFUSED = "refused: not a public address"

# IPv6 forms that stand for an IPv4 address: where a packet to one goes is
# decided by the IPv4 inside (by the host's own stack for IPv4-compatible,
# by a NAT64 gateway for the well-known prefix). Mapped is ``ipv4_mapped``.
_STAND_INS = (
    ipaddress.IPv6Network("::/96"),  # IPv4-compatible (RFC 4291, deprecated); holds :: and ::1 too
    ipaddress.IPv6Network("64:ff9b::/96"),  # NAT64 well-known prefix (RFC 6052)
)
# Not global, though Python 3.11's tables (older than these RFCs) say they are.
_NOT_GLOBAL = (
    # NAT64 local-use (RFC 8215): the operator picks the gateway and where in
    # the address the IPv4 sits, so there is no embedded address to check.
    ipaddress.IPv6Network("64:ff9b:1::/48"),
    ipaddress.IPv6Network("3fff::/20"),  # documentation (RFC 9637)
)


class PrivateAddress(Exception):
    """The host resolves to an address outbound calls may not reach.

    Its message is always ``REFUSED``: never the address it resolved to.
    """

    def __init__(self, message: str = REFUSED) -> None:
        super().__init__(message)


class BadURL(ValueError):
    """A URL no outbound call will be made to, whatever it resolves to.

    A ``ValueError``, so that a pydantic validator raising it answers 422.
    """


def is_public(address: Address) -> bool:
    """True when ``address`` is globally routable unicast, and so is every
    IPv4 address embedded in it (IPv4-mapped and -compatible, NAT64, 6to4,
    Teredo server and client)."""
    if isinstance(address, ipaddress.IPv4Address):
        return _routable(address)
    if any(address in network for network in _NOT_GLOBAL) or address.is_site_local:
        return False
    if address.ipv4_mapped is not None:
        return _routable(address.ipv4_mapped)
    if any(address in network for network in _STAND_INS):
        return _routable(ipaddress.IPv4Address(int(address) & 0xFFFF_FFFF))
    # 6to4 and Teredo are IPv6 addresses of their own, routed through relays
    # that unwrap the IPv4 inside: both must be public. (Teredo's 2001::/32
    # is not global in Python's tables; its IPv4s are checked all the same.)
    embedded = ([address.sixtofour] if address.sixtofour else []) + list(address.teredo or ())
    return all(_routable(v4) for v4 in embedded) and _routable(address)


def _routable(address: Address) -> bool:
    return (
        address.is_global
        and not address.is_multicast
        and not address.is_reserved
        and not address.is_unspecified
    )


async def resolve(host: str, port: int, *, allow_private: bool) -> str:
    """One address of ``host`` to connect to, after checking all of them.

    Raises ``PrivateAddress`` when any address is not public (and that is not
    allowed), ``httpx.ConnectError`` when the name does not resolve.
    """
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise httpx.ConnectError(f"cannot resolve {host}: {exc.strerror or exc}") from None
    addresses = [ipaddress.ip_address(info[4][0].split("%", 1)[0]) for info in infos]
    if not addresses:
        raise httpx.ConnectError(f"cannot resolve {host}")
    if not allow_private and not all(is_public(address) for address in addresses):
        raise PrivateAddress()
    # IPv4 first: the one address we connect to should be the one most hosts can reach.
    return str(min(addresses, key=lambda a: a.version))


async def resolve_url(url: httpx.URL, *, allow_private: bool) -> str:
    """``resolve`` for the host and port a request to ``url`` connects to.

    By ``raw_host``, the name as httpx sends it (IDNA 2008): ``host`` is the
    Unicode form, which the resolver would encode by the older IDNA rules,
    perhaps into another name (``straße`` is ``strasse`` there) than the one
    called.
    """
    port = url.port or (443 if url.scheme == "https" else 80)
    return await resolve(url.raw_host.decode("ascii"), port, allow_private=allow_private)


_LABEL = re.compile(r"[a-z0-9_-]+")
# The WHATWG URL rule: a host whose last label is a number is an IPv4 address.
_NUMBER = re.compile(r"[0-9]+|0x[0-9a-f]*")


def parse_url(value: str) -> httpx.URL:
    """``value`` as the URL it will be called at; ``BadURL`` (saying why) when
    it is not an absolute http(s) URL with a host httpx can send to and that
    means one thing to every resolver."""
    try:
        url = httpx.URL(value)
    except httpx.InvalidURL as exc:
        raise BadURL(f"must be an absolute http(s) URL: {exc}") from None
    if url.scheme not in ("http", "https"):
        raise BadURL("must be an absolute http(s) URL")
    if url.port is not None and not 1 <= url.port <= 65535:
        raise BadURL(f"must be an absolute http(s) URL: port {url.port} is out of range")
    _check_host(url.raw_host.decode("ascii", errors="replace").lower())
    return url


def _check_host(host: str) -> None:
    if not host:
        raise BadURL("must be an absolute http(s) URL with a host")
    if ":" in host:  # httpx has taken the brackets off an IPv6 literal
        try:
            # A zone id ("%25eth0") names an interface of this server: no tenant's business.
            valid = ipaddress.IPv6Address(host).scope_id is None
        except ValueError:
            valid = False
        if not valid:
            raise BadURL(f"must be an absolute http(s) URL: {host!r} is not an IPv6 address")
        return
    labels = host.removesuffix(".").split(".")
    if not all(_LABEL.fullmatch(label) for label in labels):
        raise BadURL(f"must be an absolute http(s) URL: {host!r} is not a host name")
    if _NUMBER.fullmatch(labels[-1]):
        # getaddrinfo reads "0177.0.0.1", "0x7f.1", "127.1" and "2130706433"
        # all as 127.0.0.1: only the one way of writing it that everyone
        # reads alike is taken.
        try:
            canonical = str(ipaddress.IPv4Address(host)) == host
        except ValueError:
            canonical = False
        if not canonical:
            raise BadURL(
                f"must be an absolute http(s) URL: {host!r} is not an IPv4 address in the form a.b.c.d "
                "(four decimal numbers from 0 to 255, without leading zeros)"
            )


class TooLarge(Exception):
    """The answer is longer than the caller's limit (read no further than that)."""


@dataclass(frozen=True, slots=True)
class Answer:
    status: int
    headers: httpx.Headers
    body: bytes
    url: httpx.URL  # where it came from (after redirects, for ``fetch``)

    @property
    def charset(self) -> str | None:
        return httpx.Response(self.status, headers=self.headers).charset_encoding


async def send(
    http: httpx.AsyncClient,
    method: str,
    url: httpx.URL,
    *,
    allow_private: bool,
    max_bytes: int,
    timeout_s: float,
    content: bytes | None = None,
    headers: dict[str, str] | None = None,
) -> Answer:
    """One request to ``url``, checked by this module's rule just before.

    The connection goes to the very address that was checked (so a DNS answer
    that changes in between cannot point it elsewhere), with the original
    Host and TLS name. Redirects are not followed. Raises ``PrivateAddress``,
    ``TooLarge`` (past ``max_bytes``, declared or read) and httpx's errors.
    """
    address = await resolve_url(url, allow_private=allow_private)
    headers = {**(headers or {}), "Host": url.netloc.decode("ascii")}
    extensions: dict[str, Any] = {}
    if url.scheme == "https":
        extensions["sni_hostname"] = url.host  # the certificate is checked against the name, not the address
        # The pool knows connections by address: never leave one verified
        # for this name to be reused for another name on the same address.
        headers["Connection"] = "close"
    async with http.stream(
        method, url.copy_with(host=address), content=content, headers=headers, timeout=timeout_s,
        extensions=extensions,
    ) as response:
        declared = response.headers.get("content-length")
        if declared and declared.isascii() and declared.isdigit() and int(declared) > max_bytes:
            raise TooLarge
        size = 0
        chunks: list[bytes] = []
        async for chunk in response.aiter_bytes():
            size += len(chunk)
            if size > max_bytes:
                raise TooLarge
            chunks.append(chunk)
        return Answer(response.status_code, response.headers, b"".join(chunks), url)


class TooManyRedirects(Exception):
    pass


async def fetch(
    http: httpx.AsyncClient,
    url: str,
    *,
    allow_private: bool,
    max_bytes: int,
    timeout_s: float,
    max_redirects: int,
    headers: dict[str, str] | None = None,
) -> Answer:
    """GET ``url``, following redirects, each one checked as the first was
    (``parse_url`` and the address rule): a public page cannot redirect the
    server into its own network. ``timeout_s`` bounds the whole of it,
    redirects and a slowly sent body included (``TimeoutError``). Raises
    ``BadURL`` for a URL (or a redirect's ``Location``) no call is made to."""
    target = parse_url(url)
    async with asyncio.timeout(timeout_s):
        for _ in range(max_redirects + 1):
            answer = await send(http, "GET", target, allow_private=allow_private, max_bytes=max_bytes,
                                timeout_s=timeout_s, headers=headers)
            location = answer.headers.get("location")
            if answer.status not in (301, 302, 303, 307, 308) or not location:
                return answer
            try:
                target = parse_url(str(target.join(location)))
            except httpx.InvalidURL as exc:
                raise BadURL(f"redirect to a URL that cannot be called: {exc}") from None
        raise TooManyRedirects(f"more than {max_redirects} redirects")
