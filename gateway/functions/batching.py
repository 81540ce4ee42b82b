"""Micro-batching for pinned functions (batch_max > 1): which queued invocations go to a
worker together, and the deadline they share.

A batch is sent as soon as it has batch_max events, or batch_window_ms after its first
event was queued, whichever comes first; with a window of 0 it takes what is queued when a
worker is free and never waits. Under load, events queue while every worker is busy, so
batches fill without any window.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable
from typing import Any

from .intake import Intake


async def fill_batch(queue: Intake, batch: list[Any], batch_max: int,
                     deadline: float) -> None:
    """Add invocations from `queue` to `batch` (which holds the first) up to batch_max:
    those already queued at once, then those that arrive before `deadline` (monotonic)."""
    while len(batch) < batch_max:
        if not queue.empty():
            batch.append(queue.get_nowait())
            continue
        left = deadline - time.monotonic()
        if left <= 0:
            return
        try:
            async with asyncio.timeout(left):
                batch.append(await queue.get())
        except TimeoutError:
            return


def batch_timeout(timeout_s: float, nested_timeouts: Iterable[float | None]) -> float:
    """One handler call serves the whole batch, so it gets the function's timeout_s, cut
    to the shortest time a nested caller in the batch has left."""
    shortest = min((t for t in nested_timeouts if t is not None), default=None)
    if shortest is None:
        return timeout_s
    return max(0.01, min(timeout_s, shortest))
