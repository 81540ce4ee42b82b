"""The device SDK for asyncio: the same client, awaitable.

Blocking calls (connecting, shadow requests, waiting for a PUBACK) run in worker threads;
messages and deltas arrive in the event loop, through callbacks (plain or `async def`) or
async iterators.

    async with AsyncDeviceClient("sensor-1", "s1.crt", "s1.key", ca="ca.pem",
                                 host="gateway.local") as client:
        await client.connect()
        async with await client.subscribe("things/sensor-1/cmd") as commands:
            async for message in commands:
                ...
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, Generic, TypeVar

from .client import DeviceClient, PathLike
from .errors import RequestTimeout
from .handles import Delivery, Subscription
from .message import Message, Payload
from .shadow import Shadow, State
from .shadow_protocol import ShadowDelta, ShadowDocument, UpdateAccepted

log = logging.getLogger("device_sdk")

T = TypeVar("T")
Callback = Callable[[T], Any] | Callable[[T], Awaitable[Any]]


class _Feed(Generic[T]):
    """Items from the SDK's callback thread into an asyncio queue (bounded: when the
    application stops reading, the newest items are dropped, with a warning)."""

    def __init__(self, loop: asyncio.AbstractEventLoop, maxsize: int, what: str) -> None:
        self.loop = loop
        self.queue: asyncio.Queue[T] = asyncio.Queue(maxsize)
        self.what = what
        self.dropped = 0

    def offer(self, item: T) -> None:  # the callback thread
        try:
            self.loop.call_soon_threadsafe(self._put, item)
        except RuntimeError:  # the loop is closed: nobody is reading any more
            pass

    def _put(self, item: T) -> None:
        try:
            self.queue.put_nowait(item)
        except asyncio.QueueFull:
            self.dropped += 1
            if self.dropped in (1, 10, 100) or self.dropped % 1000 == 0:
                log.warning("%s: %d item(s) dropped: the application is not reading them",
                            self.what, self.dropped)


def _in_loop(loop: asyncio.AbstractEventLoop, callback: Callback[T]) -> Callable[[T], None]:
    """A thread-side callback that runs `callback` (plain or async) in `loop`."""

    def run(item: T) -> None:
        result = callback(item)
        if inspect.isawaitable(result):
            task = loop.create_task(result)  # type: ignore[arg-type]
            task.add_done_callback(_log_failure)

    def from_thread(item: T) -> None:
        try:
            loop.call_soon_threadsafe(run, item)
        except RuntimeError:
            pass

    return from_thread


def _log_failure(task: asyncio.Task) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("async callback failed", exc_info=task.exception())


class AsyncSubscription:
    """Messages on one filter, as an async iterator. `async with` ends it on exit."""

    def __init__(self, subscription: Subscription, feed: _Feed[Message]) -> None:
        self.subscription = subscription
        self._feed = feed

    @property
    def topic_filter(self) -> str:
        return self.subscription.topic_filter

    async def get(self) -> Message:
        return await self._feed.queue.get()

    def __aiter__(self) -> AsyncIterator[Message]:
        return self

    async def __anext__(self) -> Message:
        return await self._feed.queue.get()

    def unsubscribe(self) -> None:
        self.subscription.unsubscribe()

    async def __aenter__(self) -> AsyncSubscription:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.unsubscribe()


class AsyncDeviceClient:
    """DeviceClient for asyncio; takes the same arguments. `async with` closes it on exit
    (connect with `await client.connect()`, or `client.start()` to connect in the
    background)."""

    def __init__(self, thing_name: str, cert: PathLike, key: PathLike, **options: Any) -> None:
        self.client = DeviceClient(thing_name, cert, key, **options)

    @property
    def thing_name(self) -> str:
        return self.client.thing_name

    @property
    def connected(self) -> bool:
        return self.client.connected

    async def connect(self, timeout: float = 30.0) -> None:
        await asyncio.to_thread(self.client.connect, timeout)

    def start(self) -> None:
        self.client.start()

    async def wait_connected(self, timeout: float | None = None) -> bool:
        return await asyncio.to_thread(self.client.wait_connected, timeout)

    async def close(self, timeout: float = 5.0) -> None:
        await asyncio.to_thread(self.client.close, timeout)

    async def __aenter__(self) -> AsyncDeviceClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def publish(self, topic: str, payload: Payload, qos: int = 1, retain: bool = False,
                      *, wait: bool = False, timeout: float = 30.0) -> Delivery:
        """Publish (QoS 1 through the offline queue). With wait=True, return once the
        gateway has acknowledged it (RequestTimeout after `timeout` seconds; the message
        stays queued)."""
        delivery = await asyncio.to_thread(self.client.publish, topic, payload, qos, retain)
        if wait and not await asyncio.to_thread(delivery.wait, timeout):
            raise RequestTimeout(f"no PUBACK for the message to {topic!r} within {timeout:g} s "
                                 "(it stays in the offline queue)")
        return delivery

    async def flush(self, timeout: float | None = None) -> bool:
        return await asyncio.to_thread(self.client.flush, timeout)

    async def subscribe(self, topic_filter: str, callback: Callback[Message] | None = None,
                        qos: int = 1, *, maxsize: int = 1000,
                        timeout: float = 10.0) -> AsyncSubscription:
        """Messages on `topic_filter`: to `callback` (plain or async, run in this loop) if
        given, else through the returned AsyncSubscription's async iterator."""
        loop = asyncio.get_running_loop()
        feed: _Feed[Message] = _Feed(loop, maxsize, f"subscription {topic_filter}")
        handler = _in_loop(loop, callback) if callback is not None else feed.offer
        sub = await asyncio.to_thread(self.client.subscribe, topic_filter, handler, qos,
                                      timeout)
        return AsyncSubscription(sub, feed)

    def shadow(self, name: str | None = None) -> AsyncShadow:
        return AsyncShadow(self.client.shadow(name))


