"""Worker side, no I/O: an invoke frame becomes a handler call, and what the handler did
becomes the "done" frame. `worker_main` reads and writes the frames.

One event: the handler is called (event, context) and its return value is the result.
A batch (a function with batch_max > 1): the handler is called once with the list of
events, and returns a list of as many results, in order. A result that is an exception
instance is that one event's error; the others still succeed. A handler that raises, or
returns anything but a list of the right length, fails every event of the batch.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import traceback
from collections.abc import Callable
from typing import Any

from .context import LambdaContext, json_default

Handler = Callable[[Any, LambdaContext], Any]


# the bytes a UTF-8 JSON text can start with (RFC 8259 allows no other encoding between
# systems): whitespace, a UTF-8 BOM, or the first character of a value (NaN, Infinity too)
_JSON_FIRST = frozenset(b' \t\r\n\xef{["-0123456789tfnNI')


def _result_encoder() -> Callable[[Any], str]:
    """JSON for results, built once: json.dumps(default=...) makes an encoder per call, and
    even a kept JSONEncoder makes its C encoder per call (half the cost of a small
    result). Without circular-reference checks: a circular result fails on recursion."""
    from json import encoder

    if encoder.c_make_encoder is None:  # no C accelerator here
        return json.JSONEncoder(default=json_default, check_circular=False).encode
    make = encoder.c_make_encoder(None, json_default, encoder.encode_basestring_ascii, None,
                                  ": ", ", ", False, False, True)
    return lambda obj: "".join(make(obj, 0))


_encode_json = _result_encoder()


def decode_event(payload: bytes) -> Any:
    """A message's payload as the handler's event: JSON (UTF-8) if it is JSON, else the
    bytes. Most binary payloads are told by their first byte, without a failed parse
    (~10 µs for its exception)."""
    if not payload or payload[0] not in _JSON_FIRST:
        return bytes(payload)
    try:
        return json.loads(payload)
    except (ValueError, UnicodeDecodeError):
        return bytes(payload)


def error_fields(exc: BaseException) -> dict[str, Any]:
    return {"error_type": type(exc).__name__, "error_message": str(exc),
            "traceback": "".join(traceback.format_exception(exc))}


def result_json(result: Any) -> bytes | None:
    """What goes to result_topic: None for nothing, bytes as they are, else JSON."""
    if result is None:
        return None
    if isinstance(result, bytes | bytearray):
        return bytes(result)
    return _encode_json(result).encode()


def call(handler: Handler, event: Any, ctx: LambdaContext) -> Any:
    result = handler(event, ctx)
    if inspect.iscoroutine(result):  # an `async def` handler runs to completion here
        result = asyncio.run(result)
    return result


def _failed(msg_id: Any, exc: BaseException) -> dict[str, Any]:
    # after MemoryError the heap may be in a state nobody should trust: the worker restarts
    return {"op": "done", "id": msg_id, "ok": False, **error_fields(exc),
            "restart": isinstance(exc, MemoryError)}


def run_one(handler: Handler, msg: dict[str, Any], ctx: LambdaContext) -> dict[str, Any]:
    """The "done" frame for an `invoke` frame."""
    try:
        event = msg["event"] if msg.get("payload") is None else decode_event(msg["payload"])
        result = call(handler, event, ctx)
        return {"op": "done", "id": msg["id"], "ok": True, "result": result_json(result)}
    except BaseException as exc:  # SystemExit too: reported, and the worker goes on
        return _failed(msg["id"], exc)


def run_batch(handler: Handler, msg: dict[str, Any], ctx: LambdaContext) -> dict[str, Any]:
    """The "done" frame for an `invoke_batch` frame: {"ok": True, "results": [...]}, one
    item per event, bytes or None for a result and an error_fields dict for an error; or
    {"ok": False, error...} when the whole batch failed."""
    ids = msg["ids"]
    try:
        events = [event if payload is None else decode_event(payload)
                  for event, payload in zip(msg["events"], msg["payloads"], strict=True)]
        results = call(handler, events, ctx)
        if not isinstance(results, list | tuple) or len(results) != len(ids):
            got = (f"{len(results)} results" if isinstance(results, list | tuple)
                   else type(results).__name__)
            raise TypeError(f"a batch handler must return a list of {len(ids)} results, "
                            f"one per event, in order; got {got}")
    except BaseException as exc:  # SystemExit too: reported, and the worker goes on
        return _failed(ids[0], exc)
    out: list[bytes | dict | None] = []
    for result in results:
        if isinstance(result, BaseException):
            out.append(error_fields(result))
            continue
        try:
            out.append(result_json(result))
        except Exception as exc:  # this event's result is not JSON: its error alone
            out.append(error_fields(exc))
    return {"op": "done", "id": ids[0], "ok": True, "results": out}
