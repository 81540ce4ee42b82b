"""A function worker process: `python -m gateway.functions.worker_main`.

The parent sends an init frame on stdin; the worker caps its address space, imports the
handler (as Lambda's init phase), says ready, then serves one invocation at a time until
stdin closes. Frames go back on the original stdout; fds 1 and 2 both become the parent's
stderr pipe, so whatever the handler prints lands in the function's log.
"""

from __future__ import annotations

import asyncio
import importlib
import inspect
import json
import os
import resource
import sys
import time
import traceback
from typing import Any

from .context import GatewayClient, LambdaContext, json_default
from .protocol import read_frame_sync, write_frame_fd


def decode_event(payload: bytes) -> Any:
    """A message's payload as the handler's event: JSON if it is JSON, else the bytes."""
    try:
        return json.loads(payload)
    except (ValueError, UnicodeDecodeError):
        return bytes(payload)


def _limit_memory(memory_mb: int) -> None:
    limit = memory_mb << 20
    _soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    if hard != resource.RLIM_INFINITY:
        limit = min(limit, hard)
    resource.setrlimit(resource.RLIMIT_AS, (limit, hard))


def _error(exc: BaseException) -> dict[str, Any]:
    return {"error_type": type(exc).__name__, "error_message": str(exc),
            "traceback": "".join(traceback.format_exception(exc))}


def _result_json(result: Any) -> bytes | None:
    if result is None:
        return None
    if isinstance(result, bytes | bytearray):
        return bytes(result)
    return json.dumps(result, default=json_default).encode()


def _die_with_parent() -> None:
    # a gateway killed with -9 takes its workers along (Linux); elsewhere EOF on stdin does
    try:
        import ctypes
        import signal

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def main() -> int:
    _die_with_parent()
    proto_fd = os.dup(1)
    os.dup2(2, 1)  # prints from the handler go to the log pipe, never into the protocol
    sys.stdout.reconfigure(line_buffering=True)
    stdin = sys.stdin.buffer
    sys.stdin = open(os.devnull)  # noqa: SIM115 - a handler reading stdin would eat frames

    def send(msg: dict) -> None:
        write_frame_fd(proto_fd, msg)

    def receive() -> dict | None:
        return read_frame_sync(stdin)

    init = receive()
    if init is None or init.get("op") != "init":
        return 2
    _limit_memory(init["memory_mb"])
    registry = None

    def infer(model: str, inputs: dict) -> dict:
        nonlocal registry
        if registry is None:
            from ..ml.registry import ModelRegistry
            from ..ml.settings import ModelSettings

            registry = ModelRegistry([ModelSettings(**m) for m in init["models"]])
        return registry.infer(model, inputs)

    try:
        sys.path.insert(0, init["code"])
        module_name, func_name = init["handler"].rsplit(".", 1)
        handler = getattr(importlib.import_module(module_name), func_name)
    except BaseException as exc:
        send({"op": "init_error", **_error(exc)})
        return 1
    client = GatewayClient(send, receive, infer)
    send({"op": "ready", "pid": os.getpid()})
    while True:
        msg = receive()
        if msg is None:
            return 0
        if msg.get("op") != "invoke":
            continue
        deadline = time.monotonic() + msg["timeout_ms"] / 1000
        ctx = LambdaContext(client, msg.get("topic"), msg["id"], deadline, init["name"],
                            init["version"], init["memory_mb"])
        try:
            event = msg["event"] if msg.get("payload") is None else decode_event(msg["payload"])
            result = handler(event, ctx)
            if inspect.iscoroutine(result):  # an `async def` handler runs to completion here
                result = asyncio.run(result)
            reply = {"op": "done", "id": msg["id"], "ok": True, "result": _result_json(result)}
        except BaseException as exc:  # SystemExit too: reported, and the worker goes on
            reply = {"op": "done", "id": msg["id"], "ok": False, **_error(exc)}
            # after MemoryError the heap may be in a state nobody should trust
            reply["restart"] = isinstance(exc, MemoryError)
        sys.stdout.flush()
        sys.stderr.flush()
        try:
            send(reply)
        except MemoryError:
            send({"op": "done", "id": msg["id"], "ok": False, "error_type": "MemoryError",
                  "error_message": "out of memory sending the result", "traceback": "",
                  "restart": True})
        if reply.get("restart"):
            return 3


if __name__ == "__main__":
    sys.exit(main())
