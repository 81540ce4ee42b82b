"""The parent's handle on one worker process: spawn, invoke with a deadline, kill.

All I/O is asyncio pipes: the event loop never waits on a worker. A worker that overruns
its deadline is killed; one that dies mid-invocation is reported with how it died.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import protocol
from .logsink import LogSink
from .settings import FunctionSettings

log = logging.getLogger("lichen.functions")

ROOT = str(Path(__file__).resolve().parents[2])  # so the worker can import `gateway`
INIT_TIMEOUT = 60.0  # the handler's module import (and its model loading, if any)


@dataclass(slots=True)
class Outcome:
    ok: bool
    result: bytes | None = None          # JSON (or the bytes a handler returned)
    error_type: str = ""
    error_message: str = ""
    traceback: str = ""
    kind: str = "ok"                     # ok, error, timeout, crash, oom, init
    events: int = 1                      # > 1: one failure shared by a whole batch

    def error_dict(self) -> dict[str, Any]:
        return {"errorType": self.error_type, "errorMessage": self.error_message,
                "kind": self.kind}


# what to do with the worker's requests: publish(topic, payload, qos, retain) and
# invoke(function, event, timeout_ms, callers) -> Outcome, where callers is what the pool
# said the worker is running (the invocation, or the batch), for the call's lineage
PublishFn = Callable[[str, bytes, int, bool], None]
InvokeFn = Callable[[str, Any, int | None, Sequence[Any]], Awaitable[Outcome]]


def describe_exit(code: int | None) -> str:
    if code is None:
        return "worker vanished"
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        return f"worker killed by {name}"
    return f"worker exited with status {code}"


def item_outcome(item: Any) -> Outcome:
    """One event's outcome from a batch's items: bytes or None, or an error dict."""
    if item is None or type(item) is bytes:
        return Outcome(True, item)
    if type(item) is dict:
        return Outcome(False, error_type=str(item.get("error_type")), kind="error",
                       error_message=str(item.get("error_message")),
                       traceback=str(item.get("traceback", "")))
    return Outcome(False, error_type="ProtocolError", kind="crash",
                   error_message=f"the worker sent a {type(item).__name__} as a result")


class Worker:
    def __init__(self, fn: FunctionSettings, models: list[dict], sink: LogSink,
                 publish: PublishFn, invoke: InvokeFn) -> None:
        self.fn = fn
        self.models = models
        self.sink = sink
        self._publish = publish
        self._invoke = invoke
        self.proc: asyncio.subprocess.Process | None = None
        self.pid: int | None = None
        self._pump: asyncio.Task | None = None
        self._nested: set[asyncio.Task] = set()
        self._send_error: BaseException | None = None
        self._callers: Sequence[Any] = ()
        self._batch: tuple[int, float, float] = (0, 0.0, 0.0)  # size, timeout, deadline

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.returncode is None

    async def start(self) -> None:
        """Spawn the process and wait for its handler to import; raises WorkerStartError."""
        env = dict(os.environ)
        # one math-library thread per worker unless the function asks: N workers each
        # starting a thread per core (and a buffer per thread) would defeat memory_mb
        for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
            env.setdefault(var, "1")
        env.update(self.fn.environment)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (ROOT, env.get("PYTHONPATH")) if p)
        env["AWS_LAMBDA_FUNCTION_NAME"] = self.fn.name
        env["AWS_LAMBDA_FUNCTION_VERSION"] = self.fn.version
        env["AWS_LAMBDA_FUNCTION_MEMORY_SIZE"] = str(self.fn.memory_mb)
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "gateway.functions.worker_main",
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE, cwd=self.fn.code, env=env,
            start_new_session=True)  # a Ctrl-C at the terminal is the gateway's to handle
        self.pid = self.proc.pid
        self._pump = asyncio.get_running_loop().create_task(self._pump_log())
        self._send({"op": "init", "name": self.fn.name, "version": self.fn.version,
                    "code": self.fn.code, "handler": self.fn.handler,
                    "memory_mb": self.fn.memory_mb, "models": self.models})
        try:
            async with asyncio.timeout(max(INIT_TIMEOUT, self.fn.timeout_s)):
                msg = await protocol.read_frame(self.proc.stdout)
        except TimeoutError:
            await self.kill()
            raise WorkerStartError("init", "handler did not import within "
                                   f"{max(INIT_TIMEOUT, self.fn.timeout_s):g}s") from None
        except (asyncio.IncompleteReadError, protocol.ProtocolError, OSError):
            code = await self._reap()
            raise WorkerStartError("init", f"{describe_exit(code)} while starting "
                                   f"(see {self.sink.path})") from None
        if msg.get("op") == "init_error":
            self.sink.write(self.pid, msg["traceback"].encode())
            await self._reap()
            raise WorkerStartError("init", f"cannot load handler {self.fn.handler}: "
                                   f"{msg['error_type']}: {msg['error_message']}")

    async def invoke(self, request_id: str, event: Any, topic: str | None,
                     timeout_s: float, payload: bytes | None = None,
                     callers: Sequence[Any] = ()) -> Outcome:
        """Run one invocation; never raises for anything the function does. With `payload`
        (a message's bytes) the worker decodes the event, off the event loop. `callers`
        goes with the handler's context.invoke calls to the invoke hook."""
        self._callers = callers
        reply = await self._call({"op": "invoke", "id": request_id, "event": event,
                                  "topic": topic, "payload": payload,
                                  "timeout_ms": int(timeout_s * 1000)}, timeout_s)
        if type(reply) is Outcome:
            return reply
        if reply["ok"]:
            return Outcome(True, reply["result"])
        return await self._failed(reply)

    def send_batch(self, request_ids: list[str], events: list[Any],
                   topics: list[str | None], payloads: list[bytes | None],
                   timeout_s: float, callers: Sequence[Any] = ()) -> None:
        """Write a batch (one handler call) to the worker and return at once, so the gateway
        can publish the last batch's results while the worker runs this one; batch_result()
        waits for it (its deadline runs from now)."""
        self._callers = callers
        self._batch = (len(request_ids), timeout_s,
                       asyncio.get_running_loop().time() + timeout_s)
        self._begin({"op": "invoke_batch", "ids": request_ids, "events": events,
                     "topics": topics, "payloads": payloads,
                     "timeout_ms": int(timeout_s * 1000)})

    async def batch_result(self) -> Outcome | list[bytes | dict | None]:
        """The sent batch's outcome: an Outcome shared by every event when the call itself
        failed (an exception, a timeout, a crash); else an item per event, in order: its
        result (bytes, or None for nothing) or its error (a dict, see item_outcome)."""
        n, timeout_s, deadline = self._batch
        reply = await self._end(timeout_s, deadline)
        if type(reply) is Outcome:
            reply.events = n
            return reply
        if not reply["ok"]:
            out = await self._failed(reply)
            out.events = n
            return out
        results = reply["results"]
        if not isinstance(results, list) or len(results) != n:
            return Outcome(False, error_type="ProtocolError", kind="crash", events=n,
                           error_message=f"the worker answered a batch of {n} with "
                                         f"{type(results).__name__}")
        return results

    async def _call(self, frame: dict, timeout_s: float) -> dict | Outcome:
        self._begin(frame)
        return await self._end(timeout_s, asyncio.get_running_loop().time() + timeout_s)

    def _begin(self, frame: dict) -> None:
        try:
            self._send(frame)
            self._send_error = None
        except (OSError, RuntimeError) as exc:  # RuntimeError: writing to a closed transport
            self._send_error = exc   # _end reports the dead worker

    async def _end(self, timeout_s: float, deadline: float) -> dict | Outcome:
        """Serve the worker's requests until its "done" frame, which is returned; a timeout
        (the worker is killed) or a dead worker is an Outcome."""
        assert self.proc is not None
        try:
            if self._send_error is not None:
                raise self._send_error
            async with asyncio.timeout_at(deadline):
                await self.proc.stdin.drain()
                while True:
                    msg = await protocol.read_frame(self.proc.stdout)
                    op = msg.get("op")
                    if op == "done":
                        return msg
                    if op == "publish":
                        self._publish(msg["topic"], msg["payload"], msg["qos"], msg["retain"])
                    elif op == "invoke":
                        self._start_nested(msg)
        except TimeoutError:
            await self.kill()
            return Outcome(False, error_type="TimeoutError", kind="timeout",
                           error_message=f"Task timed out after {timeout_s:g} seconds "
                                         "(worker killed)")
        except (asyncio.IncompleteReadError, protocol.ProtocolError, OSError,
                RuntimeError) as exc:  # RuntimeError: writing to a closed transport
            code = await self._reap()
            why = describe_exit(code)
            if isinstance(exc, protocol.ProtocolError):
                why = f"{exc}; {why}"
            return Outcome(False, error_type="WorkerDied", kind="crash",
                           error_message=f"{why} during the invocation")
        finally:
            for task in self._nested:
                task.cancel()

    async def _failed(self, reply: dict) -> Outcome:
        """The Outcome of a "done" frame that reports the handler's exception."""
        kind = "oom" if reply["error_type"] == "MemoryError" else "error"
        if reply.get("restart"):
            await self._reap()
        return Outcome(False, error_type=reply["error_type"],
                       error_message=reply["error_message"], traceback=reply["traceback"],
                       kind=kind)

    def _start_nested(self, msg: dict) -> None:
        callers = self._callers

        async def run() -> None:
            out = await self._invoke(msg["function"], msg["event"], msg.get("timeout_ms"),
                                     callers)
            reply = {"op": "invoke_result", "call": msg["call"], "ok": out.ok,
                     "error_type": out.error_type, "error_message": out.error_message,
                     "result": None}
            if out.ok and out.result is not None:
                import json

                try:
                    reply["result"] = json.loads(out.result)
                except ValueError:
                    reply["result"] = out.result
            with contextlib.suppress(OSError, RuntimeError):
                self._send(reply)

        task = asyncio.get_running_loop().create_task(run())
        self._nested.add(task)
        task.add_done_callback(self._nested.discard)

    def _send(self, msg: dict) -> None:
        assert self.proc is not None and self.proc.stdin is not None
        self.proc.stdin.write(protocol.encode(msg))

    async def _pump_log(self) -> None:
        assert self.proc is not None and self.proc.stderr is not None
        stream = self.proc.stderr
        while True:
            try:
                chunk = await stream.read(65536)
            except (OSError, ValueError):
                return
            if not chunk:
                return
            # keep whole lines together where we can: wait briefly for the rest of a line
            if not chunk.endswith(b"\n"):
                with contextlib.suppress(asyncio.LimitOverrunError, ValueError, OSError):
                    chunk += await asyncio.wait_for(stream.readline(), 0.05)
            self.sink.write(self.pid, chunk)

    async def _reap(self) -> int | None:
        """Wait (briefly) for the process to go, killing it if it lingers."""
        if self.proc is None:
            return None
        try:
            async with asyncio.timeout(2.0):
                code = await self.proc.wait()
        except TimeoutError:
            await self.kill()
            code = self.proc.returncode
        if self._pump is not None:
            with contextlib.suppress(TimeoutError, asyncio.CancelledError):
                await asyncio.wait_for(asyncio.shield(self._pump), 1.0)
        return code

    async def kill(self) -> None:
        """SIGKILL the worker's whole process group: whatever the handler started, too."""
        if self.proc is not None and self.proc.returncode is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                with contextlib.suppress(ProcessLookupError):
                    self.proc.kill()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(5.0):
                    await self.proc.wait()

    async def retire(self) -> None:
        """Ask politely (close stdin: the worker returns), then insist."""
        if self.proc is None or self.proc.returncode is not None:
            return
        with contextlib.suppress(OSError, RuntimeError):
            self.proc.stdin.close()
        try:
            async with asyncio.timeout(2.0):
                await self.proc.wait()
        except TimeoutError:
            await self.kill()
        if self._pump is not None:
            with contextlib.suppress(TimeoutError, asyncio.CancelledError):
                await asyncio.wait_for(asyncio.shield(self._pump), 1.0)


class WorkerStartError(Exception):
    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind
