"""What chatplane uses of the ``twilio`` package: its webhook signature
check and its REST client, run in a thread (the client is blocking).

Twilio's API base URL comes from ``SmsSettings.twilio_api_base_url``: the
client is given an HTTP client that sends every request there instead of
to ``https://api.twilio.com`` (tests point it at a local stand-in).
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import requests
import urllib3
from twilio.base.exceptions import TwilioException, TwilioRestException
from twilio.http.http_client import TwilioHttpClient
from twilio.request_validator import RequestValidator
from twilio.rest import Client

from chatplane.settings import SmsSettings

SIGNATURE_HEADER = "X-Twilio-Signature"
# Twilio refuses a body longer than this (error 21617); longer replies go as several texts.
MAX_BODY_CHARS = 1600


class TwilioRefused(Exception):
    """Twilio answered that this message can never be sent (a 4xx): not retried."""


class TwilioUnavailable(Exception):
    """Twilio did not take the text (it answered 5xx or 429, or no connection
    could be made): try again later."""


class TwilioMaybeSent(Exception):
    """The request went out and no answer came back (a read timeout, a
    connection lost mid-answer): Twilio may have taken the text, so it is
    never sent again."""


def _never_reached(exc: requests.RequestException) -> bool:
    """Whether the request surely never reached Twilio: no connection was made
    (refused, no such host, connect timeout) or TLS failed before it was sent."""
    if isinstance(exc, (requests.ConnectTimeout, requests.exceptions.SSLError)):
        return True
    if isinstance(exc, requests.ConnectionError) and exc.args:
        cause = exc.args[0]
        return isinstance(getattr(cause, "reason", cause), urllib3.exceptions.NewConnectionError)
    return False


def signature_valid(auth_token: str, url: str, params: Mapping[str, Any], signature: str | None) -> bool:
    """Whether ``signature`` (the X-Twilio-Signature header) is Twilio's for this URL and form."""
    if not signature:
        return False
    return bool(RequestValidator(auth_token).validate(url, dict(params), signature))


class _Rebased(TwilioHttpClient):
    """Sends every request to ``base_url`` (scheme, host and path prefix), keeping its path and query."""

    def __init__(self, base_url: str, timeout_s: float) -> None:
        super().__init__(timeout=timeout_s)
        self.base = urlsplit(base_url.rstrip("/"))

    def request(self, method: str, url: str, *args: Any, **kwargs: Any):  # type: ignore[no-untyped-def]
        parts = urlsplit(url)
        url = urlunsplit((self.base.scheme, self.base.netloc, self.base.path + parts.path, parts.query, ""))
        return super().request(method, url, *args, **kwargs)


def _send_blocking(settings: SmsSettings, account_sid: str, auth_token: str, to: str, from_: str, body: str) -> str:
    http = _Rebased(settings.twilio_api_base_url, settings.twilio_timeout_s)
    try:
        client = Client(account_sid, auth_token, http_client=http)
        return str(client.messages.create(to=to, from_=from_, body=body).sid)
    finally:
        if http.session is not None:
            http.session.close()


async def send_sms(
    settings: SmsSettings, *, account_sid: str, auth_token: str, to: str, from_: str, body: str
) -> str:
    """Hand one text to Twilio; returns its message SID."""
    try:
        return await asyncio.to_thread(_send_blocking, settings, account_sid, auth_token, to, from_, body)
    except TwilioRestException as exc:
        detail = f"Twilio answered HTTP {exc.status}" + (f", error {exc.code}" if exc.code else "") + f": {exc.msg}"
        if 400 <= exc.status < 500 and exc.status not in (408, 429):
            raise TwilioRefused(detail[:1000]) from None
        raise TwilioUnavailable(detail[:1000]) from None
    except requests.RequestException as exc:
        if _never_reached(exc):
            raise TwilioUnavailable(f"Twilio could not be reached: {type(exc).__name__}: {exc}"[:1000]) from None
        raise TwilioMaybeSent(
            f"handed to Twilio, but no answer came back ({type(exc).__name__}): "
            "it may have gone out, so it is not sent again"
        ) from None
    except TwilioException as exc:
        raise TwilioUnavailable(f"Twilio could not be reached: {type(exc).__name__}: {exc}"[:1000]) from None


def split_text(text: str, limit: int = MAX_BODY_CHARS) -> list[str]:
    """``text`` as texts of at most ``limit`` characters, cut between words where possible."""
    text = text.strip()
    parts: list[str] = []
    while len(text) > limit:
        cut = text.rfind(" ", 0, limit + 1)
        if cut <= limit // 2:
            cut = limit
        parts.append(text[:cut].rstrip())
        text = text[cut:].lstrip()
    if text:
        parts.append(text)
    return parts
