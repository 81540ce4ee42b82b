"""`lichen fn invoke`'s way in: a running gateway's local listener (Unix socket, else the
plaintext loopback port, from status.json) and the control topics. A blocking MQTT 3.1.1
client built on the broker's own codec, so the CLI needs no MQTT library."""

from __future__ import annotations

import json
import socket
import time
import uuid
from pathlib import Path
from typing import Any

from ..errors import UserError
from ..mqtt import packets as pk
from ..state_dir import read_status

CONTROL_PREFIX = "$lichen/functions/"


class ControlError(UserError):
    pass


def local_address(state_dir: Path) -> tuple[int, Any]:
    """(address family, address) of the running gateway's Unix socket or loopback port."""
    listeners = ((read_status(state_dir) or {}).get("mqtt") or {}).get("listeners") or []
    for listener in listeners:
        kind, _, where = listener.partition(" ")
        if kind == "unix":
            return socket.AF_UNIX, where
    for listener in listeners:
        kind, _, where = listener.partition(" ")
        if kind == "tcp":
            host, _, port = where.rpartition(":")
            if host in ("", "0.0.0.0", "::"):
                host = "127.0.0.1"
            return socket.AF_INET, (host.strip("[]"), int(port))
    raise ControlError(f"the gateway on {state_dir} has no Unix socket or plaintext listener "
                       "(listeners.unix_socket or tcp_port)")


class _Conn:
    def __init__(self, family: int, address: Any, deadline: float) -> None:
        self.deadline = deadline
        self.sock = socket.socket(family, socket.SOCK_STREAM)
        self.sock.settimeout(max(0.1, deadline - time.monotonic()))
        self.sock.connect(address)
        self.buf = bytearray()

    def send(self, packet: pk.Packet) -> None:
        self.sock.sendall(pk.encode(packet, pk.MQTT_3_1_1))

    def receive(self) -> pk.Packet:
        while True:
            frame = pk.split_frame(self.buf, 0, 1 << 28) if self.buf else None
            if frame is not None:
                start, end = frame
                first = self.buf[0]
                packet = pk.decode(first, bytes(self.buf[start:end]), pk.MQTT_3_1_1)
                del self.buf[:end]
                return packet
            left = self.deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError
            self.sock.settimeout(left)
            data = self.sock.recv(65536)
            if not data:
                raise ConnectionError("the gateway closed the connection")
            self.buf += data


def invoke(state_dir: Path, name: str, event: Any, timeout: float = 30.0) -> dict[str, Any]:
    """Invoke function `name` on the running gateway; the reply document
    ({"ok": true, "result": ...} or {"ok": false, "errorType", "errorMessage", ...})."""
    family, address = local_address(state_dir)
    request_id = uuid.uuid4().hex
    reply_topic = f"{CONTROL_PREFIX}{name}/response/{request_id}"
    deadline = time.monotonic() + timeout
    try:
        conn = _Conn(family, address, deadline)
    except OSError as exc:
        raise ControlError(f"cannot reach the gateway at {address}: "
                           f"{exc.strerror or exc}") from None
    try:
        conn.send(pk.Connect(f"lichen-fn-{request_id[:12]}", keepalive=int(timeout) + 30))
        ack = conn.receive()
        if not isinstance(ack, pk.Connack) or ack.reason_code:
            raise ControlError(f"the gateway refused the connection: {ack}")
        conn.send(pk.Subscribe(1, [pk.Subscription(reply_topic, 1)]))
        while not isinstance(conn.receive(), pk.Suback):
            pass
        payload = event if isinstance(event, bytes) else json.dumps(event).encode()
        conn.send(pk.Publish(f"{CONTROL_PREFIX}{name}/invoke/{request_id}", payload))
        while True:
            packet = conn.receive()
            if isinstance(packet, pk.Publish) and packet.topic == reply_topic:
                if packet.qos:
                    conn.send(pk.Puback(packet.packet_id))
                conn.send(pk.Disconnect())
                return json.loads(packet.payload)
    except TimeoutError:
        raise ControlError(f"no reply from function {name} within {timeout:g} s") from None
    except (OSError, ConnectionError) as exc:
        raise ControlError(f"lost the gateway: {exc}") from None
    finally:
        conn.sock.close()
