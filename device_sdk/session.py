"""One MQTT connection to the gateway over mutual TLS: one paho client, connected once.

A reconnect is a new Session, so no paho state (in-flight messages, packet ids) carries
over: the offline queue is the one record of what still has to be sent.

Everything paho reports from its network thread is turned into plain tuples posted to the
owner's event queue, tagged with the session number, so events of a closed session can be
told apart and dropped.
"""

from __future__ import annotations

import logging
import queue
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from .acks import AckBoard
from .discovery import Endpoint
from .errors import ConnectRefused, GatewayUnreachable
from .tls import ObservedContext, explain

log = logging.getLogger("device_sdk")

MQTT5 = "5"
MQTT311 = "3.1.1"
PROTOCOLS = {MQTT5: mqtt.MQTTv5, MQTT311: mqtt.MQTTv311, "311": mqtt.MQTTv311}

# 3.1.1 CONNACK return codes, as the MQTT 5 reason codes they became.
_V3_CONNACK = {1: 0x84, 2: 0x85, 3: 0x88, 4: 0x86, 5: 0x87}


@dataclass(frozen=True, slots=True)
class SessionSettings:
    client_id: str
    protocol: str = MQTT5
    keepalive: int = 30
    session_expiry: int = 0      # 0: a clean session every time
    connect_timeout: float = 5.0


class Session:
    """Events posted to `events`: ("disconnect", n, reason), ("puback", n, mid, code),
    and ("message", n, paho message) goes to `on_message` directly (paho's thread)."""

    def __init__(self, number: int, endpoint: Endpoint, settings: SessionSettings,
                 context: ObservedContext, events: queue.SimpleQueue, acks: AckBoard,
                 on_message: Callable[[mqtt.MQTTMessage], None]) -> None:
        self.number = number
        self.endpoint = endpoint
        self.settings = settings
        self.context = context
        self.events = events
        self.acks = acks
        self.receive_maximum = 65535
        self.connected_at = 0.0
        self.closed = False
        self.live = False           # the owner has restored subscriptions and uses it
        self._connack: queue.SimpleQueue = queue.SimpleQueue()
        v5 = settings.protocol == MQTT5
        self.v5 = v5
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=settings.client_id,
            protocol=PROTOCOLS[settings.protocol],
            clean_session=None if v5 else settings.session_expiry == 0,
            reconnect_on_failure=False)
        self.client.connect_timeout = settings.connect_timeout
        self.client.tls_set_context(context)
        self.client.max_queued_messages_set(0)
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_publish = self._on_publish
        self.client.on_subscribe = self._on_subscribe
        self.client.on_unsubscribe = self._on_subscribe
        self.client.on_message = lambda _c, _u, msg: on_message(msg)

    # ------------------------------------------------------------------ paho's thread

    def _on_connect(self, _c: Any, _u: Any, flags: Any, reason: Any, props: Any) -> None:
        code = _reason_value(reason, PacketTypes.CONNACK)
        receive_max = getattr(props, "ReceiveMaximum", None) if props is not None else None
        if receive_max:
            self.receive_maximum = int(receive_max)
        self._connack.put(("connack", code, _reason_text(reason, props)))

    def _on_disconnect(self, _c: Any, _u: Any, _flags: Any, reason: Any, props: Any) -> None:
        self.closed = True
        text = _reason_text(reason, props)
        self.acks.connection_lost(self.number)
        self._connack.put(("disconnect", text))
        self.events.put(("disconnect", self.number, text))

    def _on_publish(self, _c: Any, _u: Any, mid: int, reason: Any, _props: Any) -> None:
        code = _reason_value(reason, PacketTypes.PUBACK)
        self.acks.post(self.number, mid, code)
        self.events.put(("puback", self.number, mid, code))

    def _on_subscribe(self, _c: Any, _u: Any, mid: int, reasons: Any, _props: Any) -> None:
        codes = [_reason_value(r, PacketTypes.SUBACK) for r in reasons]
        self.acks.post(self.number, mid, codes)

    # ------------------------------------------------------------------ the owner's thread

    def open(self) -> None:
        """Connect, and return once the gateway has accepted the session (CONNACK). Raises
        TLSError, ConnectRefused or GatewayUnreachable; the session is closed then."""
        ep = self.endpoint
        props = None
        clean_start: bool | int = mqtt.MQTT_CLEAN_START_FIRST_ONLY  # 3.1.1: clean_session
        if self.v5:
            props = Properties(PacketTypes.CONNECT)
            props.SessionExpiryInterval = self.settings.session_expiry
            clean_start = self.settings.session_expiry == 0
        try:
            self.client.connect(ep.host, ep.port, keepalive=self.settings.keepalive,
                                clean_start=clean_start, properties=props)
        except (ssl.SSLError, ssl.CertificateError) as exc:
            self.closed = True
            self.context.close_socket()
            raise explain(exc, str(ep)) from None
        except (OSError, ValueError) as exc:
            self.closed = True
            self.context.close_socket()
            raise GatewayUnreachable(f"cannot connect to {ep}: {_os_reason(exc)}") from None
        self.client.loop_start()
        try:
            event = self._connack.get(timeout=self.settings.connect_timeout)
        except queue.Empty:
            self.close()
            raise GatewayUnreachable(f"no CONNACK from {ep} within "
                                     f"{self.settings.connect_timeout:g} s") from None
        if event[0] == "disconnect":
            self.close()
            if self.context.tls_error is not None:
                raise explain(self.context.tls_error, str(ep))
            raise GatewayUnreachable(f"{ep} closed the connection before CONNACK "
                                     f"({event[1]})")
        _, code, text = event
        if code >= 0x80:
            self.close()
            raise refused(code, text, ep, self.settings.client_id)
        self.connected_at = time.monotonic()

    def close(self) -> None:
        """Send DISCONNECT if still connected, and stop paho's thread."""
        self.closed = True
        try:
            self.client.disconnect()
        except Exception:  # already gone: nothing to tell the gateway
            pass
        self.client.loop_stop()
        self.context.close_socket()

    # paho's publish/subscribe are safe to call from any thread.

    def publish(self, topic: str, payload: bytes, qos: int, retain: bool) -> int | None:
        """The packet id (mid), or None when the connection is already gone."""
        info = self.client.publish(topic, payload, qos, retain)
        if info.rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
            return None
        return info.mid

    def subscribe(self, filters: list[tuple[str, int]]) -> int | None:
        result, mid = self.client.subscribe(filters)
        return mid if result == MQTTErrorCode.MQTT_ERR_SUCCESS else None

    def unsubscribe(self, filters: list[str]) -> None:
        self.client.unsubscribe(filters)


