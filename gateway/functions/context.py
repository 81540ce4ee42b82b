"""The `context` a handler gets, as in AWS Lambda's Python runtime, plus the gateway client:
publish, invoke another function, and run a model."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from typing import Any

from ..mqtt.topics import validate_topic_name


def json_default(obj: Any) -> Any:
    if hasattr(obj, "tolist"):  # numpy scalars and arrays
        return obj.tolist()
    raise TypeError(f"not JSON serializable: {type(obj).__name__}")


class FunctionError(Exception):
    """context.invoke of a function that failed: its error type and message."""


class LambdaContext:
    """For one event, `topic` and `aws_request_id` are its own. For a batch (batch_max > 1)
    they are None, and `topics` and `request_ids` hold each event's, in the events' order
    (for one event, lists of one)."""

    def __init__(self, client: GatewayClient, topic: str | None, request_id: str | None,
                 deadline: float, function_name: str, function_version: str,
                 memory_mb: int, topics: list[str | None] | None = None,
                 request_ids: list[str] | None = None) -> None:
        self.client = client
        self.topic = topic
        self.aws_request_id = request_id
        self.topics = [topic] if topics is None else topics
        self.request_ids = [request_id] if request_ids is None else request_ids
        self.function_name = function_name
        self.function_version = function_version
        self.memory_limit_in_mb = memory_mb
        self.invoked_function_arn = f"arn:aws:lambda:local:000000000000:function:" \
                                    f"{function_name}:{function_version}"
        self._deadline = deadline

    def get_remaining_time_in_millis(self) -> int:
        return max(0, int((self._deadline - time.monotonic()) * 1000))

    # the client's verbs, on the context too, so handlers can write context.publish(...)
    def publish(self, topic: str, payload: Any, qos: int = 0, retain: bool = False) -> None:
        self.client.publish(topic, payload, qos, retain)

    def invoke(self, function_name: str, event: Any) -> Any:
        return self.client.invoke(function_name, event, self.get_remaining_time_in_millis())

    def infer(self, model: str, inputs: dict[str, Any]) -> dict[str, Any]:
        return self.client.infer(model, inputs)


class GatewayClient:
    """Talks to the parent over the worker's protocol pipe. `send` writes one frame;
    `receive` blocks for the parent's answer to a nested invoke."""

    def __init__(self, send: Callable[[dict], None], receive: Callable[[], dict | None],
                 infer: Callable[[str, dict], dict]) -> None:
        self._send = send
        self._receive = receive
        self._infer = infer
        self._lock = threading.Lock()
        self._calls = 0

    def publish(self, topic: str, payload: Any, qos: int = 0, retain: bool = False) -> None:
        """bytes go as they are, str as UTF-8, anything else as JSON."""
        validate_topic_name(topic)  # raises here, in the handler, not later in the parent
        if qos not in (0, 1, 2):
            raise ValueError(f"QoS must be 0, 1 or 2, got {qos!r}")
        if isinstance(payload, str):
            payload = payload.encode()
        elif not isinstance(payload, bytes | bytearray):
            payload = json.dumps(payload).encode()
        self._send({"op": "publish", "topic": topic, "payload": bytes(payload), "qos": qos,
                    "retain": retain})

    def invoke(self, function_name: str, event: Any, timeout_ms: int | None = None) -> Any:
        """Run another function through the gateway and return its result; raises
        FunctionError if it failed. Blocks this handler, not the gateway."""
        # events are JSON, as from MQTT: what another function gets is what it would get
        # from a message (numpy values become lists)
        event = json.loads(json.dumps(event, default=json_default))
        with self._lock:  # one nested call on the pipe at a time
            self._calls += 1
            call = self._calls
            self._send({"op": "invoke", "call": call, "function": function_name,
                        "event": event, "timeout_ms": timeout_ms})
            reply = self._receive()
        if reply is None:
            raise ConnectionError("the gateway closed the worker's pipe")
        if reply.get("op") != "invoke_result" or reply.get("call") != call:
            raise ConnectionError(f"unexpected reply from the gateway: {reply.get('op')}")
        if not reply["ok"]:
            raise FunctionError(f"{function_name}: {reply['error_type']}: "
                                f"{reply['error_message']}")
        return reply["result"]

    def infer(self, model: str, inputs: dict[str, Any]) -> dict[str, Any]:
        """Run a configured model in this worker (its session is made once, on first use)."""
        return self._infer(model, inputs)
