"""The chatplane command, run as a user runs it: a real process, real HTTP."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import BACKENDS, dispose_settings, fresh_settings

CHATPLANE = [sys.executable, "-m", "chatplane.cli"]


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHATPLANE_")}
    env.update(CHATPLANE_DATA_DIR=str(tmp_path), **extra)
    return env


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Served:
    def __init__(self, env: dict[str, str]) -> None:
        self.port = _free_port()
        self.proc = subprocess.Popen(
            [*CHATPLANE, "serve", "--port", str(self.port), "--log-level", "warning"],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )
        self.output: list[str] = []
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()  # type: ignore[union-attr]
            if not line and self.proc.poll() is not None:
                raise RuntimeError("serve exited:\n" + "".join(self.output))
            self.output.append(line)
            if "listening on" in line:
                break
        self.url = f"http://127.0.0.1:{self.port}"
        while time.monotonic() < deadline:
            try:
                httpx.get(self.url + "/healthz")
                return
            except httpx.TransportError:
                time.sleep(0.05)
        raise RuntimeError("server did not answer")

    @property
    def printed_key(self) -> str | None:
        match = re.search(r"^\s+(cp_\S+)\s*$", "".join(self.output), re.M)
        return match.group(1) if match else None

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=20)


@pytest.fixture
def served_env(tmp_path: Path) -> Iterator[dict[str, str]]:
    yield _env(tmp_path)


def _workspaces(url: str, key: str) -> httpx.Response:
    return httpx.get(url + "/api/workspaces", headers={"Authorization": f"Bearer {key}"})


def test_serve_on_an_empty_database_bootstraps_and_prints_the_key_once(served_env: dict[str, str]) -> None:
    server = Served(served_env)
    try:
        key = server.printed_key
        assert key, "".join(server.output)
        response = _workspaces(server.url, key)
        assert response.status_code == 200
        assert response.json() == [{"id": 1, "name": "default"}]
    finally:
        server.stop()
    again = Served(served_env)
    try:
        assert again.printed_key is None  # not a second workspace, not a second key
        assert _workspaces(again.url, key).json() == [{"id": 1, "name": "default"}]
    finally:
        again.stop()


@pytest.mark.parametrize("kind", BACKENDS)
def test_serve_uses_the_bootstrap_key_from_the_environment(kind: str, tmp_path: Path) -> None:
    settings = fresh_settings(kind, tmp_path / "db")
    env = _env(tmp_path, CHATPLANE_BOOTSTRAP_API_KEY="container-key-0123456789")
    if not settings.is_sqlite:
        env["CHATPLANE_DATABASE_URL"] = settings.resolved_database_url
    try:
        server = Served(env)
        try:
            assert server.printed_key is None
            assert _workspaces(server.url, "container-key-0123456789").json() == [{"id": 1, "name": "default"}]
            assert _workspaces(server.url, "some-other-key").status_code == 401
        finally:
            server.stop()
    finally:
        dispose_settings(settings)


def _cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CHATPLANE, *args], env=env, capture_output=True, text=True, timeout=60)


def test_workspaces_and_keys_commands(served_env: dict[str, str]) -> None:
    assert _cli(served_env, "migrate").returncode == 0
    made = _cli(served_env, "workspaces", "create", "acme")
    assert made.returncode == 0 and made.stdout.strip() == "1\tacme"
    assert _cli(served_env, "workspaces", "create", "globex").stdout.strip() == "2\tglobex"
    assert _cli(served_env, "workspaces", "list").stdout.splitlines() == ["1\tacme", "2\tglobex"]

    created = _cli(served_env, "keys", "create", "--workspace", "2", "--name", "ci")
    assert created.returncode == 0, created.stderr
    secret = created.stdout.strip()
    assert secret.startswith("cp_") and len(secret) > 40

    listing = _cli(served_env, "keys", "list").stdout
    assert secret not in listing  # never shown again
    assert secret[:10] in listing and "\t2\t" in listing and "ci" in listing

    server = Served(served_env)
    try:
        assert server.printed_key is None  # the database was not empty
        assert _workspaces(server.url, secret).json() == [{"id": 2, "name": "globex"}]
        key_id = listing.splitlines()[1].split("\t")[0]
        assert _cli(served_env, "keys", "revoke", key_id).returncode == 0
        # Key lookups are cached for CHATPLANE_AUTH_CACHE_S (1 s by default).
        deadline = time.monotonic() + 3
        while _workspaces(server.url, secret).status_code != 401:
            assert time.monotonic() < deadline, "revoked key still accepted after 3 s"
            time.sleep(0.1)
    finally:
        server.stop()
    assert "\t-\t" not in _cli(served_env, "keys", "list").stdout.splitlines()[1]


def test_cli_errors_are_clear(served_env: dict[str, str]) -> None:
    _cli(served_env, "migrate")
    missing = _cli(served_env, "keys", "create", "--workspace", "99")
    assert missing.returncode == 1 and "workspace 99 not found" in missing.stderr
    revoke = _cli(served_env, "keys", "revoke", "12345")
    assert revoke.returncode == 1 and "not found" in revoke.stderr
    usage = _cli(served_env, "keys", "create")
    assert usage.returncode == 2 and "--workspace" in usage.stderr
