"""``chatplane serve --workers N``: N server processes, each with its own listening socket.

Why: uvicorn's own supervisor binds one socket in the parent and every worker
accepts from it, and Linux then tends to hand the connections to whichever
worker is already awake: 16 keep-alive connections opened one after another all
landed in one of two workers (100% CPU, the other idle), for their lifetime.

How: each worker binds its own socket on host:port with ``SO_REUSEPORT``, so the
kernel puts every new connection in one of them by a hash of its addresses. A
small supervisor here starts the workers, replaces one that dies while serving,
gives up (non-zero) if one dies before it came up, and stops them all on
SIGINT/SIGTERM. With one worker, or on a system other than Linux, this is plain
``uvicorn.run``.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import signal
import socket
import sys
import time
from multiprocessing.connection import Connection, wait
from multiprocessing.process import BaseProcess
from typing import Any

import uvicorn
from uvicorn.config import STARTUP_FAILURE

from chatplane.http import uvicorn_options
from chatplane.settings import ServerSettings

logger = logging.getLogger("uvicorn.error")
spawn = multiprocessing.get_context("spawn")
STOP_TIMEOUT_S = 15  # a worker still finishing its responses after this is killed


def run(server: ServerSettings, host: str, port: int, workers: int, log_level: str) -> int:
    """Serve the app until SIGINT/SIGTERM, with ``server``'s HTTP limits; the exit status."""
    options: dict[str, Any] = {
        "app": "chatplane.app:create_app", "factory": True, "log_level": log_level, "access_log": False,
        **uvicorn_options(server),
    }
    # Elsewhere (macOS, the BSDs) SO_REUSEPORT exists but does not spread connections.
    if workers <= 1 or not (sys.platform == "linux" and hasattr(socket, "SO_REUSEPORT")):
        uvicorn.run(**options, host=host, port=port, workers=workers)
        return 0
    family, _, _, _, address = socket.getaddrinfo(
        host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )[0]
    # A socket without SO_REUSEPORT cannot share the port: if it binds, nobody
    # listens there (a second chatplane would otherwise join this one's group).
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(address)
        except OSError as exc:
            print(f"chatplane: cannot listen on {host} port {port}: {exc.strerror}", file=sys.stderr, flush=True)
            return 1
        address = probe.getsockname()  # port 0: the one the kernel picked, the same for all workers
    uvicorn.Config(**options)  # sets up logging as uvicorn does, for the messages below
    return _supervise(workers, family, address, options)


def _supervise(count: int, family: int, address: Any, options: dict[str, Any]) -> int:
    stopping: list[int] = []
    handlers = {sig: signal.signal(sig, lambda sig, _: stopping.append(sig)) for sig in (signal.SIGINT, signal.SIGTERM)}
    workers: list[tuple[BaseProcess, Connection]] = []
    try:
        workers = [_start(family, address, options) for _ in range(count)]
        while not stopping:
            wait([process.sentinel for process, _ in workers], timeout=0.25)
            for i, (process, ready) in enumerate(workers):
                if process.is_alive() or stopping:
                    continue
                if not _came_up(ready):  # died before it served: a restart would fail the same way
                    print(f"chatplane: a server process failed to start (exit code {process.exitcode}), "
                          "stopping", file=sys.stderr, flush=True)
                    return 1
                logger.warning("Server process [%d] died (exit code %s), starting another",
                               process.pid, process.exitcode)
                ready.close()
                workers[i] = _start(family, address, options)
        return 0
    finally:
        _stop([process for process, _ in workers])
        for sig, handler in handlers.items():
            signal.signal(sig, handler)


def _start(family: int, address: Any, options: dict[str, Any]) -> tuple[BaseProcess, Connection]:
    ready, child_end = spawn.Pipe(duplex=False)
    process = spawn.Process(target=_worker, args=(family, address, options, child_end))
    process.start()
    child_end.close()
    return process, ready


def _came_up(ready: Connection) -> bool:
    """Whether a process that has exited had told it had started (its pipe is at EOF otherwise)."""
    try:
        return ready.poll() and ready.recv()
    except EOFError:
        return False


def _stop(processes: list[BaseProcess]) -> None:
    for process in processes:
        if process.is_alive():
            process.terminate()
    deadline = time.monotonic() + STOP_TIMEOUT_S
    for process in processes:
        process.join(max(0, deadline - time.monotonic()))
        if process.is_alive():
            logger.error("Server process [%d] did not stop in %d s, killing it", process.pid, STOP_TIMEOUT_S)
            process.kill()
            process.join()


class _Server(uvicorn.Server):
    """Tells the supervisor once it has started serving."""

    def __init__(self, config: uvicorn.Config, ready: Connection) -> None:
        super().__init__(config)
        self.ready = ready

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets=sockets)
        if self.started:
            self.ready.send(True)


def _worker(family: int, address: Any, options: dict[str, Any], ready: Connection) -> None:
    """One server process, in a spawned child."""
    config = uvicorn.Config(**options)
    # IPPROTO_TCP, not 0: asyncio turns TCP_NODELAY on only for sockets that say so.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        sock.bind(address)
    except OSError as exc:
        logger.error("Cannot listen on %s: %s", address, exc)
        sys.exit(STARTUP_FAILURE)
    with contextlib.suppress(KeyboardInterrupt):
        _Server(config, ready).run(sockets=[sock])
