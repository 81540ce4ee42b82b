"""A function worker process: `python -m gateway.functions.worker_main`.

The parent sends an init frame on stdin; the worker caps its address space, imports the
handler (as Lambda's init phase), says ready, then serves one invocation (or one batch, see
handling.py) at a time until stdin closes. Frames go back on the original stdout; fds 1 and
2 both become the parent's stderr pipe, so whatever the handler prints lands in the
function's log.
"""

from __future__ import annotations

import importlib
import os
import resource
import sys
import time

from .context import GatewayClient, LambdaContext
from .handling import error_fields, run_batch, run_one
from .protocol import read_frame_sync, write_frame_fd


def _limit_memory(memory_mb: int) -> None:
    limit = memory_mb << 20
    _soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    if hard != resource.RLIM_INFINITY:
        limit = min(limit, hard)
    resource.setrlimit(resource.RLIMIT_AS, (limit, hard))


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
        send({"op": "init_error", **error_fields(exc)})
        return 1
    client = GatewayClient(send, receive, infer)
    send({"op": "ready", "pid": os.getpid()})
    while True:
        msg = receive()
        if msg is None:
            return 0
        op = msg.get("op")
        if op not in ("invoke", "invoke_batch"):
            continue
        deadline = time.monotonic() + msg["timeout_ms"] / 1000
        if op == "invoke":
            ctx = LambdaContext(client, msg.get("topic"), msg["id"], deadline, init["name"],
                                init["version"], init["memory_mb"])
            reply = run_one(handler, msg, ctx)
        else:  # one handler call for the whole batch; per-event topics and ids on context
            ctx = LambdaContext(client, None, None, deadline, init["name"], init["version"],
                                init["memory_mb"], topics=msg["topics"],
                                request_ids=msg["ids"])
            reply = run_batch(handler, msg, ctx)
        sys.stdout.flush()
        sys.stderr.flush()
        try:
            send(reply)
        except MemoryError:
            send({"op": "done", "id": reply.get("id"), "ok": False, "error_type": "MemoryError",
                  "error_message": "out of memory sending the result", "traceback": "",
                  "restart": True})
        if reply.get("restart"):
            return 3


if __name__ == "__main__":
    sys.exit(main())
