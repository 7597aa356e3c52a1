"""What text chatplane keeps: valid Unicode with no NUL.

JSON may carry a lone UTF-16 surrogate (``"\\ud800"``): valid JSON, but no
character, so it cannot be encoded as UTF-8. Python's ``json`` accepts it
and SQLite's JSON columns keep it escaped; then every answer that contains
it fails to encode (a 500) and PostgreSQL refuses it. NUL (U+0000) is
refused by PostgreSQL in text and JSON alike.

Two rules follow. Text a client sends is refused at the edge
(``limits.InputGuard`` with ``bad_text``): the client can fix it. Text that
arrives from elsewhere and cannot be refused (model replies, tool and webhook
answers, inbound texts, rows stored before the edge checked) is kept with
each bad code point replaced by U+FFFD (``clean``, ``loads``).
"""

from __future__ import annotations

import codecs
import json
from datetime import datetime
from typing import Any

REPLACEMENT = "\ufffd"


def _replace(error: UnicodeError) -> tuple[bytes, int]:
    if not isinstance(error, UnicodeEncodeError) or error.encoding != "utf-8":
        raise error
    # Bytes: the UTF-8 encoder takes only ASCII back as a str.
    return REPLACEMENT.encode() * (error.end - error.start), error.end


# ``str.encode("utf-8", "replace")`` puts "?" for what cannot be encoded; this puts U+FFFD.
codecs.register_error("chatplane.fffd", _replace)


def bad_text(value: str) -> str | None:
    """Why ``value`` is not text chatplane keeps, or None."""
    if "\x00" in value:
        return "NUL (\\u0000) characters are not accepted"
    if not value.isascii():
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return "not valid Unicode (a lone UTF-16 surrogate)"
    return None


def clean(value: str) -> str:
    """``value`` with NUL and lone surrogates replaced by U+FFFD."""
    if value.isascii():
        return value.replace("\x00", REPLACEMENT) if "\x00" in value else value
    value = value.encode("utf-8", "chatplane.fffd").decode("utf-8")
    return value.replace("\x00", REPLACEMENT) if "\x00" in value else value


def clean_json(value: Any) -> Any:
    """``value`` (parsed JSON) with every string, keys included, ``clean``."""
    if isinstance(value, str):
        return clean(value)
    if isinstance(value, list):
        return [clean_json(item) for item in value]
    if isinstance(value, dict):
        return {clean(key): clean_json(item) for key, item in value.items()}
    return value


def loads(document: str | bytes) -> Any:
    """``json.loads`` for JSON from elsewhere (the database, a model, a tool):
    invalid UTF-8 and every lone surrogate or NUL in it become U+FFFD.

    Only an escape (``\\u…``) can bring a surrogate or NUL into a decoded
    document, so a document without one is not walked.
    """
    if isinstance(document, (bytes, bytearray)):
        document = bytes(document).decode("utf-8", "replace")
    value = json.loads(document)
    return clean_json(value) if "\\u" in document or "\x00" in document else value


def iso(moment: datetime) -> str:
    """A time as chatplane writes it in JSON it builds by hand (webhook bodies,
    delivery attempts, a turn's answer): ISO 8601 in UTC with ``Z``, the form
    the response models give every datetime."""
    return moment.isoformat().replace("+00:00", "Z")
