"""The function executor: attaches each function's triggers to the broker, turns messages
into events, runs them in worker pools and publishes what comes back.

Events: a payload that is JSON is decoded (an object arrives as a dict, as in Lambda); any
other payload arrives as the raw `bytes`. Results: the handler's return value as JSON on
result_topic (bytes as they are; None publishes nothing). Failures: logged with their
traceback, counted, and published to error_topic as
{"function", "requestId", "errorType", "errorMessage", "kind"}. A batching function's
handler gets a list of events (see handling.py); results and failures are still per event.

Control topics (loopback clients; document in README):
  $lichen/functions/NAME/invoke[/REQID]  payload = the event
  reply on the MQTT 5 response topic (with its correlation data) if given, else on
  $lichen/functions/NAME/response/REQID: {"ok": true, "result": ...} or
  {"ok": false, "errorType", "errorMessage", "kind"}.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import json
import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from ..ml.settings import ModelSettings
from ..mqtt.broker import Broker, InternalSubscriber
from ..mqtt.message import Message
from .logsink import LogSink
from .nesting import Lineage, deadlock_error, depth_error, nested_lineage
from .pool import FunctionPool, Invocation
from .settings import FunctionSettings
from .worker import Outcome, Worker

log = logging.getLogger("lichen.functions")

CONTROL_PREFIX = "$lichen/functions/"
CONTROL_FILTERS = (CONTROL_PREFIX + "+/invoke", CONTROL_PREFIX + "+/invoke/+")


class FunctionExecutor:
    def __init__(self, broker: Broker, functions: list[FunctionSettings],
                 models: list[ModelSettings], state_dir: Path) -> None:
        self.broker = broker
        self.log_dir = state_dir / "functions"
        self._models = [dataclasses.asdict(m) for m in models]
        self.pools: dict[str, FunctionPool] = {}
        self.sinks: dict[str, LogSink] = {}
        self._subs: list[InternalSubscriber] = []
        self._last_logged: Outcome | None = None
        for fn in functions:
            sink = self.sinks[fn.name] = LogSink(self.log_dir / f"{fn.name}.log")
            self.pools[fn.name] = FunctionPool(
                fn, lambda fn=fn, sink=sink: Worker(fn, self._models, sink, self._publish,
                                                    self._nested_invoke),
                self._on_outcome, self._result_publisher(fn.result_topic))

    async def start(self) -> None:
        for pool in self.pools.values():
            await pool.start()
            for topic_filter in pool.fn.triggers:
                self._subs.append(self.broker.subscribe_callback(
                    topic_filter, lambda msg, pool=pool: self._triggered(pool, msg)))
        if self.pools:
            for topic_filter in CONTROL_FILTERS:
                self._subs.append(self.broker.subscribe_callback(topic_filter, self._control))
            log.info("functions: %s", ", ".join(
                f"{p.fn.name} ({p.fn.lifecycle})" for p in self.pools.values()))

    async def stop(self) -> None:
        for sub in self._subs:
            self.broker.unsubscribe_callback(sub)
        self._subs.clear()
        await asyncio.gather(*(p.stop() for p in self.pools.values()), return_exceptions=True)
        for sink in self.sinks.values():
            sink.close()

    # ------------------------------------------------------------------ intake

    def _triggered(self, pool: FunctionPool, msg: Message) -> None:
        # on the broker's dispatch path: queue, nothing more (the worker decodes the JSON)
        pool.submit(Invocation(None, msg.topic, payload=msg.payload))

    def _control(self, msg: Message) -> None:
        parts = msg.topic.split("/")
        name = parts[2]
        request_id = parts[4] if len(parts) > 4 else None
        reply = {"topic": msg.properties.get("response_topic"),
                 "correlation_data": msg.properties.get("correlation_data"),
                 "request_id": request_id, "function": name}
        if reply["topic"] is None and request_id is not None:
            reply["topic"] = f"{CONTROL_PREFIX}{name}/response/{request_id}"
        pool = self.pools.get(name)
        if pool is None:
            self._reply(reply, Outcome(False, error_type="ResourceNotFound", kind="error",
                                       error_message=f"no function named {name!r}"))
            return
        inv = Invocation(None, msg.topic, payload=msg.payload, reply=reply)
        if request_id:
            inv.request_id = request_id
        pool.submit(inv)

    def submit(self, name: str, event: Any, topic: str | None = None) -> asyncio.Future:
        """Queue an invocation from inside the gateway; the future gets its Outcome."""
        fut = asyncio.get_running_loop().create_future()
        pool = self.pools.get(name)
        if pool is None:
            fut.set_result(Outcome(False, error_type="ResourceNotFound", kind="error",
                                   error_message=f"no function named {name!r}"))
            return fut
        pool.submit(Invocation(event, topic, future=fut))
        return fut

    async def invoke(self, name: str, event: Any, topic: str | None = None) -> Outcome:
        return await self.submit(name, event, topic)

    async def _nested_invoke(self, name: str, event: Any, timeout_ms: int | None,
                             callers: Sequence[Invocation]) -> Outcome:
        """context.invoke from a handler running `callers`: refused at once, with the reason,
        when the chain is too deep or could never run (see nesting.py)."""
        pool = self.pools.get(name)
        if pool is None:
            return Outcome(False, error_type="ResourceNotFound", kind="error",
                           error_message=f"no function named {name!r}")
        lineage = nested_lineage(callers) if callers else Lineage(1)
        problem = depth_error(name, lineage.depth, pool.fn.max_invoke_depth)
        if problem is not None:
            pool.stats.invokes_refused += 1
            return Outcome(False, error_type="InvokeDepthExceeded", kind="error",
                           error_message=problem)
        if pool.waits_for_itself(lineage.ancestors):
            pool.stats.invokes_refused += 1
            return Outcome(False, error_type="InvokeDeadlock", kind="error",
                           error_message=deadlock_error(name, len(pool.slots)))
        fut = asyncio.get_running_loop().create_future()
        timeout = timeout_ms / 1000 if timeout_ms is not None else None
        pool.submit(Invocation(event, None, future=fut, timeout_s=timeout, lineage=lineage))
        return await fut

    # ------------------------------------------------------------------ results

    def _publish(self, topic: str, payload: bytes, qos: int, retain: bool) -> None:
        try:
            self.broker.publish(topic, payload, qos, retain)
        except ValueError as exc:
            log.error("function publish to %r refused: %s", topic, exc)

    def _result_publisher(self, topic: str | None) -> Callable[[bytes], None] | None:
        # the broker's publish itself, once per result: the topic was validated with the
        # config, so nothing is left for _publish to catch
        return functools.partial(self.broker.publish, topic) if topic else None

    def _on_outcome(self, fn: FunctionSettings, inv: Invocation, out: Outcome) -> None:
        if inv.reply is not None:
            self._reply(inv.reply, out)
        self._report(fn, inv, out)

    def _report(self, fn: FunctionSettings, inv: Invocation, out: Outcome) -> None:
        if out.ok:
            if out.result is not None and fn.result_topic:
                self._publish(fn.result_topic, out.result, 0, False)
            return
        if out is not self._last_logged:  # a batch's shared failure is logged once
            self._last_logged = out
            what = f"request {inv.request_id}"
            if out.events > 1:
                what += f" and the {out.events - 1} others in its batch"
            log.error("function %s %s failed: %s: %s", fn.name, what, out.error_type,
                      out.error_message)
            self.sinks[fn.name].write(None, (f"{what} failed: {out.error_type}: "
                                             f"{out.error_message}\n{out.traceback}").encode())
        if fn.error_topic:
            body = {"function": fn.name, "requestId": inv.request_id, "topic": inv.topic,
                    **out.error_dict()}
            self._publish(fn.error_topic, json.dumps(body).encode(), 0, False)

    def _reply(self, reply: dict, out: Outcome) -> None:
        if not reply.get("topic"):
            return
        if out.ok:
            try:
                result = json.loads(out.result) if out.result is not None else None
            except ValueError:
                result = out.result.decode(errors="replace")
            body = {"ok": True, "result": result}
        else:
            body = {"ok": False, **out.error_dict()}
        body["requestId"] = reply.get("request_id")
        props = {}
        if reply.get("correlation_data") is not None:
            props["correlation_data"] = reply["correlation_data"]
        try:
            self.broker.publish(reply["topic"], json.dumps(body).encode(), 1, False, props)
        except ValueError as exc:
            log.error("cannot reply to %r: %s", reply["topic"], exc)

    def status(self) -> dict[str, Any]:
        return {name: pool.status() for name, pool in self.pools.items()}