def refused(code: int, text: str, ep: Endpoint, client_id: str) -> ConnectRefused:
    if code in (0x85, 0x86, 0x87, 0x8C):
        hint = (f"the client id must be the thing name the certificate is enrolled for "
                f"({client_id!r} here), the certificate must not be revoked nor its thing "
                "removed (`lichen device show THING`), and the thing's policy must allow "
                "iot:Connect; the gateway's log says which")
    elif code in (0x88, 0x89, 0x97, 0x9F):
        hint = "the gateway is busy or shutting down; retrying later should work"
    elif code == 0x84:
        hint = "the gateway does not speak this MQTT version; try protocol='3.1.1'"
    elif code == 0x8A:
        hint = "this client is banned on the gateway"
    else:
        hint = ""
    message = f"the gateway at {ep} refused the connection: {text} (reason code 0x{code:02X})"
    return ConnectRefused(f"{message}: {hint}" if hint else message, code, text)


def puback_reason(code: int) -> str:
    """A PUBACK reason code's name ("Not authorized" for 0x87)."""
    try:
        return str(ReasonCode(PacketTypes.PUBACK, identifier=code))
    except KeyError:  # not one MQTT 5 defines
        return "unknown reason"


def _reason_value(reason: Any, packet_type: int) -> int:
    value = getattr(reason, "value", reason)
    value = int(value) if isinstance(value, int) else 0x80
    if packet_type == PacketTypes.CONNACK and 0 < value < 6:
        return _V3_CONNACK.get(value, 0x80)  # a 3.1.1 return code
    return value


def _reason_text(reason: Any, props: Any) -> str:
    text = str(reason) if reason is not None else "unknown"
    reason_string = getattr(props, "ReasonString", None) if props is not None else None
    return f"{text}: {reason_string}" if reason_string else text


def _os_reason(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror.lower()
    return str(exc) or type(exc).__name__

