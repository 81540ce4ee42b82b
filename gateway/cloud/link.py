"""The MQTT 5 connection to AWS IoT Core, through awsiotsdk over mutual TLS.

The SDK's client (awscrt) runs its own event-loop thread and calls back on that thread.
Everything that reaches the gateway is handed to the asyncio loop with
call_soon_threadsafe; publish completions are batched so a fast drain costs one hop per
batch, not one per message.

Who sends a message again: the spool, always, and never the SDK. When a connection ends
or an attempt fails, the link stops the SDK's client, which fails back every publish it
still held (FAIL_ALL_ON_DISCONNECT; stopping also fails the unacknowledged QoS 1 publishes
the SDK would otherwise keep and re-send on a rejoined session), and the spool puts those
back at its front, in order. The next connection starts with nothing of ours inside the
SDK, so a message is on the wire once per connection. Keeping the spool as the one source
(rather than letting the SDK re-send and the spool hold back) keeps one path for every
kind of loss: dropped link, session not resumed, gateway restart.

Reconnecting is ours too (gateway.cloud.backoff): the SDK's own backoff grows with the
number of attempts, so a 20 s outage could cost another minute; between attempts the
client is stopped and started again on the link's schedule. The session is rejoined
(REJOIN_ALWAYS, since a stopped client forgets it ever connected): the cloud keeps our
subscriptions and the QoS 1 commands sent to us while we were away.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from ..config import CloudSettings
from ..errors import UserError
from .backoff import Backoff

log = logging.getLogger("lichen.cloud")

# PUBACK reasons that mean "later", not "never": the message is sent again.
_RETRY_REASONS = {0x97, 0x89}   # quota exceeded, server busy
SDK_RETRY_FLOOR_S = 60.0         # the SDK's own retry, a safety net behind ours


class CloudConfigError(UserError):
    """The cloud connection cannot be built from the configured files."""


@dataclass(slots=True)
class Incoming:
    topic: str
    payload: bytes
    qos: int
    properties: dict


# what a publish came to: (token, ok, permanent failure?, why)
Completion = tuple[object, bool, bool, str]


class CloudLink:
    """One client to the cloud; callbacks run on the gateway's event loop."""

    def __init__(self, settings: CloudSettings, state_dir: Path,
                 on_state: Callable[[str, str | None], None],
                 on_message: Callable[[Incoming], None],
                 on_completions: Callable[[list[Completion]], None],
                 client_id: str | None = None) -> None:
        self.settings = settings
        self.client_id = client_id or settings.thing_name
        self.state = "stopped"   # as last reported to on_state
        self.connects = 0
        self.state_dir = state_dir
        self._on_state = on_state
        self._on_message = on_message
        self._on_completions = on_completions
        self._loop: asyncio.AbstractEventLoop | None = None
        self._client = None
        self._done: list[Completion] = []
        self._done_lock = threading.Lock()
        self._stopped = threading.Event()   # the SDK's client reached STOPPED
        self._mqtt5 = None
        self.backoff = Backoff(settings.min_reconnect_s, settings.max_reconnect_s,
                               settings.reconnect_ramp_s)
        self._sdk = "stopped"      # our client: "running", "stopping" or "stopped"
        self._retry: asyncio.TimerHandle | None = None
        self._closing = False
        self._fast: Callable | None = None

    def _path(self, name: str | None) -> str | None:
        if name is None:
            return None
        p = Path(name)
        p = p if p.is_absolute() else self.state_dir / p
        if not p.is_file():
            which = _which(self.settings, name)
            raise CloudConfigError(f"cloud.{which}: cannot read {p}; put the gateway's AWS IoT "
                                   "certificate files there (relative paths start at the "
                                   "state directory)")
        return str(p)

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        from awscrt import mqtt5
        from awsiot import mqtt5_client_builder

        self._loop = loop
        self._mqtt5 = mqtt5
        self._packet = mqtt5.PublishPacket
        self._fast = _fast_publish()
        self._qos = (mqtt5.QoS.AT_MOST_ONCE, mqtt5.QoS.AT_LEAST_ONCE)
        s = self.settings
        cert, key, ca = self._path(s.cert_file), self._path(s.key_file), self._path(s.ca_file)
        sdk_retry_ms = int(max(s.max_reconnect_s, SDK_RETRY_FLOOR_S) * 1000)
        validation = (mqtt5.ExtendedValidationAndFlowControlOptions.AWS_IOT_CORE_DEFAULTS
                      if s.aws_iot_limits else mqtt5.ExtendedValidationAndFlowControlOptions.NONE)
        try:
            self._client = mqtt5_client_builder.mtls_from_path(
                endpoint=s.endpoint, port=s.port, cert_filepath=cert, pri_key_filepath=key,
                ca_filepath=ca, client_id=self.client_id,
                keep_alive_interval_sec=s.keepalive_s,
                session_expiry_interval_sec=s.session_expiry_s,
                session_behavior=mqtt5.ClientSessionBehaviorType.REJOIN_ALWAYS,
                offline_queue_behavior=mqtt5.ClientOperationQueueBehaviorType
                .FAIL_ALL_ON_DISCONNECT,
                # the SDK's own retry only if ours never came: we stop it long before
                retry_jitter_mode=mqtt5.ExponentialBackoffJitterMode.NONE,
                min_reconnect_delay_ms=sdk_retry_ms, max_reconnect_delay_ms=sdk_retry_ms,
                ack_timeout_sec=60,
                extended_validation_and_flow_control_options=validation,
                enable_metrics_collection=False,
                on_publish_received=self._received,
                on_lifecycle_attempting_connect=lambda d: self._state("connecting", None),
                on_lifecycle_connection_success=lambda d: self._state("connected", None),
                on_lifecycle_connection_failure=lambda d: self._state(
                    "connecting", _describe(d.exception, d.connack_packet)),
                on_lifecycle_disconnection=lambda d: self._state(
                    "disconnected", _describe(d.exception, d.disconnect_packet)),
                on_lifecycle_stopped=self._sdk_stopped,
            )
        except Exception as exc:  # bad key or certificate files: say which, start nothing
            raise CloudConfigError(f"cloud: cannot use the certificate files ({cert}, {key}"
                                   f"{', ' + ca if ca else ''}): {exc}") from None
        self._attempt()

    async def stop(self) -> None:
        if self._client is None:
            return
        self._closing = True
        if self._retry is not None:
            self._retry.cancel()
            self._retry = None
        if self._sdk == "running":
            self._stopped.clear()
            self._client.stop()
        if self._sdk != "stopped":
            await asyncio.get_running_loop().run_in_executor(None, self._stopped.wait, 5.0)
        self._client = None

    @property
    def protocol_client(self):
        """The SDK's MQTT 5 client (awscrt.mqtt5.Client), for awsiotsdk's service clients
        (Jobs, Shadow) that ride on this connection; None before start(). It is stopped and
        started again between connections: build service clients once, they follow it."""
        return self._client

    # ---------------------------------------------------------------- reconnecting

    def _attempt(self) -> None:
        self._retry = None
        if self._closing or self._client is None:
            return
        self._sdk = "running"
        self._client.start()

    def _down(self) -> None:
        """A connection ended or an attempt failed: stop the SDK's client (what it held
        fails back to the spool) and try again when the backoff says."""
        self.backoff.lost(time.monotonic())
        if self._closing or self._sdk != "running":
            return
        self._sdk = "stopping"
        self._stopped.clear()
        self._client.stop()

    def _sdk_stopped(self, _data=None) -> None:   # SDK thread
        self._stopped.set()
        self._call(self._schedule_attempt)

    def _schedule_attempt(self) -> None:
        self._sdk = "stopped"
        if self._closing or self._retry is not None:
            return
        delay = self.backoff.next_delay(time.monotonic())
        self._retry = self._loop.call_later(delay, self._attempt)

    @property
    def retry_in(self) -> float | None:
        """Seconds until the next attempt, while waiting for one."""
        if self._retry is None:
            return None
        return max(0.0, self._retry.when() - self._loop.time())

    # ---------------------------------------------------------------- to the cloud

    def publish(self, token: object, topic: str, payload: bytes, qos: int,
                properties: dict, expiry_s: int | None) -> None:
        """Send one message; its Completion reaches on_completions later."""
        if self._fast is not None and not properties:
            # qos, payload, retain, topic, payload format, expiry, alias, response topic,
            # correlation data, content type, user properties, callback
            self._fast(self._client._binding, self._qos[qos], payload, False, topic, None,
                       expiry_s, None, None, None, None, None, partial(self._acked, token))
            return
        packet = self._packet(topic=topic, payload=payload, qos=self._qos[qos])
        if expiry_s is not None:
            packet.message_expiry_interval_sec = expiry_s
        if properties:
            _apply_properties(self._mqtt5, packet, properties)
        self._client.publish(packet).add_done_callback(partial(self._completed, token))

    def subscribe(self, filters: list[tuple[str, int]]) -> None:
        mqtt5 = self._mqtt5
        for i in range(0, len(filters), 8):  # AWS IoT: at most 8 filters per SUBSCRIBE
            chunk = filters[i:i + 8]
            packet = mqtt5.SubscribePacket(subscriptions=[
                mqtt5.Subscription(topic_filter=f, qos=mqtt5.QoS(q)) for f, q in chunk])
            future = self._client.subscribe(packet)
            future.add_done_callback(lambda f, chunk=chunk: self._subscribed(chunk, f))

    # ---------------------------------------------------------------- SDK thread -> loop

    def _completed(self, token: object, future) -> None:   # SDK thread (public API)
        exc = future.exception()
        if exc is not None:
            # Failed with the connection (or timed out): send again, not lost.
            self._done_item((token, False, False, str(exc)))
            return
        puback = future.result().puback
        if puback is None:
            self._done_item((token, True, False, ""))
        else:
            self._done_item(_puback_item(token, puback.reason_code.value, puback.reason_string))

    def _acked(self, token: object, error_code: int, qos, reason_code: int,
               reason_string: str | None, _user_properties) -> None:   # SDK thread
        if error_code:
            self._done_item((token, False, False, _error_name(error_code)))
        elif int(qos) == 0:
            self._done_item((token, True, False, ""))
        else:
            self._done_item(_puback_item(token, reason_code, reason_string))

    def _done_item(self, item: Completion) -> None:
        """Queue a completion for the loop; one hop per batch, not per message."""
        with self._done_lock:
            self._done.append(item)
            first = len(self._done) == 1
        if first:
            self._call(self._deliver_completions)

    def _deliver_completions(self) -> None:
        with self._done_lock:
            batch, self._done = self._done, []
        if batch:
            self._on_completions(batch)

    def _subscribed(self, chunk: list[tuple[str, int]], future) -> None:
        exc = future.exception()
        if exc is not None:
            log.warning("cloud: subscribing to %s failed: %s", [f for f, _ in chunk], exc)
            return
        for (topic_filter, _), code in zip(chunk, future.result().reason_codes, strict=False):
            if int(code) >= 0x80:
                log.warning("cloud: subscription to %s refused: %s", topic_filter, code.name)

    def _received(self, data) -> None:
        p = data.publish_packet
        payload = p.payload if isinstance(p.payload, bytes) else bytes(p.payload or b"")
        props: dict = {}
        if p.content_type:
            props["content_type"] = p.content_type
        if p.response_topic:
            props["response_topic"] = p.response_topic
        if p.correlation_data:
            props["correlation_data"] = bytes(p.correlation_data)
        if p.user_properties:
            props["user_property"] = [(u.name, u.value) for u in p.user_properties]
        if p.payload_format_indicator is not None:
            props["payload_format_indicator"] = int(p.payload_format_indicator)
        if p.message_expiry_interval_sec is not None:
            props["message_expiry_interval"] = p.message_expiry_interval_sec
        self._call(self._on_message, Incoming(p.topic, payload, int(p.qos), props))

    def _state(self, state: str, why: str | None) -> None:
        self._call(self._changed, state, why)

    def _changed(self, state: str, why: str | None) -> None:
        if self._closing:
            return
        self.state = state
        if state == "connected":
            self.connects += 1
            self.backoff.connected(time.monotonic())
        elif why is not None:   # a connection ended or an attempt failed
            self._down()
        self._on_state(state, why)

    def _call(self, fn: Callable, *args) -> None:
        loop = self._loop
        if loop is not None and not loop.is_closed():
            try:
                loop.call_soon_threadsafe(fn, *args)
            except RuntimeError:  # the loop closed meanwhile: the gateway is stopping
                pass


