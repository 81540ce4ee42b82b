"""A function's queue of invocations: bounded, first in first out, one reader (the pool's
dispatcher). It sits on the broker's dispatch path, once per message, so it is a deque
with a future for the reader to wait on when empty, not an asyncio.Queue (whose
bookkeeping for many readers and writers costs ~4x as much)."""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Generic, TypeVar

T = TypeVar("T")


class Intake(Generic[T]):
    __slots__ = ("_items", "maxsize", "_waiter")

    def __init__(self, maxsize: int) -> None:
        self._items: deque[T] = deque()
        self.maxsize = maxsize
        self._waiter: asyncio.Future | None = None

    def put_nowait(self, item: T) -> bool:
        """Queue `item`; False (nothing queued) when the queue is at maxsize."""
        if len(self._items) >= self.maxsize:
            return False
        self._items.append(item)
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)
        return True

    async def get(self) -> T:
        """The oldest item, waiting for one if there is none."""
        while not self._items:
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        return self._items.popleft()

    def get_nowait(self) -> T:
        """The oldest item; IndexError when empty."""
        return self._items.popleft()

    def empty(self) -> bool:
        return not self._items

    def qsize(self) -> int:
        return len(self._items)
