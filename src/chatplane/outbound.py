"""Calls this server makes on its users' behalf (custom tools, webhooks) may
not reach loopback, private, link-local or reserved addresses, unless the
``allow_private_networks`` setting says so: otherwise any tenant could make
the server probe the network it runs in (SSRF)."""

from __future__ import annotations

import asyncio
import ipaddress
import socket

import httpx

Address = ipaddress.IPv4Address | ipaddress.IPv6Address


class PrivateAddress(Exception):
    """The host resolves to an address outbound calls may not reach."""


def is_public(address: Address) -> bool:
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
        address = address.ipv4_mapped
    return address.is_global and not address.is_multicast


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
    if not allow_private:
        for address in addresses:
            if not is_public(address):
                raise PrivateAddress(
                    f"{host} resolves to {address}, a loopback, private, link-local or reserved address"
                )
    # IPv4 first: the one address we connect to should be the one most hosts can reach.
    return str(min(addresses, key=lambda a: a.version))