def _puback_item(token: object, code: int, reason_string: str | None) -> Completion:
    """What a PUBACK's reason code means for the spool: done, retry later, or never."""
    if code < 0x80:
        return (token, True, False, "")
    why = f"reason code 0x{code:02X} {reason_string or ''}".strip()
    return (token, False, code not in _RETRY_REASONS, why)


def _error_name(code: int) -> str:
    from awscrt import exceptions
    return str(exceptions.from_code(code))


_SDK_PUBLISH = ("_awscrt.mqtt5_client_publish(self._binding, publish_packet.qos, "
                "publish_packet.payload, publish_packet.retain, publish_packet.topic, "
                "publish_packet.payload_format_indicator, "
                "publish_packet.message_expiry_interval_sec, publish_packet.topic_alias, "
                "publish_packet.response_topic, publish_packet.correlation_data_bytes or "
                "publish_packet.correlation_data, publish_packet.content_type, "
                "publish_packet.user_properties, puback)")
_SDK_PUBACK = "def puback(error_code, qos, reason_code, reason_string, user_properties_tuples)"


def _fast_publish() -> Callable | None:
    """awscrt's native publish, if Client.publish still calls it exactly as we would.

    Client.publish wraps every publish in a concurrent.futures.Future (a Condition, a lock,
    two result objects, an enum lookup) and completes it on the SDK's thread under the
    GIL; calling the binding it wraps with our own callback costs a fraction of that per
    message. It is a private interface, so it is used only when the installed awscrt's
    source shows the same call (checked once); otherwise the public API."""
    try:
        import inspect

        import _awscrt
        from awscrt import mqtt5
        source = " ".join(inspect.getsource(mqtt5.Client.publish).split())
    except (ImportError, OSError, TypeError):
        return None
    if _SDK_PUBLISH not in source or _SDK_PUBACK not in source:
        return None
    return getattr(_awscrt, "mqtt5_client_publish", None)


def _apply_properties(mqtt5, packet, props: dict) -> None:
    if "content_type" in props:
        packet.content_type = props["content_type"]
    if "response_topic" in props:
        packet.response_topic = props["response_topic"]
    if "correlation_data" in props:
        packet.correlation_data = props["correlation_data"]
    if "payload_format_indicator" in props:
        packet.payload_format_indicator = mqtt5.PayloadFormatIndicator(
            props["payload_format_indicator"])
    if "user_property" in props:
        packet.user_properties = [mqtt5.UserProperty(name=k, value=v)
                                  for k, v in props["user_property"]]


def _describe(exc: BaseException | None, packet) -> str:
    parts = []
    if packet is not None and getattr(packet, "reason_code", None) is not None:
        code = packet.reason_code
        parts.append(f"{getattr(code, 'name', code)}")
        if getattr(packet, "reason_string", None):
            parts.append(packet.reason_string)
    if exc is not None:
        parts.append(getattr(exc, "name", None) or str(exc))
    return ": ".join(parts) or "unknown"


def _which(settings: CloudSettings, value: str) -> str:
    for name in ("cert_file", "key_file", "ca_file"):
        if getattr(settings, name) == value:
            return name
    return "?"
