"""Work handed in while a batch is out goes out together as the next batch.

One skeleton for the process's batched round trips: the turns' writes
(``chats.turn.write.WriteBatcher``) and PostgreSQL's turn locks
(``chats.locks``). Under load a process then sends one statement (or one
transaction) for many turns instead of one each; when it is quiet a batch is
the one item that came, sent at once.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R")

# What ``send`` answers for each item of a batch, in order: its result, or the
# Exception that failed that item alone.
Send = Callable[[list[T]], Awaitable[list[R | Exception]]]


@dataclass(slots=True)
class _Waiting(Generic[T, R]):
    item: T
    future: asyncio.Future[R] | None  # None: nobody waits for it (``put``)


class Batcher(Generic[T, R]):
    """Items go out through ``send`` in batches of at most ``limit``: the
    first at once, the ones that come while a batch is out as the next.

    ``ask`` waits for an item's outcome; ``put`` hands one in that nobody
    waits for, which may wait a moment for company (``within``) and may be
    taken back before it goes (``withdraw``). If ``send`` raises, every item
    of its batch gets the exception. An item whose asker stopped waiting
    (cancelled) still goes out; its outcome goes to ``unclaimed``.
    """

    def __init__(
        self, send: Send[T, R], *, limit: int | None = None, unclaimed: Callable[[T, R], None] | None = None
    ) -> None:
        self.send = send
        self.limit = limit
        self.unclaimed = unclaimed
        self._waiting: list[_Waiting[T, R]] = []
        self._driver: asyncio.Task[None] | None = None
        self._timer: asyncio.TimerHandle | None = None

    async def ask(self, item: T, *, land: bool = False) -> R:
        """The item's outcome. ``land``: a cancelled asker still waits until the
        item has gone out (or failed) before the cancellation goes on."""
        future: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        self._waiting.append(_Waiting(item, future))
        self._kick()
        if not land:
            return await future
        try:
            return await asyncio.shield(future)
        except asyncio.CancelledError:
            await asyncio.wait([future])
            raise

    def put(self, item: T, *, within: float = 0.0) -> None:
        """Hand in an item nobody waits for. It goes with the next batch, or
        on its own after ``within`` seconds if no batch goes before."""
        self._waiting.append(_Waiting(item, None))
        if within <= 0:
            self._kick()
        elif self._driver is None and self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(within, self._kick)

    def withdraw(self, match: Callable[[T], bool]) -> list[T]:
        """Take back the ``put`` items that ``match`` and have not gone out."""
        taken = [one.item for one in self._waiting if one.future is None and match(one.item)]
        if taken:
            self._waiting = [one for one in self._waiting if one.future is not None or not match(one.item)]
        return taken

    def waiting(self) -> list[T]:
        """The items not gone out yet, in order."""
        return [one.item for one in self._waiting]

    def idle(self) -> bool:
        """Whether no batch is out."""
        return self._driver is None

    async def settled(self) -> None:
        """Send what waits, and wait until nothing is out."""
        if self._waiting:
            self._kick()
        while self._driver is not None:
            await asyncio.wait([self._driver])

    def _kick(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._driver is None:
            self._driver = asyncio.create_task(self._drive())

    async def _drive(self) -> None:
        try:
            while self._waiting:
                cut = len(self._waiting) if self.limit is None else self.limit
                batch, self._waiting = self._waiting[:cut], self._waiting[cut:]
                try:
                    outcomes = await self.send([one.item for one in batch])
                except Exception as exc:  # noqa: BLE001 - handed to every item of the batch
                    outcomes = [exc] * len(batch)
                except BaseException:
                    for one in batch:
                        if one.future is not None:
                            one.future.cancel()
                    raise
                for one, outcome in zip(batch, outcomes, strict=True):
                    self._settle(one, outcome)
        finally:
            self._driver = None

    def _settle(self, one: _Waiting[T, R], outcome: R | Exception) -> None:
        if one.future is None:
            return
        if one.future.done():  # its asker stopped waiting; the item went out all the same
            if self.unclaimed is not None and not isinstance(outcome, Exception):
                self.unclaimed(one.item, outcome)
        elif isinstance(outcome, Exception):
            one.future.set_exception(outcome)
        else:
            one.future.set_result(outcome)