class AsyncShadow:
    """Shadow for asyncio: the same operations, awaitable; deltas into the loop."""

    def __init__(self, shadow: Shadow) -> None:
        self.shadow = shadow

    @property
    def version(self) -> int | None:
        return self.shadow.version

    async def get(self, timeout: float | None = None) -> ShadowDocument:
        return await asyncio.to_thread(self.shadow.get, timeout)

    async def update(self, state: State, *, version: int | None = None,
                     timeout: float | None = None) -> UpdateAccepted:
        return await asyncio.to_thread(lambda: self.shadow.update(state, version=version,
                                                                  timeout=timeout))

    async def report(self, reported: State | None, *, version: int | None = None,
                     timeout: float | None = None) -> UpdateAccepted:
        return await asyncio.to_thread(lambda: self.shadow.report(reported, version=version,
                                                                  timeout=timeout))

    async def desire(self, desired: State | None, *, version: int | None = None,
                     timeout: float | None = None) -> UpdateAccepted:
        return await asyncio.to_thread(lambda: self.shadow.desire(desired, version=version,
                                                                  timeout=timeout))

    async def delete(self, timeout: float | None = None) -> int:
        return await asyncio.to_thread(self.shadow.delete, timeout)

    async def modify(self, change: Callable[[ShadowDocument | None], State | None], *,
                     attempts: int = 5, timeout: float | None = None) -> UpdateAccepted | None:
        """As Shadow.modify; `change` is a plain function (it runs in a worker thread)."""
        return await asyncio.to_thread(lambda: self.shadow.modify(change, attempts=attempts,
                                                                  timeout=timeout))

    async def on_delta(self, callback: Callback[ShadowDelta]) -> None:
        """`callback(delta)` (plain or async) in this loop for every new delta."""
        handler = _in_loop(asyncio.get_running_loop(), callback)
        await asyncio.to_thread(self.shadow.on_delta, handler)

    async def deltas(self, maxsize: int = 100) -> AsyncIterator[ShadowDelta]:
        """Every new delta, as an async iterator (runs until cancelled)."""
        feed: _Feed[ShadowDelta] = _Feed(asyncio.get_running_loop(), maxsize,
                                         f"deltas of {self.shadow.prefix}")
        await asyncio.to_thread(self.shadow.on_delta, feed.offer)
        try:
            while True:
                yield await feed.queue.get()
        finally:
            self.shadow.remove_callback(feed.offer)
