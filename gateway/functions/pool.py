"""One function's invocations: a bounded queue, at most N running at once, and its workers.

on-demand: up to max_concurrency workers, started when an invocation needs one and retired
after idle_timeout_s without work. The most recently used worker is reused first, so a
trickle of traffic keeps one worker warm rather than all of them.
pinned: `instances` workers started with the gateway and kept; one that dies is restarted
with exponential backoff (0.5 s doubling to 60 s; reset once a worker serves).
batching (pinned, batch_max > 1): a free worker gets up to batch_max queued invocations in
one handler call (see batching.py); each still gets its own outcome.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from .batching import batch_timeout, fill_batch
from .intake import Intake
from .nesting import ROOT, Lineage, waits_for_itself
from .settings import FunctionSettings
from .worker import Outcome, Worker, WorkerStartError, item_outcome

log = logging.getLogger("lichen.functions")

BACKOFF_FIRST = 0.5
BACKOFF_MAX = 60.0
_CALL_OK = Outcome(True)  # a batch call that returned: the worker is sound

# request ids shaped as UUIDs (as Lambda's), unique per gateway run: a random prefix and a
# counter, since a uuid4 per message costs a getrandom() call (~5 us on the hot path)
_ID_PREFIX = str(uuid.uuid4())[:24]
_id_counter = itertools.count(1)


def new_request_id() -> str:
    return "%s%012x" % (_ID_PREFIX, next(_id_counter))  # noqa: UP031 - the fastest form


@dataclass(slots=True)
class Invocation:
    event: Any                               # an event already decoded, or
    topic: str | None = None
    payload: bytes | None = None             # a message's payload, decoded by the worker
    request_id: str = field(default_factory=new_request_id)
    future: asyncio.Future | None = None     # set when the caller waits for the outcome
    timeout_s: float | None = None           # a nested call's remaining time, if shorter
    reply: dict | None = None                # control-topic response routing
    queued_at: float = 0.0                   # batching: when the window starts (monotonic)
    lineage: Lineage = ROOT                  # a nested call's place in its chain


@dataclass(slots=True)
class FunctionStats:
    invocations: int = 0
    succeeded: int = 0
    failed: int = 0          # the handler raised
    timeouts: int = 0
    crashes: int = 0         # the worker died mid-invocation (os._exit, a signal, C abort)
    out_of_memory: int = 0
    init_failures: int = 0
    queue_full: int = 0      # dropped: the queue was at queue_size
    workers_started: int = 0
    workers_retired: int = 0
    batches: int = 0         # batching: handler calls, each carrying 1..batch_max events
    invokes_refused: int = 0  # context.invoke calls refused: too deep, or would deadlock


class Slot:
    """A place for one worker; a pool has max_concurrency (or instances) of them."""

    __slots__ = ("index", "worker", "last_used", "failures", "ready_at", "last_error",
                 "running")

    def __init__(self, index: int) -> None:
        self.index = index
        self.worker: Worker | None = None
        self.running: Sequence[Invocation] | None = None   # what its worker runs now
        self.last_used = 0.0
        self.failures = 0        # consecutive failed starts or deaths: the backoff exponent
        self.ready_at = 0.0      # pinned: no restart before this (monotonic)
        self.last_error = ""


class FunctionPool:
    def __init__(self, fn: FunctionSettings, make_worker: Callable[[], Worker],
                 on_outcome: Callable[[FunctionSettings, Invocation, Outcome], None],
                 on_result: Callable[[bytes], None] | None = None) -> None:
        """on_outcome gets every invocation's outcome. With on_result, a batch's plain
        successes (no caller waiting) skip it: on_result gets the result bytes instead."""
        self.fn = fn
        self.make_worker = make_worker
        self.on_outcome = on_outcome
        self.on_result = on_result
        self.stats = FunctionStats()
        self.queue: Intake[Invocation] = Intake(fn.queue_size)
        self.pinned = fn.lifecycle == "pinned"
        self.batching = fn.batching
        n = fn.instances if self.pinned else fn.max_concurrency
        self.slots = [Slot(i) for i in range(n)]
        self._idle: list[Slot] = list(reversed(self.slots))
        self._slot_free = asyncio.Event()
        self._tasks: set[asyncio.Task] = set()
        self._held: Invocation | None = None   # batching: taken, waiting for a worker
        self.running = 0

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        if self.pinned:
            # start the instances together; a failure is logged and retried, never fatal
            results = await asyncio.gather(*(self._ensure_worker(s) for s in self.slots),
                                           return_exceptions=True)
            for r in results:
                if isinstance(r, WorkerStartError | OSError):
                    log.error("function %s: pinned worker failed to start: %s",
                              self.fn.name, r)
            self._spawn_task(self._watch_pinned())
        else:
            self._spawn_task(self._reap_idle())
        self._spawn_task(self._dispatch_batches() if self.batching else self._dispatch())

    async def stop(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await asyncio.gather(*(s.worker.retire() for s in self.slots if s.worker),
                             return_exceptions=True)
        waiting = [self._held] if self._held is not None else []
        self._held = None
        while not self.queue.empty():
            waiting.append(self.queue.get_nowait())
        for inv in waiting:
            self._finish(inv, Outcome(False, error_type="Shutdown", kind="error",
                                      error_message="the gateway is stopping"))

    def _spawn_task(self, coro) -> asyncio.Task:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    # ------------------------------------------------------------------ intake

    def submit(self, inv: Invocation) -> bool:
        """Queue an invocation; False (logged, counted, reported) when the queue is full."""
        if self.batching:
            inv.queued_at = time.monotonic()
        if not self.queue.put_nowait(inv):
            self.stats.queue_full += 1
            n = self.stats.queue_full
            if n == 1 or n % 100 == 0:  # clear, but not a flood
                log.error("function %s: queue full (%d waiting, queue_size %d): invocation "
                          "dropped (%d dropped so far)", self.fn.name, self.queue.qsize(),
                          self.fn.queue_size, n)
            self._finish(inv, Outcome(False, error_type="QueueFull", kind="queue_full",
                                      error_message=f"function {self.fn.name} queue is full "
                                                    f"({self.fn.queue_size})"), count=False)
            return False
        return True

    async def _dispatch(self) -> None:
        while True:
            inv = await self.queue.get()
            while not self._idle:
                self._slot_free.clear()
                await self._slot_free.wait()
            slot = self._idle.pop()  # LIFO: the warmest worker first
            self.running += 1
            self._spawn_task(self._run(slot, inv))

    async def _dispatch_batches(self) -> None:
        window = self.fn.batch_window_ms / 1000
        while True:
            # `_held` while no worker is free: a busy one takes it with its next batch, so a
            # worker that keeps going (see _run_batch) never overtakes the oldest event
            self._held = await self.queue.get()
            while not self._idle:
                self._slot_free.clear()
                await self._slot_free.wait()
            first, self._held = self._held, None
            if first is None:
                continue
            # take the worker first: what queues while the batch fills goes to it too
            slot = self._idle.pop()
            self.running += 1
            batch = [first]
            await fill_batch(self.queue, batch, self.fn.batch_max, first.queued_at + window)
            self._spawn_task(self._run_batch(slot, batch))

    def _take_queued(self) -> list[Invocation]:
        """What waits now, oldest first, up to batch_max, if it may go at once: with a
        window, only a full batch (a partial one is left to the dispatcher's window)."""
        waiting = self.queue.qsize() + (self._held is not None)
        if not waiting or (self.fn.batch_window_ms and waiting < self.fn.batch_max):
            return []
        batch = []
        if self._held is not None:
            batch.append(self._held)
            self._held = None
        queue, limit = self.queue, self.fn.batch_max
        while len(batch) < limit and not queue.empty():
            batch.append(queue.get_nowait())
        return batch

    def waits_for_itself(self, ancestors: frozenset[str]) -> bool:
        """Whether every worker is held by one of `ancestors` (see nesting.py)."""
        return waits_for_itself((slot.running for slot in self.slots), ancestors)

    def _release(self, slot: Slot) -> None:
        slot.running = None
        self.running -= 1
        slot.last_used = time.monotonic()
        self._idle.append(slot)
        self._slot_free.set()

    # ------------------------------------------------------------------ running

    async def _ensure_worker(self, slot: Slot, max_wait: float = BACKOFF_MAX) -> Worker:
        if slot.worker is not None and slot.worker.alive:
            return slot.worker
        slot.worker = None
        delay = slot.ready_at - time.monotonic()
        if delay > max_wait:  # in backoff: fail now rather than hold the invocation
            raise WorkerStartError("init", f"worker restarting after {slot.failures} "
                                   f"failure(s), next attempt in {delay:.1f}s; last: "
                                   f"{slot.last_error}")
        if delay > 0:
            await asyncio.sleep(delay)
        worker = self.make_worker()
        try:
            await worker.start()
        except (WorkerStartError, OSError) as exc:
            self.stats.init_failures += 1
            slot.last_error = str(exc)
            self._note_failure(slot)
            raise
        except BaseException:
            self._note_failure(slot)
            raise
        self.stats.workers_started += 1
        slot.worker = worker
        return worker

    def _note_failure(self, slot: Slot) -> None:
        slot.failures += 1
        if self.pinned:
            backoff = min(BACKOFF_MAX, BACKOFF_FIRST * 2 ** (slot.failures - 1))
            slot.ready_at = time.monotonic() + backoff

    async def _run(self, slot: Slot, inv: Invocation) -> None:
        try:
            timeout = self.fn.timeout_s
            if inv.timeout_s is not None:
                timeout = max(0.01, min(timeout, inv.timeout_s))
            try:
                worker = await self._ensure_worker(slot, max_wait=timeout)
            except (WorkerStartError, OSError) as exc:  # OSError: cannot spawn at all
                log.error("function %s: %s", self.fn.name, exc)
                self._finish(inv, Outcome(False, error_type="InitError", kind="init",
                                          error_message=str(exc)))
                return
            slot.running = callers = (inv,)
            outcome = await worker.invoke(inv.request_id, inv.event, inv.topic, timeout,
                                          inv.payload, callers)
            self._after_call(slot, worker, outcome)
            self._finish(inv, outcome)
        finally:
            self._release(slot)

    async def _run_batch(self, slot: Slot, batch: list[Invocation]) -> None:
        try:
            timeout = batch_timeout(self.fn.timeout_s, (inv.timeout_s for inv in batch))
            try:
                worker = await self._ensure_worker(slot, max_wait=timeout)
            except (WorkerStartError, OSError) as exc:
                log.error("function %s: %s", self.fn.name, exc)
                failed = Outcome(False, error_type="InitError", kind="init",
                                 error_message=str(exc), events=len(batch))
                for inv in batch:
                    self._finish(inv, failed)
                return
            self._send_batch(slot, worker, batch)
            while batch:
                reply = await worker.batch_result()
                failed = reply if type(reply) is Outcome else None
                self._after_call(slot, worker, failed or _CALL_OK)
                # the worker is free: give it what queued meanwhile before publishing these
                # results, so it computes while the gateway publishes
                following = self._take_queued() if worker.alive else []
                if following:
                    self._send_batch(slot, worker, following)
                try:
                    if failed is not None:
                        for inv in batch:
                            self._finish(inv, failed)
                    else:
                        self._finish_items(batch, reply)
                except Exception:  # keep reading: `following` is on its way back
                    log.exception("function %s: reporting a batch's outcomes failed",
                                  self.fn.name)
                batch = following
        finally:
            self._release(slot)

    def _finish_items(self, batch: list[Invocation], items: list) -> None:
        on_result, st = self.on_result, self.stats
        for inv, item in zip(batch, items, strict=True):
            if (on_result is not None and (item is None or type(item) is bytes)
                    and inv.future is None and inv.reply is None):
                # the common case, kept short: a message in, its result out
                st.invocations += 1
                st.succeeded += 1
                if item is not None:
                    on_result(item)
            else:
                self._finish(inv, item_outcome(item))

    def _send_batch(self, slot: Slot, worker: Worker, batch: list[Invocation]) -> None:
        self.stats.batches += 1
        slot.running = batch
        worker.send_batch([inv.request_id for inv in batch], [inv.event for inv in batch],
                          [inv.topic for inv in batch], [inv.payload for inv in batch],
                          batch_timeout(self.fn.timeout_s, (inv.timeout_s for inv in batch)),
                          batch)

    def _after_call(self, slot: Slot, worker: Worker, outcome: Outcome) -> None:
        if outcome.ok or outcome.kind == "error":
            slot.failures = 0
        if not worker.alive:
            slot.worker = None
            if outcome.kind in ("crash", "oom", "timeout"):
                self._note_failure(slot)

    def _finish(self, inv: Invocation, outcome: Outcome, count: bool = True) -> None:
        st = self.stats
        if count:
            st.invocations += 1
            if outcome.ok:
                st.succeeded += 1
            elif outcome.kind == "timeout":
                st.timeouts += 1
            elif outcome.kind == "crash":
                st.crashes += 1
            elif outcome.kind == "oom":
                st.out_of_memory += 1
            elif outcome.kind == "error":
                st.failed += 1
        self.on_outcome(self.fn, inv, outcome)
        if inv.future is not None and not inv.future.done():
            inv.future.set_result(outcome)

    # ------------------------------------------------------------------ upkeep

    async def _reap_idle(self) -> None:
        """on-demand: retire workers idle for longer than idle_timeout_s."""
        period = min(1.0, self.fn.idle_timeout_s / 2)
        while True:
            await asyncio.sleep(period)
            cutoff = time.monotonic() - self.fn.idle_timeout_s
            for slot in list(self._idle):
                if slot.worker is not None and slot.last_used < cutoff:
                    worker, slot.worker = slot.worker, None
                    self.stats.workers_retired += 1
                    self._spawn_task(worker.retire())

    async def _watch_pinned(self) -> None:
        """pinned: bring back instances that died or never started, between invocations."""
        while True:
            await asyncio.sleep(0.2)
            now = time.monotonic()
            for slot in list(self._idle):
                if slot.worker is not None and slot.worker.alive:
                    continue
                if slot.worker is None and slot.ready_at > now:
                    continue  # still backing off; the slot stays free to fail fast
                if slot.worker is not None:
                    log.warning("function %s: pinned worker %s died (%s); restarting",
                                self.fn.name, slot.worker.pid,
                                slot.worker.proc.returncode if slot.worker.proc else "?")
                    slot.worker = None
                    self._note_failure(slot)
                # take the slot while it restarts so the dispatcher waits for it
                self._idle.remove(slot)
                self.running += 1
                self._spawn_task(self._restart(slot))

    async def _restart(self, slot: Slot) -> None:
        try:
            await self._ensure_worker(slot)
        except (WorkerStartError, OSError) as exc:
            log.error("function %s: pinned worker failed to start: %s (retry in %.1fs)",
                      self.fn.name, exc, max(0.0, slot.ready_at - time.monotonic()))
        finally:
            self._release(slot)

    def status(self) -> dict[str, Any]:
        return {"lifecycle": self.fn.lifecycle, "handler": self.fn.handler,
                "triggers": list(self.fn.triggers), "batch_max": self.fn.batch_max,
                "workers": sum(1 for s in self.slots if s.worker and s.worker.alive),
                "running": self.running, "queued": self.queue.qsize(),
                **{k: getattr(self.stats, k) for k in self.stats.__dataclass_fields__}}

