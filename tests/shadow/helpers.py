"""A paho-mqtt peer for driving the shadow service over MQTT, as any device or app would."""

from __future__ import annotations

import json
import queue
import ssl
import threading
import time
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

TIMEOUT = 10.0


class Peer:
    """One MQTT client; every message it receives lands in `inbox` as (topic, document)."""

    def __init__(self, port: int, client_id: str, protocol: int = mqtt.MQTTv311,
                 tls: dict | None = None) -> None:
        self.port = port
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id,
                                  protocol=protocol)
        if tls:
            self.client.tls_set(ca_certs=tls["ca"], certfile=tls["cert"], keyfile=tls["key"],
                                cert_reqs=ssl.CERT_REQUIRED)
        self.inbox: queue.Queue = queue.Queue()
        self._connack: queue.Queue = queue.Queue()
        self._subacks: queue.Queue = queue.Queue()
        self.client.on_connect = lambda _c, _u, _f, reason, _p: self._connack.put(reason.value)
        self.client.on_subscribe = lambda _c, _u, _m, reasons, _p: self._subacks.put(
            [r.value for r in reasons])
        self.client.on_message = self._on_message
        self._lock = threading.Lock()

    def _on_message(self, _c: Any, _u: Any, msg: mqtt.MQTTMessage) -> None:
        try:
            doc = json.loads(msg.payload) if msg.payload else None
        except ValueError:
            doc = msg.payload
        self.inbox.put((msg.topic, doc))

    def connect(self) -> Peer:
        self.client.connect("127.0.0.1", self.port, 30)
        self.client.loop_start()
        assert self._connack.get(timeout=TIMEOUT) == 0
        return self

    def subscribe(self, *filters: str) -> list[int]:
        self.client.subscribe([(f, 1) for f in filters])
        return self._subacks.get(timeout=TIMEOUT)

    def publish(self, topic: str, payload: dict | bytes | str = b"", qos: int = 1) -> None:
        if isinstance(payload, dict):
            payload = json.dumps(payload)
        self.client.publish(topic, payload, qos).wait_for_publish(TIMEOUT)

    def next(self, timeout: float = TIMEOUT) -> tuple[str, Any]:
        return self.inbox.get(timeout=timeout)

    def until(self, topic: str, timeout: float = TIMEOUT) -> tuple[Any, list[tuple[str, Any]]]:
        """The document of the next message on `topic`, and every message before it."""
        before = []
        deadline = time.monotonic() + timeout
        while True:
            t, doc = self.inbox.get(timeout=max(0.01, deadline - time.monotonic()))
            if t == topic:
                return doc, before
            before.append((t, doc))

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def near_now(ts: Any) -> bool:
    return isinstance(ts, int) and abs(ts - time.time()) < 60
