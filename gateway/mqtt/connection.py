"""One client connection: an asyncio Protocol that frames and handles MQTT packets.

The hot path (PUBLISH in, PUBLISH out) is decoded inline over a memoryview of the bytes
received, and everything written in one loop turn leaves in one transport.write.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from typing import TYPE_CHECKING

from ..log_throttle import LogThrottle
from . import packets as pk
from . import reason_codes as rc
from .auth_hooks import ClientInfo
from .durability import CommitWait
from .errors import MalformedPacket, MQTTError, ProtocolError, UnsupportedProtocolVersion
from .message import Message
from .properties import decode_properties
from .session import NEVER_EXPIRES, Outgoing, Session, SubOptions
from .topics import parse_shared, validate_topic_filter

if TYPE_CHECKING:
    from .broker import Broker

log = logging.getLogger("lichen.mqtt")

READ_BUDGET_PER_TURN = 256 * 1024
DENIED_LOG_INTERVAL = 10.0    # seconds: a client publishing where it may not cannot flood logs


class Connection(asyncio.Protocol):
    def __init__(self, broker: Broker, listener: str) -> None:
        self.broker = broker
        self.listener = listener
        self.transport: asyncio.Transport | None = None
        self.session: Session | None = None
        self.info: ClientInfo | None = None
        self.version = pk.MQTT_3_1_1
        self.v5 = False
        self.keepalive = 0
        self.last_rx = 0.0
        self.opened_at = 0.0
        self.closed = False
        self._keepalive_timer: asyncio.TimerHandle | None = None
        self.will: Message | None = None
        self.will_delay = 0
        self.send_quota = broker.limits.max_inflight
        self.client_max_packet: int | None = None
        self.in_aliases: dict[int, tuple[str, bytes]] = {}
        self.out_alias_max = 0
        self.out_aliases: dict[str, int] = {}
        self.problem_info = True
        self._buf = b""
        self._out: list[bytes] | None = None
        self._held_acks: list[list] = []          # [bytes, ready] waiting for a store commit
        self._gated: list[bytes] | None = None    # all output held until a store commit
        self._turn_bytes = 0                      # read this loop turn (fairness budget)
        self._yielding = False
        self._denied = 0
        self._denied_log = LogThrottle(DENIED_LOG_INTERVAL)
        self._paused = False
        self.peer = None

    # ------------------------------------------------------------------ asyncio callbacks

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        broker = self.broker
        self.opened_at = self.last_rx = broker.loop.time()
        self.peer = transport.get_extra_info("peername")
        if len(broker.connections) >= broker.limits.max_connections:
            broker.stats.connections_refused += 1
            log.warning("refusing connection from %s: max_connections (%d) reached",
                        self.peer, broker.limits.max_connections)
            self.closed = True
            transport.abort()
            return
        broker.connections.add(self)

    def data_received(self, data: bytes) -> None:
        if self.closed:
            return
        broker = self.broker
        self.last_rx = broker.loop.time()
        broker.stats.bytes_received += len(data)
        self._turn_bytes += len(data)
        if self._turn_bytes > READ_BUDGET_PER_TURN and not self._yielding:
            # Let other clients' packets and the timers in before reading more from this one.
            self._yielding = True
            self.transport.pause_reading()
            broker.loop.call_soon(self._end_yield)
        if self._buf:
            data = self._buf + data
            self._buf = b""
        mv = memoryview(data)
        n = len(data)
        pos = 0
        max_in = broker.limits.max_packet_size
        try:
            while n - pos >= 2:
                first = data[pos]
                length_byte = data[pos + 1]
                if length_byte < 128:
                    start = pos + 2
                    end = start + length_byte
                    if end > n:
                        break
                else:
                    frame = pk.split_frame(data, pos, max_in)
                    if frame is None:
                        break
                    start, end = frame
                if first >> 4 == 3 and self.session is not None:
                    self._on_publish(first, mv[start:end], data, pos, end)
                elif first == 0x40 and end - start == 2 and self.session is not None:
                    self._puback_received((data[start] << 8) | data[start + 1])
                else:
                    self._on_packet(pk.decode(first, mv[start:end], self.version))
                pos = end
                if self.closed:
                    return
            if pos < n:
                if n - pos >= 2:  # check a partial frame's declared size now
                    pk.split_frame(data, pos, max_in)
                self._buf = bytes(mv[pos:])
        except MQTTError as exc:
            self.protocol_violation(exc)
        except Exception:
            log.exception("internal error handling a packet from %s", self.client_id)
            self.close(rc.IMPLEMENTATION_SPECIFIC_ERROR, "internal error")
        finally:
            mv.release()

    def _arm_keepalive(self) -> None:
        # One timer per keepalive period (not per packet): when it fires, it checks the
        # time of the last byte received and re-arms for that byte's own deadline.
        deadline = self.last_rx + self.keepalive * 1.5
        self._keepalive_timer = self.broker.loop.call_at(deadline, self._keepalive_check)

    def _keepalive_check(self) -> None:
        if self.closed:
            return
        if self.broker.loop.time() >= self.last_rx + self.keepalive * 1.5:
            self.broker.stats.keepalive_timeouts += 1
            log.info("keepalive timeout for %s (%ds)", self.client_id, self.keepalive)
            self.close(rc.KEEP_ALIVE_TIMEOUT, "keep alive timeout")
        else:
            self._arm_keepalive()

    def _end_yield(self) -> None:
        self._yielding = False
        self._turn_bytes = 0
        if not self._paused and not self.closed:
            self.transport.resume_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self._keepalive_timer is not None:
            self._keepalive_timer.cancel()
        self.broker.connections.discard(self)
        if self.session is not None:
            self.broker.client_gone(self)

    def pause_writing(self) -> None:
        # The client is not reading: stop reading from it too, so it cannot make us buffer.
        self._paused = True
        if self.transport is not None:
            self.transport.pause_reading()

    def resume_writing(self) -> None:
        self._paused = False
        if self.transport is not None and not self.closed and not self._yielding:
            self.transport.resume_reading()

    # ------------------------------------------------------------------ output

    def write(self, data: bytes) -> None:
        if self._gated is not None:
            self._gated.append(data)
            return
        out = self._out
        if out is None:
            self._out = [data]
            self.broker.loop.call_soon(self._flush)
        else:
            out.append(data)

    def gate_output_until_commit(self) -> None:
        """Hold everything written from now on until the store has committed what is
        queued so far (a CONNACK for a session that must be durable first)."""
        if self._gated is None:
            self._gated = []
            self.broker.store.after_commit(self._open_gate)

    def _open_gate(self) -> None:
        gated, self._gated = self._gated, None
        for data in gated or ():
            self.write(data)

    def _flush(self) -> None:
        out = self._out
        self._out = None
        if out and not self.closed:
            data = out[0] if len(out) == 1 else b"".join(out)
            self.broker.stats.bytes_sent += len(data)
            self.transport.write(data)

    def send_packet(self, packet: pk.Packet) -> None:
        self.write(pk.encode(packet, self.version))

    def close(self, reason: int = rc.NORMAL_DISCONNECTION,
              reason_string: str | None = None) -> None:
        """Close this connection, telling an MQTT 5 client why."""
        if self.closed:
            return
        if self.v5 and self.session is not None:
            props = {"reason_string": reason_string} if reason_string else {}
            self.send_packet(pk.Disconnect(reason, props))
        self._flush()
        self.closed = True
        if self.transport is not None:
            self.transport.close()

    def protocol_violation(self, exc: MQTTError) -> None:
        self.broker.stats.protocol_errors += 1
        log.info("closing %s (%s): %s [reason 0x%02X]", self.client_id or self.peer,
                 self.listener, exc, exc.reason_code)
        if self.session is None:
            if isinstance(exc, UnsupportedProtocolVersion):
                code = rc.UNSUPPORTED_PROTOCOL_VERSION if exc.level == 5 \
                    else rc.V3_UNACCEPTABLE_PROTOCOL_VERSION
                self.write(pk.encode(pk.Connack(False, code), exc.level))
            self._flush()
            self.closed = True
            if self.transport is not None:
                self.transport.close()
            return
        self.close(exc.reason_code, str(exc))

    @property
    def client_id(self) -> str | None:
        return self.session.client_id if self.session is not None else None

    # ------------------------------------------------------------------ PUBLISH (hot path)

    def _on_publish(self, first: int, body: memoryview, data: bytes, frame_start: int,
                    frame_end: int) -> None:
        qos = (first >> 1) & 0x03
        if qos == 3:
            raise MalformedPacket("PUBLISH with QoS 3")
        if qos == 0 and first & 0x08:
            raise MalformedPacket("PUBLISH QoS 0 with the DUP flag set")
        if len(body) < 2:
            raise MalformedPacket("PUBLISH too short for a topic name")
        tlen = (body[0] << 8) | body[1]
        pos = 2 + tlen
        if pos > len(body):
            raise MalformedPacket("PUBLISH topic name runs past the end of the packet")
        topic_bytes = bytes(body[2:pos])
        try:
            topic = topic_bytes.decode()
        except UnicodeDecodeError:
            raise MalformedPacket("PUBLISH topic name is not valid UTF-8") from None
        packet_id = 0
        if qos:
            if pos + 2 > len(body):
                raise MalformedPacket("PUBLISH packet identifier runs past the end")
            packet_id = (body[pos] << 8) | body[pos + 1]
            if packet_id == 0:
                raise MalformedPacket("PUBLISH packet identifier 0")
            pos += 2
        props = None
        if self.v5:
            if pos < len(body) and body[pos] == 0:
                pos += 1
            else:
                props, pos = decode_properties(body, pos, "publish")
                if "subscription_identifier" in props:
                    raise ProtocolError("a client's PUBLISH may not carry a subscription "
                                        "identifier")
                alias = props.get("topic_alias")
                if alias is not None:
                    topic, topic_bytes = self._resolve_alias(alias, topic, topic_bytes)
                if props.get("payload_format_indicator") == 1:
                    try:
                        bytes(body[pos:]).decode()
                    except UnicodeDecodeError:
                        raise MQTTError("payload format indicator says UTF-8 but the payload "
                                        "is not", rc.PAYLOAD_FORMAT_INVALID) from None
        if not topic or "+" in topic or "#" in topic or "\x00" in topic:
            raise MQTTError(f"invalid topic name {topic!r} in PUBLISH", rc.TOPIC_NAME_INVALID)
        retain = bool(first & 0x01)
        broker = self.broker
        broker.stats.messages_received += 1
        if retain and not broker.limits.retain_available:
            raise MQTTError("retained messages are not supported here", rc.RETAIN_NOT_SUPPORTED)
        session = self.session
        if props:
            msg = Message.from_publish_properties(topic, bytes(body[pos:]), qos, retain, props,
                                                  topic_bytes, session.client_id)
        else:
            msg = Message(topic, bytes(body[pos:]), qos, retain, None, None, topic_bytes,
                          session.client_id)
            if not qos:
                # The frame as received is already the QoS 0 encoding for subscribers on
                # this protocol version: forward those bytes instead of re-encoding.
                msg.seed_qos0(self.v5, retain, data[frame_start:frame_end])
        perms = self.info.permissions
        if perms is not None and not (perms.can_publish(topic) and (
                not retain or getattr(perms, "can_retain_publish", perms.can_publish)(topic))):
            broker.stats.publish_denied += 1
            self._denied += 1
            if not self.v5:
                # MQTT 3.1.1 cannot say no to a PUBLISH; as AWS IoT Core does, close the
                # connection rather than acknowledge a message that went nowhere.
                log.info("denied PUBLISH by %s to %s: closing its MQTT 3.1.1 connection",
                         session.client_id, topic)
                self.close()
                return
            if self._denied_log.ready():  # one line per connection per interval
                log.info("denied PUBLISH by %s to %s (%d denied on this connection)",
                         session.client_id, topic, self._denied)
            if qos:
                self._ack(qos, packet_id, rc.NOT_AUTHORIZED, False)
            return
        if qos == 2:
            if packet_id in session.awaiting_pubrel:
                self._ack(2, packet_id, 0, False)  # a resend: acknowledge, do not route again
                return
            if len(session.awaiting_pubrel) >= broker.limits.receive_maximum:
                raise MQTTError("more QoS 2 publishes in flight than Receive Maximum",
                                rc.RECEIVE_MAXIMUM_EXCEEDED)
            session.awaiting_pubrel.add(packet_id)
        durable, matched = broker.route(msg)
        if qos:
            reason = rc.NO_MATCHING_SUBSCRIBERS if self.v5 and not matched else 0
            if durable.__class__ is CommitWait and durable.refused:
                if qos == 2:
                    session.awaiting_pubrel.discard(packet_id)  # the exchange ends here
                if not self.v5:
                    return  # 3.1.1 has no way to say no: withhold the ack, it is sent again
                reason = rc.QUOTA_EXCEEDED
            self._ack(qos, packet_id, reason, durable)

    def _resolve_alias(self, alias: int, topic: str, topic_bytes: bytes) -> tuple[str, bytes]:
        if alias > self.broker.limits.topic_alias_maximum:
            raise MQTTError(f"topic alias {alias} above the maximum "
                            f"{self.broker.limits.topic_alias_maximum}", rc.TOPIC_ALIAS_INVALID)
        if topic:
            self.in_aliases[alias] = (topic, topic_bytes)
            return topic, topic_bytes
        known = self.in_aliases.get(alias)
        if known is None:
            raise ProtocolError(f"topic alias {alias} used before it was set")
        return known

    def _ack(self, qos: int, packet_id: int, reason: int, durable: bool) -> None:
        if self.v5 and reason:
            data = bytes((0x40 if qos == 1 else 0x50, 3, packet_id >> 8, packet_id & 0xFF,
                          reason))
        else:
            data = bytes((0x40 if qos == 1 else 0x50, 2, packet_id >> 8, packet_id & 0xFF))
        self._send_ack(data, durable)

    def _send_ack(self, data: bytes, durable: bool | CommitWait) -> None:
        """Acks leave in order; one that needs a store commit holds back those after it."""
        if not durable and not self._held_acks:
            self.write(data)
            return
        entry = [data, not durable]
        self._held_acks.append(entry)
        if durable is True:
            self.broker.store.after_commit(lambda: self._release_ack(entry))
        elif durable:
            durable.then(lambda: self._release_ack(entry))

    def _release_ack(self, entry: list) -> None:
        entry[1] = True
        held = self._held_acks
        while held and held[0][1]:
            self.write(held.pop(0)[0])

    # ------------------------------------------------------------------ outbound delivery

    def send_qos0(self, msg: Message, retain: bool, sub_ids: tuple[int, ...]) -> None:
        if self._paused and self.transport.get_write_buffer_size() > \
                self.broker.limits.max_queued_bytes:
            self.broker.stats.dropped_slow_consumer += 1
            return
        if sub_ids or self.out_alias_max or msg.expiry_at is not None:
            data = self._encode_out(msg, 0, retain, None, False, sub_ids)
        else:
            data = msg.encode_qos0(self.v5, retain)
        if self.client_max_packet is not None and len(data) > self.client_max_packet:
            self.broker.stats.dropped_too_large += 1
            return
        self.broker.stats.messages_sent += 1
        self.write(data)

    def _encode_out(self, msg: Message, qos: int, retain: bool, packet_id: int | None,
                    dup: bool, sub_ids: tuple[int, ...]) -> bytes:
        if not self.v5:
            return msg.encode(False, qos, retain, packet_id, dup)
        alias = None
        send_topic = True
        if self.out_alias_max:
            alias = self.out_aliases.get(msg.topic)
            if alias is not None:
                send_topic = False
            elif len(self.out_aliases) < self.out_alias_max:
                alias = len(self.out_aliases) + 1
                self.out_aliases[msg.topic] = alias
        return msg.encode(True, qos, retain, packet_id, dup, sub_ids, alias, send_topic)

    def send_outgoing(self, item: Outgoing) -> bool:
        """Send a QoS 1/2 delivery under a new packet id; False if it had to be dropped."""
        session = self.session
        msg = item.message
        if msg.expiry_at is not None and msg.expired():
            self.broker.stats.dropped_expired += 1
            self.broker.forget(session, item)
            return False
        perms = session.perms
        if perms is not None and not perms.can_receive(msg.topic):
            self.broker.forget(session, item)  # queued before the client's rights were known
            return False
        pid = session.allocate_packet_id()
        item.packet_id = pid
        data = self._encode_out(msg, item.qos, item.retain, pid, item.sent, item.sub_ids)
        if self.client_max_packet is not None and len(data) > self.client_max_packet:
            self.broker.stats.dropped_too_large += 1
            self.broker.forget(session, item)
            return False
        session.inflight[pid] = item
        item.sent = True
        self.broker.stats.messages_sent += 1
        self.write(data)
        return True

    def fill_window(self) -> None:
        session = self.session
        queue = session.queue
        inflight = session.inflight
        quota = self.send_quota
        while queue and len(inflight) < quota and not self.closed:
            self.send_outgoing(queue.popleft())

    def resend_inflight(self) -> None:
        """On session resumption: everything unacknowledged goes again, in order, under
        its original packet id [MQTT-4.4.0-1]: PUBLISH with DUP, or PUBREL."""
        for pid, item in self.session.inflight.items():
            if item.awaiting_pubcomp:
                self.send_packet(pk.Pubrel(pid))
            else:
                self.broker.stats.messages_sent += 1
                self.write(self._encode_out(item.message, item.qos, item.retain, pid, True,
                                            item.sub_ids))

    # ------------------------------------------------------------------ other packets

    def _on_packet(self, packet: pk.Packet) -> None:
        kind = type(packet)
        if self.session is None:
            if kind is not pk.Connect:
                raise ProtocolError(f"first packet must be CONNECT, got {kind.__name__.upper()}")
            self.broker.handle_connect(self, packet)
            return
        handler = _HANDLERS.get(kind)
        if handler is None:
            raise ProtocolError(f"a client may not send {kind.__name__.upper()}")
        handler(self, packet)

    def _on_connect_again(self, packet: pk.Connect) -> None:
        raise ProtocolError("second CONNECT on one connection")

    def _on_puback(self, packet: pk.Puback) -> None:
        self._puback_received(packet.packet_id)

    def _puback_received(self, packet_id: int) -> None:
        session = self.session
        item = session.inflight.get(packet_id)
        if item is None or item.qos != 1:
            if packet_id == 0:
                raise MalformedPacket("PUBACK packet identifier 0")
            return  # unknown id: nothing to do (spec allows ignoring)
        del session.inflight[packet_id]
        self.broker.forget(session, item)
        if session.queue:
            self.fill_window()

    def _on_pubrec(self, packet: pk.Pubrec) -> None:
        session = self.session
        item = session.inflight.get(packet.packet_id)
        if item is None or item.qos != 2:
            self.send_packet(pk.Pubrel(packet.packet_id, rc.PACKET_IDENTIFIER_NOT_FOUND
                                       if self.v5 else 0))
            return
        if packet.reason_code >= 0x80:  # the receiver refused it: the flow ends here
            del session.inflight[packet.packet_id]
            self.broker.forget(session, item)
            self.fill_window()
            return
        item.awaiting_pubcomp = True
        self.broker.mark_pubrel(session, item)
        self.send_packet(pk.Pubrel(packet.packet_id))

    def _on_pubcomp(self, packet: pk.Pubcomp) -> None:
        session = self.session
        item = session.inflight.get(packet.packet_id)
        if item is None or not item.awaiting_pubcomp:
            return
        del session.inflight[packet.packet_id]
        self.broker.forget(session, item)
        if session.queue:
            self.fill_window()

    def _on_pubrel(self, packet: pk.Pubrel) -> None:
        session = self.session
        pid = packet.packet_id
        if pid in session.awaiting_pubrel:
            session.awaiting_pubrel.discard(pid)
            reason = 0
        else:
            reason = rc.PACKET_IDENTIFIER_NOT_FOUND if self.v5 else 0
        data = bytes((0x70, 3, pid >> 8, pid & 0xFF, reason)) if reason else \
            bytes((0x70, 2, pid >> 8, pid & 0xFF))
        self._send_ack(data, False)

    def _on_subscribe(self, packet: pk.Subscribe) -> None:
        broker = self.broker
        session = self.session
        sub_ids = packet.properties.get("subscription_identifier")
        sub_id = sub_ids[0] if sub_ids else None
        codes = []
        retained_for: list[tuple[str, SubOptions]] = []
        for sub in packet.subscriptions:
            code, deliver_retained = broker.subscribe(self, sub, sub_id)
            codes.append(code)
            if deliver_retained:
                retained_for.append((sub.topic_filter, session.subscriptions[sub.topic_filter]))
        durable = broker.subscriptions_changed(session)
        self._send_ack(pk.encode(pk.Suback(packet.packet_id, codes), self.version), durable)
        for topic_filter, opts in retained_for:
            broker.deliver_retained(session, topic_filter, opts)

    def _on_unsubscribe(self, packet: pk.Unsubscribe) -> None:
        codes = [self.broker.unsubscribe(self.session, f) for f in packet.topic_filters]
        durable = self.broker.subscriptions_changed(self.session)
        self._send_ack(pk.encode(pk.Unsuback(packet.packet_id, codes if self.v5 else []),
                                 self.version), durable)

    def _on_pingreq(self, packet: pk.Pingreq) -> None:
        self.write(b"\xd0\x00")

    def _on_disconnect(self, packet: pk.Disconnect) -> None:
        session = self.session
        expiry = packet.properties.get("session_expiry_interval")
        if expiry is not None:
            if session.expiry_interval == 0 and expiry != 0:
                raise ProtocolError("DISCONNECT sets a session expiry after CONNECT set none")
            session.expiry_interval = self.broker.cap_expiry(expiry)
        if packet.reason_code != rc.DISCONNECT_WITH_WILL:
            self.will = None
        self._flush()
        self.closed = True
        self.transport.close()

    def _on_auth(self, packet: pk.Auth) -> None:
        raise ProtocolError("AUTH without an authentication method in CONNECT")

    # ------------------------------------------------------------------ CONNECT helpers

    def apply_connect(self, packet: pk.Connect, session: Session) -> dict:
        """Take the client's CONNECT options; return the CONNACK properties for MQTT 5."""
        limits = self.broker.limits
        self.version = packet.protocol_level
        self.v5 = self.version == pk.MQTT_5
        self.session = session
        self.keepalive = packet.keepalive
        props: dict = {}
        if self.v5:
            cp = packet.properties
            self.send_quota = min(cp.get("receive_maximum", 65535), limits.max_inflight)
            self.client_max_packet = cp.get("maximum_packet_size")
            self.out_alias_max = min(cp.get("topic_alias_maximum", 0),
                                     limits.max_topic_aliases_out)
            self.problem_info = cp.get("request_problem_information", 1) == 1
            if packet.keepalive > limits.max_keepalive or \
                    (packet.keepalive == 0 and limits.max_keepalive < 65535):
                self.keepalive = limits.max_keepalive
                props["server_keep_alive"] = limits.max_keepalive
            props["receive_maximum"] = limits.receive_maximum
            props["maximum_packet_size"] = limits.max_packet_size
            if limits.topic_alias_maximum:
                props["topic_alias_maximum"] = limits.topic_alias_maximum
            if not limits.retain_available:
                props["retain_available"] = 0
        if self.keepalive:
            self._arm_keepalive()
        if packet.will is not None:
            w = packet.will
            self.will = Message.from_publish_properties(w.topic, w.payload, w.qos, w.retain,
                                                        w.properties, origin=session.client_id)
            self.will_delay = w.properties.get("will_delay_interval", 0)
        return props


def new_client_id() -> str:
    return "lichen-" + secrets.token_hex(8)


def requested_expiry(packet: pk.Connect) -> int:
    if packet.protocol_level == pk.MQTT_5:
        return packet.properties.get("session_expiry_interval", 0)
    return 0 if packet.clean_start else NEVER_EXPIRES


def validate_subscription(sub: pk.Subscription) -> tuple[str | None, str]:
    group, inner = parse_shared(sub.topic_filter)
    if group is None:
        validate_topic_filter(inner)
    elif sub.no_local:
        raise ProtocolError("No Local set on a shared subscription")
    return group, inner


_HANDLERS = {
    pk.Connect: Connection._on_connect_again,
    pk.Puback: Connection._on_puback,
    pk.Pubrec: Connection._on_pubrec,
    pk.Pubrel: Connection._on_pubrel,
    pk.Pubcomp: Connection._on_pubcomp,
    pk.Subscribe: Connection._on_subscribe,
    pk.Unsubscribe: Connection._on_unsubscribe,
    pk.Pingreq: Connection._on_pingreq,
    pk.Disconnect: Connection._on_disconnect,
    pk.Auth: Connection._on_auth,
}

