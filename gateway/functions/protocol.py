"""The parent <-> worker pipe protocol: frames of a 4-byte big-endian length and a pickled
dict with an "op". Both ends are the gateway's own code; pickle carries bytes and numpy
arrays as they are.

parent -> worker: init, invoke, invoke_batch, invoke_result
worker -> parent: ready, init_error, publish, invoke, done

invoke_batch carries parallel lists (ids, topics, events, payloads) and is answered by one
done frame whose "results" has an item per event (see handling.run_batch).
"""

from __future__ import annotations

import asyncio
import io
import os
import pickle
import struct
from typing import Any, BinaryIO

HEADER = struct.Struct(">I")
MAX_FRAME = 64 << 20  # a frame past this is a broken worker, not a message


class ProtocolError(Exception):
    pass


def encode(msg: dict[str, Any]) -> bytes:
    body = pickle.dumps(msg, protocol=pickle.HIGHEST_PROTOCOL)
    if len(body) > MAX_FRAME:
        raise ProtocolError(f"frame of {len(body)} bytes exceeds {MAX_FRAME}")
    return HEADER.pack(len(body)) + body


class _PlainUnpickler(pickle.Unpickler):
    """Builtin containers and scalars only: the gateway never imports or calls anything a
    worker (that is, function code) names in a frame."""

    def find_class(self, module: str, name: str) -> Any:
        raise ProtocolError(f"worker sent a {module}.{name} object; only plain data may cross")


async def read_frame(reader: asyncio.StreamReader) -> dict[str, Any]:
    """The next frame from a worker; asyncio.IncompleteReadError at end of stream,
    ProtocolError for anything that is not a plain-data frame."""
    (size,) = HEADER.unpack(await reader.readexactly(HEADER.size))
    if size > MAX_FRAME:
        raise ProtocolError(f"frame of {size} bytes exceeds {MAX_FRAME}")
    body = await reader.readexactly(size)
    try:
        msg = _PlainUnpickler(io.BytesIO(body)).load()
    except ProtocolError:
        raise
    except Exception as exc:
        raise ProtocolError(f"undecodable frame from the worker: {exc}") from None
    if not isinstance(msg, dict):
        raise ProtocolError(f"frame is a {type(msg).__name__}, not a dict")
    return msg


def read_frame_sync(stream: BinaryIO) -> dict[str, Any] | None:
    """Worker side: the next frame, or None when the parent has closed the pipe."""
    head = _read_exact(stream, HEADER.size)
    if head is None:
        return None
    (size,) = HEADER.unpack(head)
    body = _read_exact(stream, size)
    if body is None:
        return None
    return pickle.loads(body)


def _read_exact(stream: BinaryIO, n: int) -> bytes | None:
    buf = bytearray()
    while len(buf) < n:
        chunk = stream.read(n - len(buf))
        if not chunk:
            return None
        buf += chunk
    return bytes(buf)


def write_frame_fd(fd: int, msg: dict[str, Any]) -> None:
    data = memoryview(encode(msg))
    while data:
        data = data[os.write(fd, data):]
