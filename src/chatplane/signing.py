"""Retell's request signature, for webhooks and custom-tool calls.

``X-Retell-Signature: v=<unix ms>,d=<hex HMAC-SHA256(key, body + str(ms))>``,
keyed by the workspace's webhook key: what ``retell-sdk``'s
``Retell.verify(body, key, signature)`` checks, so receivers can use it as is.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import time

HEADER = "X-Retell-Signature"
_FORMAT = re.compile(r"v=(\d+),d=([0-9a-f]{64})")


def sign(body: str, key: str, *, now_ms: int | None = None) -> str:
    stamp = int(time.time() * 1000) if now_ms is None else now_ms
    digest = hmac.new(key.encode(), (body + str(stamp)).encode(), hashlib.sha256).hexdigest()
    return f"v={stamp},d={digest}"


def verify(body: str, key: str, signature: str, *, tolerance_ms: int = 5 * 60 * 1000) -> bool:
    """The receiving side, for our own tests and for users without the SDK."""
    match = _FORMAT.fullmatch(signature)
    if not match:
        return False
    stamp = int(match.group(1))
    if abs(int(time.time() * 1000) - stamp) > tolerance_ms:
        return False
    expected = hmac.new(key.encode(), (body + str(stamp)).encode(), hashlib.sha256).hexdigest()
    return hmac.compare_digest(expected, match.group(2))
