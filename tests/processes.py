"""`chatplane serve` as a real child process, for tests that need several
processes on one database or that kill a server mid-request."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from chatplane.settings import Settings

KEY = "process-test-key-0123456789"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def server_env(settings: Settings, providers: list[dict[str, Any]], **extra: str) -> dict[str, str]:
    """The environment of a server on ``settings``' database, keyed with ``KEY``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHATPLANE_")}
    env.update(
        CHATPLANE_DATA_DIR=str(settings.data_dir),
        CHATPLANE_BOOTSTRAP_API_KEY=KEY,
        CHATPLANE_PROVIDERS=json.dumps(providers),
        **extra,
    )
    if not settings.is_sqlite:
        env["CHATPLANE_DATABASE_URL"] = settings.resolved_database_url
    return env


class ServerProcess:
    """One `chatplane serve` process on a loopback port."""

    def __init__(self, env: dict[str, str], cwd: Path | None = None) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = tempfile.TemporaryFile()  # stderr, shown if it will not start
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "chatplane.cli", "serve", "--port", str(self.port), "--log-level", "warning"],
            env=env, cwd=cwd, stdout=subprocess.DEVNULL, stderr=self.log,
        )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                self.log.seek(0)
                tail = self.log.read().decode(errors="replace")[-4000:]
                raise RuntimeError(f"server exited with {self.proc.returncode}:\n{tail}")
            try:
                httpx.get(self.url + "/healthz", timeout=1)
                return
            except httpx.TransportError:
                time.sleep(0.02)
        self.proc.kill()
        raise RuntimeError("server did not start")

    def kill(self) -> None:
        """SIGKILL: no shutdown hooks, no flush, whatever was in flight is cut."""
        self.proc.kill()
        self.proc.wait(20)

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.kill()
