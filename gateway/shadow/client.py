"""One shadow request to a running gateway as a local MQTT client (paho-mqtt): subscribe to
the operation's /accepted and /rejected, publish the request with a clientToken, and wait
for the reply that carries that token."""

from __future__ import annotations

import json
import queue
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import UserError
from ..state_dir import read_status
from .topics import topic_prefix


class ShadowClientError(UserError):
    """No answer could be had from the gateway (not a shadow rejection)."""


@dataclass(frozen=True, slots=True)
class Endpoint:
    transport: str          # "unix" or "tcp"
    host: str               # socket path for unix
    port: int = 0


def _listeners(state_dir: Path, wait: float) -> list[str]:
    """The listeners in status.json; a gateway that has just started may not have written
    it yet, so wait a little for it."""
    deadline = time.monotonic() + wait
    while True:
        status = read_status(state_dir) or {}
        listeners = (status.get("mqtt") or {}).get("listeners") or []
        if listeners or time.monotonic() >= deadline:
            return listeners
        time.sleep(0.05)


def local_endpoint(state_dir: Path, wait: float = 5.0) -> Endpoint:
    """The running gateway's Unix socket, else its plaintext listener, from status.json."""
    listeners = _listeners(state_dir, wait)
    for listener in listeners:
        kind, _, where = listener.partition(" ")
        if kind == "unix":
            return Endpoint("unix", where)
    for listener in listeners:
        kind, _, where = listener.partition(" ")
        if kind == "tcp":
            host, _, port = where.rpartition(":")
            if host in ("", "0.0.0.0", "::"):
                host = "127.0.0.1"
            return Endpoint("tcp", host.strip("[]"), int(port))
    raise ShadowClientError(f"the gateway on {state_dir} has no Unix socket or plaintext "
                            "listener to reach it by (listeners.unix_socket or tcp_port)")


def request(endpoint: Endpoint, thing: str, name: str, op: str, document: dict[str, Any],
            timeout: float = 10.0) -> tuple[bool, dict[str, Any]]:
    """Send one get/update/delete; (accepted?, the reply document)."""
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    generated = "clientToken" not in document
    token = document.setdefault("clientToken", uuid.uuid4().hex)
    topic = f"{topic_prefix(thing, name)}/{op}"
    replies: queue.Queue = queue.Queue()
    connected = threading.Event()
    subscribed = threading.Event()
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"lichen-cli-{uuid.uuid4().hex}",
                         transport=endpoint.transport, protocol=mqtt.MQTTv311)

    def on_message(_c: Any, _u: Any, msg: mqtt.MQTTMessage) -> None:
        try:
            doc = json.loads(msg.payload)
        except ValueError:
            return
        if isinstance(doc, dict) and doc.get("clientToken") == token:
            replies.put((msg.topic.endswith("/accepted"), doc))

    client.on_connect = lambda *_a: connected.set()
    client.on_subscribe = lambda *_a: subscribed.set()
    client.on_message = on_message
    where = endpoint.host if endpoint.transport == "unix" else f"{endpoint.host}:{endpoint.port}"
    try:
        client.connect(endpoint.host, endpoint.port or 1883, keepalive=30)
    except OSError as exc:
        raise ShadowClientError(f"cannot reach the gateway at {where}: "
                                f"{exc.strerror or exc}") from None
    client.loop_start()
    try:
        if not connected.wait(timeout):
            raise ShadowClientError(f"no CONNACK from the gateway at {where}")
        client.subscribe([(f"{topic}/accepted", 1), (f"{topic}/rejected", 1)])
        if not subscribed.wait(timeout):
            raise ShadowClientError(f"no SUBACK from the gateway at {where}")
        client.publish(topic, json.dumps(document), qos=1)
        try:
            accepted, reply = replies.get(timeout=timeout)
        except queue.Empty:
            raise ShadowClientError(f"no answer on {topic}/accepted or /rejected within "
                                    f"{timeout:g} s (is [shadow] enabled?)") from None
        if generated:  # ours, for matching: the caller gets what it would get offline
            del reply["clientToken"]
        return accepted, reply
    finally:
        client.disconnect()
        client.loop_stop()
