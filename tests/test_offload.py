"""A stop must not close what a cancelled task's thread is still using: Offloader.drain
waits for the thread, not for the (already cancelled) asyncio future."""

from __future__ import annotations

import asyncio
import threading

from gateway.offload import Offloader


def test_drain_waits_for_the_thread_of_a_cancelled_call() -> None:
    release = threading.Event()
    finished = threading.Event()

    def slow() -> None:
        release.wait(10)
        finished.set()

    async def scenario() -> tuple[bool, bool]:
        offload = Offloader("test")
        task = asyncio.ensure_future(offload.run(slow))
        await asyncio.sleep(0.05)
        task.cancel()                       # the asyncio side is done at once...
        await asyncio.gather(task, return_exceptions=True)
        assert not finished.is_set()        # ...while the thread still runs
        asyncio.get_running_loop().call_later(0.2, release.set)
        drained = await offload.drain(10)
        return drained, finished.is_set()

    assert asyncio.run(scenario()) == (True, True)


def test_drain_gives_up_after_its_timeout() -> None:
    release = threading.Event()

    async def scenario() -> bool:
        offload = Offloader("test")
        task = asyncio.ensure_future(offload.run(release.wait, 10))
        await asyncio.sleep(0.05)
        task.cancel()
        drained = await offload.drain(0.1)
        release.set()
        return drained

    assert asyncio.run(scenario()) is False
