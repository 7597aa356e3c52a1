"""chatplane.batching.Batcher, the skeleton the turns' writes and PostgreSQL's turn locks share."""

from __future__ import annotations

import asyncio

import pytest

from chatplane.batching import Batcher


class Recorder:
    """A ``send`` that records its batches and answers each item doubled, or
    its own error for an item "bad"; it can be held until ``go`` is set."""

    def __init__(self) -> None:
        self.batches: list[list[str]] = []
        self.go = asyncio.Event()
        self.go.set()

    async def __call__(self, items: list[str]) -> list[str | Exception]:
        self.batches.append(list(items))
        await self.go.wait()
        if "boom" in items:
            raise RuntimeError("the whole batch failed")
        return [ValueError(item) if item == "bad" else item * 2 for item in items]


def test_items_that_come_while_a_batch_is_out_go_together_as_the_next() -> None:
    async def main() -> None:
        send = Recorder()
        batches: Batcher[str, str] = Batcher(send, limit=2)
        send.go.clear()
        first = asyncio.create_task(batches.ask("a"))
        await asyncio.sleep(0.01)
        rest = [asyncio.create_task(batches.ask(x)) for x in "bcd"]
        await asyncio.sleep(0.01)
        assert not batches.idle()
        send.go.set()
        assert await first == "aa" and [await r for r in rest] == ["bb", "cc", "dd"]
        assert send.batches == [["a"], ["b", "c"], ["d"]]
        assert batches.idle()

    asyncio.run(main())


def test_an_item_fails_alone_and_a_failed_batch_fails_all_of_its_items() -> None:
    async def main() -> None:
        send = Recorder()
        batches: Batcher[str, str] = Batcher(send)
        send.go.clear()
        head = asyncio.create_task(batches.ask("x"))
        await asyncio.sleep(0.01)
        good, bad = asyncio.create_task(batches.ask("ok")), asyncio.create_task(batches.ask("bad"))
        await asyncio.sleep(0.01)
        send.go.set()
        assert await head == "xx" and await good == "okok"
        with pytest.raises(ValueError):
            await bad
        results = await asyncio.gather(batches.ask("boom"), return_exceptions=True)
        assert isinstance(results[0], RuntimeError)
        assert await batches.ask("after") == "afterafter"  # the batcher goes on

    asyncio.run(main())


def test_a_put_item_waits_for_company_then_goes_alone_and_can_be_withdrawn() -> None:
    async def main() -> None:
        send = Recorder()
        batches: Batcher[str, str] = Batcher(send)
        batches.put("r1", within=0.05)
        await asyncio.sleep(0.01)
        assert send.batches == [] and batches.waiting() == ["r1"]
        assert await batches.ask("a") == "aa"  # r1 rides along with the next item asked
        assert send.batches == [["r1", "a"]]

        batches.put("r2", within=0.05)
        await asyncio.sleep(0.1)
        assert send.batches[-1] == ["r2"]  # nobody came: alone, after its wait

        batches.put("r3", within=0.05)
        batches.put("r4", within=0.05)
        assert batches.withdraw(lambda item: item == "r3") == ["r3"]
        await batches.settled()  # sends what waits, now
        assert send.batches[-1] == ["r4"] and batches.waiting() == []

    asyncio.run(main())


def test_a_cancelled_asker_and_an_asker_that_lands() -> None:
    async def main() -> None:
        send = Recorder()
        unclaimed: list[tuple[str, str]] = []
        batches: Batcher[str, str] = Batcher(send, unclaimed=lambda item, result: unclaimed.append((item, result)))
        send.go.clear()
        gone = asyncio.create_task(batches.ask("g"))
        lands = asyncio.create_task(batches.ask("l", land=True))
        await asyncio.sleep(0.01)
        gone.cancel()
        lands.cancel()
        await asyncio.sleep(0.01)
        assert gone.done() and not lands.done()  # the landing one waits for its item to go out
        send.go.set()
        with pytest.raises(asyncio.CancelledError):
            await lands
        assert unclaimed == [("g", "gg")]  # went out all the same; its outcome handed on

    asyncio.run(main())
