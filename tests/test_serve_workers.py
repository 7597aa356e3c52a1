"""`chatplane serve --workers 2` as a real process: each worker has its own
SO_REUSEPORT socket, so keep-alive connections are spread over both; a killed
worker is replaced; SIGTERM stops everything; a taken port is refused.

Workers are found through /proc (Linux only): the children of the serve
process that hold a listening socket on its port, and each one's established
connections are the sockets it holds that /proc/net/tcp{,6} lists on that port.
"""

from __future__ import annotations

import http.client
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import fresh_settings
from tests.processes import free_port, server_env
from tests.webhook_receiver import eventually

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux") or not hasattr(socket, "SO_REUSEPORT"), reason="Linux /proc, SO_REUSEPORT"
)

LISTEN, ESTABLISHED = "0A", "01"  # socket states in /proc/net/tcp


def _serve_command(port: int) -> list[str]:
    return [sys.executable, "-m", "chatplane.cli", "serve", "--port", str(port), "--workers", "2",
            "--log-level", "warning"]


def _tcp_inodes(port: int, state: str) -> set[int]:
    """Inodes of the sockets with local port ``port`` in ``state``."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if int(fields[1].rsplit(":", 1)[1], 16) == port and fields[3] == state:
                inodes.add(int(fields[9]))
    return inodes


def _socket_inodes(pid: int) -> set[int]:
    inodes = set()
    try:
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            target = os.readlink(fd)
            if target.startswith("socket:["):
                inodes.add(int(target[8:-1]))
    except FileNotFoundError:
        pass  # it has just exited, or closed that file
    return inodes


def _children(pid: int) -> set[int]:
    children = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (FileNotFoundError, ProcessLookupError, IndexError):
            continue
        if ppid == pid:
            children.add(int(stat.parent.name))
    return children


class Served:
    """`chatplane serve --workers 2` on a fresh SQLite database, both workers listening."""

    def __init__(self, env: dict[str, str]) -> None:
        self.port = free_port()
        self.log = tempfile.TemporaryFile()  # noqa: SIM115 (its stderr, read if it will not start; closed by stop())
        self.proc = subprocess.Popen(_serve_command(self.port), env=env, stdout=subprocess.DEVNULL, stderr=self.log)
        try:
            eventually(lambda: self.proc.poll() is not None or len(self.workers()) == 2,
                       timeout_s=60, what="two listening workers")
        except AssertionError:
            self.stop()
            raise
        if self.proc.returncode is not None:
            self.log.seek(0)
            tail = self.log.read().decode(errors="replace")[-4000:]
            self.log.close()
            raise RuntimeError(f"serve exited with {self.proc.returncode}:\n{tail}")

    def workers(self) -> set[int]:
        """The children listening on the port: the workers that are serving."""
        listening = _tcp_inodes(self.port, LISTEN)
        return {pid for pid in _children(self.proc.pid) if _socket_inodes(pid) & listening}

    def split(self, connections: int) -> dict[int, int]:
        """Open ``connections`` keep-alive connections one after another; how many each worker holds."""
        opened = []
        try:
            for _ in range(connections):
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
                conn.request("GET", "/healthz")
                response = conn.getresponse()
                response.read()
                assert response.status == 200
                opened.append(conn)  # left open: the server keeps it for the next request
            established = _tcp_inodes(self.port, ESTABLISHED)
            return {pid: len(_socket_inodes(pid) & established) for pid in self.workers()}
        finally:
            for conn in opened:
                conn.close()

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(20)
        self.log.close()


def _env(tmp_path: Path) -> dict[str, str]:
    return server_env(fresh_settings("sqlite", tmp_path), [])


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """One server for the tests that leave it with two workers."""
    server = Served(_env(tmp_path_factory.mktemp("shared")))
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def served(tmp_path: Path) -> Iterator[Served]:
    server = Served(_env(tmp_path))
    try:
        yield server
    finally:
        server.stop()


def _assert_spread(split: dict[int, int], connections: int) -> None:
    # Each connection goes to one of the two sockets by a hash of its address
    # and port: a fair coin each. Three or fewer of 32 on a given side has odds
    # of (1 + 32 + 496 + 4960) / 2**32, so about 1 in 400,000 for either side:
    # at least 4 each does not fail by chance. One shared socket (uvicorn's own
    # supervisor) on this kernel gives nearly all of them to one worker.
    assert len(split) == 2 and sum(split.values()) == connections, split
    assert min(split.values()) >= 4, split


def test_keep_alive_connections_are_spread_over_both_workers(shared: Served) -> None:
    _assert_spread(shared.split(32), 32)


def test_a_killed_worker_is_replaced_and_the_server_keeps_answering(shared: Served) -> None:
    before = shared.workers()
    victim = min(before)
    os.kill(victim, signal.SIGKILL)
    # Once its socket is gone (what was queued on it is lost), the other worker takes every connection.
    eventually(lambda: not _socket_inodes(victim), timeout_s=10, what="the killed worker's socket closed")
    with httpx.Client(base_url=f"http://127.0.0.1:{shared.port}", timeout=5) as client:
        for _ in range(20):
            assert client.get("/healthz", headers={"Connection": "close"}).status_code == 200

    def replaced() -> set[int] | None:
        workers = shared.workers()
        return workers if len(workers) == 2 and victim not in workers else None

    after = eventually(replaced, timeout_s=30, what="a replacement worker")
    assert len(after - before) == 1, (before, after)
    _assert_spread(shared.split(32), 32)  # and the new one takes its share
    assert shared.proc.poll() is None


def test_sigterm_stops_the_server_and_every_worker(served: Served) -> None:
    workers = served.workers()
    served.proc.send_signal(signal.SIGTERM)
    assert served.proc.wait(10) == 0
    for pid in workers:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
    assert not _tcp_inodes(served.port, LISTEN)


def test_a_port_in_use_is_refused(tmp_path: Path) -> None:
    with socket.socket() as other:
        other.bind(("127.0.0.1", 0))
        other.listen()
        port = other.getsockname()[1]
        started = time.monotonic()
        result = subprocess.run(
            _serve_command(port), env=_env(tmp_path), capture_output=True, text=True, timeout=60, check=False
        )
    assert result.returncode != 0
    assert f"port {port}" in result.stderr, result.stderr
    assert time.monotonic() - started < 30
