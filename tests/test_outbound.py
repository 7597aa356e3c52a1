"""Outbound calls by policy (``chatplane.outbound``): only public addresses,
embedded IPv4s included; malformed URLs refused when saved; a webhook that
may not be called is tried once, logged as refused, and not retried.

The end-to-end tests run a server of their own with ``allow_private_networks``
off and fast retries, and point webhooks at a receiver on loopback through
IPv6 forms of 127.0.0.1: a leak would reach it (or time out and be retried),
and fail the test either way.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from ipaddress import IPv4Address, IPv6Address, ip_address
from typing import Any

import pytest
from sqlalchemy import select, update

from chatplane import outbound
from chatplane.models import Job, WebhookDelivery
from chatplane.settings import JobSettings
from tests.chat_helpers import make_agent, make_chat, make_llm
from tests.conftest import Api, Backend, assert_error, served, tenant
from tests.webhook_receiver import Receiver, eventually

# --- the policy over a table of addresses ------------------------------------------


def mapped(v4: str) -> str:
    return str(IPv6Address((0xFFFF << 32) | int(IPv4Address(v4))))


def compatible(v4: str) -> str:
    return str(IPv6Address(int(IPv4Address(v4))))


def nat64(v4: str, prefix: int = 0x0064_FF9B << 96) -> str:
    return str(IPv6Address(prefix | int(IPv4Address(v4))))


def nat64_local(v4: str) -> str:
    return nat64(v4, prefix=0x0064_FF9B_0001 << 80)


def sixtofour(v4: str) -> str:
    address = IPv6Address((0x2002 << 112) | (int(IPv4Address(v4)) << 80) | 1)
    assert address.sixtofour == IPv4Address(v4)
    return str(address)


def teredo(server: str, client: str, port: int = 40000) -> str:
    # 2001:0:server:flags:~port:~client (RFC 4380: port and client are stored inverted)
    address = IPv6Address(
        (0x2001_0000 << 96) | (int(IPv4Address(server)) << 64) | (0x8000 << 48)
        | ((~port & 0xFFFF) << 32) | (~int(IPv4Address(client)) & 0xFFFF_FFFF)
    )
    assert address.teredo == (IPv4Address(server), IPv4Address(client))
    return str(address)


PUBLIC_V4 = "8.8.8.8"
NOT_PUBLIC_V4 = ["127.0.0.1", "10.0.0.5", "169.254.169.254", "100.64.0.1"]
EMBEDDINGS = {
    "mapped": mapped, "compatible": compatible, "nat64": nat64, "6to4": sixtofour,
    "teredo-server": lambda v4: teredo(v4, PUBLIC_V4), "teredo-client": lambda v4: teredo(PUBLIC_V4, v4),
}

REFUSED_ADDRESSES = [
    *NOT_PUBLIC_V4,
    "0.0.0.0", "255.255.255.255", "240.0.0.1", "224.0.0.1", "192.168.1.1", "172.16.0.1",
    "::1", "::", "fe80::1", "fc00::1", "fec0::1", "ff0e::1", "2001:db8::1", "3fff::1",
    *(embed(v4) for embed in EMBEDDINGS.values() for v4 in NOT_PUBLIC_V4),
    # NAT64 local-use: the operator decides what it reaches, even with a public IPv4 in it.
    nat64_local(PUBLIC_V4), nat64_local("127.0.0.1"),
    # Teredo itself (2001::/32) is not globally routable, whatever it carries.
    teredo(PUBLIC_V4, "1.1.1.1"),
]
PUBLIC_ADDRESSES = [
    PUBLIC_V4, "1.1.1.1", "2001:4860:4860::8888", "2606:4700:4700::1111",
    mapped(PUBLIC_V4), compatible(PUBLIC_V4), nat64(PUBLIC_V4), sixtofour(PUBLIC_V4),
]


@pytest.mark.parametrize("address", REFUSED_ADDRESSES)
def test_addresses_that_are_not_public(address: str) -> None:
    assert not outbound.is_public(ip_address(address))


@pytest.mark.parametrize("address", PUBLIC_ADDRESSES)
def test_public_addresses(address: str) -> None:
    assert outbound.is_public(ip_address(address))


@pytest.mark.parametrize("host", ["localhost", "127.0.0.1", "::127.0.0.1", "64:ff9b::a00:5", "2002:a9fe:a9fe::1"])
def test_a_refusal_never_says_what_the_host_resolved_to(host: str) -> None:
    with pytest.raises(outbound.PrivateAddress) as refused:
        asyncio.run(outbound.resolve(host, 80, allow_private=False))
    assert str(refused.value) == outbound.REFUSED == "refused: not a public address"
    # Allowed, the same host resolves to an address to connect to.
    assert ip_address(asyncio.run(outbound.resolve(host, 80, allow_private=True)))


# --- URL syntax, when saved ---------------------------------------------------------

MALFORMED_URLS = [
    "http://0177.0.0.1/hook",  # octal: httpx refuses it, and the job used to retry it for hours
    "http://0x7f.1/hook",  # hex and short: getaddrinfo reads it as 127.0.0.1
    "http://0x7f000001/hook",
    "http://2130706433/hook",  # one number
    "http://127.1/hook",
    "http://127.0.0.01/hook",
    "http://127.0.0.1./hook",
    "http://1.2.3.4.5/hook",
    "http://256.0.0.1/hook",
    "http://[::zz]/hook",
    "http://[fe80::1%25eth0]/hook",
    "http://exa mple.com/hook",
    "http://a..b/hook",
    "http://example.com:99999/hook",
    "http://example.com:0/hook",
    "http:///hook",
    "http://:80/hook",
    "https://",
    "ftp://example.com/hook",
    "not a url",
]
GOOD_URLS = [
    "https://hooks.example.com/chatplane?tenant=acme",
    "http://127.0.0.1:9/hook",  # loopback is a matter for the call, and its setting
    "http://localhost:9/ping",
    "http://[::1]:9/hook",
    "http://[::127.0.0.1]:9/hook",
    "https://bücher.example/hook",
    "https://example.com./hook",
    "http://my_host-1:8080/",
]


@pytest.mark.parametrize("url", MALFORMED_URLS)
def test_malformed_urls_are_refused_by_parse_url(url: str) -> None:
    with pytest.raises(outbound.BadURL, match=r"must be an absolute http\(s\) URL"):
        outbound.parse_url(url)


@pytest.mark.parametrize("url", GOOD_URLS)
def test_good_urls_parse(url: str) -> None:
    assert outbound.parse_url(url).scheme in ("http", "https")


def custom_tool(url: str) -> dict[str, Any]:
    return {"type": "custom", "name": "lookup", "description": "Look something up.", "url": url}


@pytest.mark.parametrize("url", MALFORMED_URLS)
def test_malformed_urls_are_refused_when_saved(api: Api, url: str) -> None:
    llm = make_llm(api)
    engine = {"type": "uponai-llm", "llm_id": llm["llm_id"]}
    error = assert_error(
        api.post("/api/chat-agents", {"agent_name": "a", "response_engine": engine, "webhook_url": url}),
        422, "validation_error", "webhook_url",
    )
    assert "http(s) URL" in error["message"]
    agent = make_agent(api, llm)
    assert_error(api.patch(f"/api/chat-agents/{agent['agent_id']}", {"webhook_url": url}),
                 422, "validation_error", "webhook_url")
    assert_error(api.post("/api/llms", {"display_name": "x", "general_tools": [custom_tool(url)]}),
                 422, "validation_error", "general_tools[0].url")
    assert_error(api.patch(f"/api/llms/{llm['llm_id']}", {"general_tools": [custom_tool(url)]}),
                 422, "validation_error", "general_tools[0].url")


def test_good_urls_are_saved_as_sent(api: Api) -> None:
    for url in GOOD_URLS:
        assert make_agent(api, webhook_url=url)["webhook_url"] == url
        assert make_llm(api, general_tools=[custom_tool(url)])["general_tools"][0]["url"] == url


# --- a webhook that may not be called ---------------------------------------------


@pytest.fixture(scope="module")
def closed(backend: Backend, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Backend]:
    """A server of our own: private networks refused, retries fast (a retry would show at once)."""
    with served(
        backend.kind, tmp_path_factory.mktemp(f"outbound-{backend.kind}"),
        providers=backend.settings.providers, allow_private_networks=False,
        jobs=JobSettings(poll_s=0.05, backoff_base_s=0.05, backoff_cap_s=0.1),
    ) as b:
        yield b


@pytest.fixture
def mine(closed: Backend) -> Iterator[Api]:
    with tenant(closed, "mine") as client:
        yield client


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with Receiver() as r:
        yield r


def delivery_of(api: Api, delivery_id: str) -> dict[str, Any]:
    response = api.get(f"/api/webhook-deliveries/{delivery_id}")
    assert response.status_code == 200, response.text
    return response.json()


def jobs_of(backend: Backend, delivery_id: str) -> list[tuple[str, int, str | None]]:
    async def work(session):  # type: ignore[no-untyped-def]
        found = (await session.scalars(select(Job).where(Job.kind == "webhook.deliver").order_by(Job.id))).all()
        return [(j.status, j.attempts, j.last_error) for j in found if j.payload["delivery_id"] == delivery_id]

    return backend.run(work)


def refused_once(api: Api, backend: Backend, delivery_id: str, error: str) -> None:
    """The delivery's latest attempt was refused, and its job parked as failed at its first attempt."""
    done = eventually(lambda: d if (d := delivery_of(api, delivery_id))["status"] != "pending" else None,
                      what="the delivery to be tried")
    assert done["status"] == "failed", done
    assert done["attempts"][-1]["status_code"] is None
    assert done["attempts"][-1]["error"].startswith(error), done
    last = eventually(lambda: (j := jobs_of(backend, delivery_id)) and j[-1][0] != "running" and j[-1],
                      what="the job to finish")
    status, attempts, last_error = last
    assert (status, attempts) == ("failed", 1), last
    assert last_error and error in last_error


