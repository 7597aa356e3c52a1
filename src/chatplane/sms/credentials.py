"""Third-party secrets at rest: Twilio auth tokens, encrypted with Fernet.

The key is ``Settings.encryption_key`` when set. Otherwise it is made on
first use and kept in ``data_dir/encryption.key`` (mode 0600), which suits
one host; several hosts sharing a database must all be given the same key.
"""

from __future__ import annotations

import os
import tempfile
import threading
from pathlib import Path

from cryptography.fernet import Fernet, InvalidToken

from chatplane.settings import Settings

KEY_FILE = "encryption.key"
_keys: dict[Path, bytes] = {}
_lock = threading.Lock()


class CredentialsUnreadable(Exception):
    """A stored secret does not decrypt with this server's key (the key changed)."""


def _key_file(path: Path) -> bytes:
    with _lock:
        if path in _keys:
            return _keys[path]
        path.parent.mkdir(parents=True, exist_ok=True)
        if not path.exists():
            # Written aside, then linked into place: link fails if the file
            # exists, so of two processes starting at once one key wins, and
            # nobody ever reads a half-written file.
            fd, aside = tempfile.mkstemp(dir=path.parent, prefix=".key-")
            try:
                os.write(fd, Fernet.generate_key() + b"\n")
                os.close(fd)
                os.link(aside, path)
            except FileExistsError:
                pass
            finally:
                os.unlink(aside)
        key = path.read_bytes().strip()
        _keys[path] = key
        return key


def fernet(settings: Settings) -> Fernet:
    if settings.encryption_key is not None:
        key = settings.encryption_key.get_secret_value().encode()
    else:
        key = _key_file(settings.data_dir / KEY_FILE)
    try:
        return Fernet(key)
    except ValueError:
        raise ValueError("encryption_key must be a Fernet key: urlsafe base64 of 32 bytes") from None


def seal(settings: Settings, secret: str) -> str:
    return fernet(settings).encrypt(secret.encode()).decode()


def unseal(settings: Settings, sealed: str) -> str:
    try:
        return fernet(settings).decrypt(sealed.encode()).decode()
    except InvalidToken:
        raise CredentialsUnreadable(
            "a stored auth token does not decrypt with this server's encryption key"
        ) from None