@pytest.mark.parametrize("form", ["::ffff:127.0.0.1", "::127.0.0.1", "64:ff9b::7f00:1", "2002:7f00:1::1"])
def test_a_webhook_to_a_refused_address_is_tried_once_and_not_retried(
    mine: Api, closed: Backend, receiver: Receiver, form: str
) -> None:
    port = receiver.server.server_address[1]
    url = f"http://[{form}]:{port}{receiver.path}"
    # A short timeout: a leaked call that cannot connect fails fast, and is retried.
    agent = make_agent(mine, webhook_url=url, webhook_events=["chat_started"], webhook_timeout_ms=1000)
    chat = make_chat(mine, agent)
    [started] = mine.get("/api/webhook-deliveries", chatId=chat["chatId"]).json()["data"]
    refused_once(mine, closed, started["id"], "refused: not a public address")
    [attempt] = delivery_of(mine, started["id"])["attempts"]
    assert attempt["error"] == "refused: not a public address"
    assert receiver.received() == []


def test_a_stored_malformed_url_is_refused_once_not_retried(
    mine: Api, closed: Backend, receiver: Receiver
) -> None:
    """A URL saved before save-time checking (httpx refuses octal) fails once, not for hours."""
    agent = make_agent(mine, webhook_url=receiver.url, webhook_events=["chat_started"])
    chat = make_chat(mine, agent)
    [started] = mine.get("/api/webhook-deliveries", chatId=chat["chatId"]).json()["data"]
    refused_once(mine, closed, started["id"], "refused: not a public address")

    port = receiver.server.server_address[1]

    async def break_url(session):  # type: ignore[no-untyped-def]
        await session.execute(update(WebhookDelivery).where(WebhookDelivery.id == started["id"])
                              .values(url=f"http://0177.0.0.1:{port}{receiver.path}"))

    closed.run(break_url)
    assert mine.post(f"/api/webhook-deliveries/{started['id']}/redeliver").status_code == 202
    refused_once(mine, closed, started["id"], "refused: must be an absolute http(s) URL")
    assert [a["attempt"] for a in delivery_of(mine, started["id"])["attempts"]] == [1, 2]
    assert receiver.received() == []
