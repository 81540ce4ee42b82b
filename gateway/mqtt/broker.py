"""The broker: sessions, routing, retained messages, listeners, and the in-process interface
that the gateway's other components use (publish as the gateway, subscribe a callback,
authorisation hooks)."""

from __future__ import annotations

import asyncio
import logging
import os
import ssl
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from ..config import MQTTLimits
from . import packets as pk
from . import reason_codes as rc
from .auth_hooks import AuthHooks, ClientInfo
from .connection import Connection, new_client_id, requested_expiry, validate_subscription
from .durability import CommitWait, combine
from .message import Message
from .session import NEVER_EXPIRES, Outgoing, Session, SubOptions
from .store import AWAITING_PUBCOMP, BrokerStore
from .topics import (
    InvalidTopic,
    SubscriptionTrie,
    compile_filter,
    parse_shared,
    validate_topic_filter,
    validate_topic_name,
)

log = logging.getLogger("lichen.mqtt")

VERSION = "lichen 0.1.0"
_CACHE_LIMIT = 20_000


@dataclass(slots=True)
class BrokerStats:
    connects: int = 0
    connections_refused: int = 0
    protocol_errors: int = 0
    messages_received: int = 0
    messages_sent: int = 0
    bytes_received: int = 0
    bytes_sent: int = 0
    dropped_queue_full: int = 0
    dropped_slow_consumer: int = 0
    dropped_expired: int = 0
    dropped_too_large: int = 0
    retained_refused: int = 0
    publish_denied: int = 0
    keepalive_timeouts: int = 0
    tls_handshake_failures: int = 0


class InternalSubscriber:
    """A component's callback attached to a topic filter; gets every matching Message.
    The callback may answer with a CommitWait or REFUSED (see durability.py)."""

    __slots__ = ("topic_filter", "callback")

    def __init__(self, topic_filter: str, callback: Callable[[Message], None]) -> None:
        self.topic_filter = topic_filter
        self.callback = callback

    def deliver(self, msg: Message) -> object:
        """The callback's answer: None, a CommitWait, or REFUSED."""
        try:
            return self.callback(msg)
        except Exception:
            log.exception("internal subscriber for %s failed on %s", self.topic_filter, msg.topic)
            return None


class Broker:
    def __init__(self, limits: MQTTLimits | None = None, store: BrokerStore | None = None,
                 auth: AuthHooks | None = None) -> None:
        self.limits = limits or MQTTLimits()
        self.store = store
        self.auth = auth or AuthHooks()
        self.stats = BrokerStats()
        self.loop: asyncio.AbstractEventLoop = None  # type: ignore[assignment]
        self.connections: set[Connection] = set()
        self.sessions: dict[str, Session] = {}
        self.offline: dict[str, Session] = {}
        self.trie = SubscriptionTrie()
        self.retained: dict[str, Message] = {}
        self.servers: list[asyncio.AbstractServer] = []
        self.listeners: list[str] = []
        self.started_at = time.time()
        self._cache: dict[str, tuple[list, list]] = {}
        self._share_turn: dict[tuple[str, str], int] = {}
        self._tasks: list[asyncio.Task] = []
        self.commit_sources: list = []

    # ================================================================ lifecycle

    async def start(self) -> None:
        self.loop = asyncio.get_running_loop()
        self.started_at = time.time()
        if self.store is not None:
            self._restore()
            self.store.start(self.loop)
        self._tasks.append(self.loop.create_task(self._sweeper()))
        if self.limits.sys_interval:
            self._tasks.append(self.loop.create_task(self._sys_publisher()))

    def _restore(self) -> None:
        for msg in self.store.load_retained():
            self.retained[msg.topic] = msg
        now = time.time()
        for stored in self.store.load_sessions():
            disconnected = stored.disconnected_at or now  # crashed while connected
            if stored.expiry_interval != NEVER_EXPIRES and \
                    now >= disconnected + stored.expiry_interval:
                self.store.delete_session(stored.client_id)
                continue
            session = Session(stored.client_id, self.limits.max_queued_messages)
            session.expiry_interval = stored.expiry_interval
            session.disconnected_at = disconnected
            session.stored = True
            for topic_filter, d in stored.subscriptions.items():
                opts = SubOptions.from_json(d)
                group, inner = parse_shared(topic_filter)
                session.subscriptions[topic_filter] = opts
                self.trie.add(inner, session, opts, group)
            for sm in stored.messages:
                item = Outgoing(sm.message, sm.qos, sm.retain, sm.sub_ids, sm.seq)
                session.note_seq(sm.seq)
                if sm.state == AWAITING_PUBCOMP and sm.packet_id:
                    item.packet_id = sm.packet_id
                    item.awaiting_pubcomp = item.sent = True
                    session.inflight[sm.packet_id] = item
                else:
                    session.queue.append(item)
            self.sessions[session.client_id] = session
            self.offline[session.client_id] = session
        log.info("restored %d retained messages and %d sessions", len(self.retained),
                 len(self.sessions))

    async def listen_tcp(self, host: str, port: int, name: str = "tcp") -> asyncio.AbstractServer:
        """Plaintext MQTT on host:port."""
        return await self._listen(lambda: Connection(self, name), host, port, name)

    async def listen_tls(self, host: str, port: int, context: Callable[[], ssl.SSLContext],
                         name: str = "tls") -> asyncio.AbstractServer:
        """MQTT over TLS; `context()` gives the SSL context for each new handshake."""
        from .tls_listener import TLSProtocol

        return await self._listen(lambda: TLSProtocol(self, name, context), host, port, name)

    async def _listen(self, factory: Callable[[], asyncio.Protocol], host: str, port: int,
                      name: str) -> asyncio.AbstractServer:
        try:
            server = await self.loop.create_server(factory, host, port, reuse_address=True,
                                                   backlog=2048)
        except OSError as exc:
            raise OSError(exc.errno, f"{name} listener on {host}:{port}: "
                          f"{exc.strerror or exc}") from None
        self.servers.append(server)
        self.listeners.append(f"{name} {host}:{port}")
        log.info("listening (%s) on %s:%d", name, host, port)
        return server

    async def listen_unix(self, path: str | Path) -> asyncio.AbstractServer:
        path = Path(path)
        if path.is_socket():
            path.unlink()  # left by a previous run
        server = await self.loop.create_unix_server(lambda: Connection(self, "unix"), str(path))
        os.chmod(path, 0o660)
        self.servers.append(server)
        self.listeners.append(f"unix {path}")
        log.info("listening (unix) on %s", path)
        return server

    async def stop(self) -> None:
        for server in self.servers:
            server.close()
        for conn in list(self.connections):
            conn.will = None  # the server going away is not the client's failure
            session = conn.session
            conn.close(rc.SERVER_SHUTTING_DOWN, "gateway shutting down")
            if session is not None:
                self.client_gone(conn)
        for task in self._tasks:
            task.cancel()
        for server in self.servers:
            try:
                await asyncio.wait_for(server.wait_closed(), 2)
            except TimeoutError:
                pass
        if self.store is not None:
            await self.store.flush()
            self.store.close()

    # ================================================================ in-process interface

    def publish(self, topic: str, payload: bytes | str, qos: int = 0, retain: bool = False,
                properties: dict | None = None, origin: str | None = None) -> bool:
        """Publish as the gateway (or, with origin, on behalf of another component, which
        internal subscribers can tell apart). Returns True if the message had to be stored
        durably; `await flush()` waits for that commit."""
        validate_topic_name(topic)
        if qos not in (0, 1, 2):
            raise ValueError(f"QoS must be 0, 1 or 2, got {qos!r}")
        if isinstance(payload, str):
            payload = payload.encode()
        elif type(payload) is not bytes:
            payload = bytes(payload)
        if properties:
            msg = Message.from_publish_properties(topic, payload, qos, retain, properties,
                                                  None, origin)
        else:  # the common case (function results, status): nothing to pick through
            msg = Message(topic, payload, qos, retain, None, None, None, origin)
        durable, _ = self.route(msg)
        return bool(durable)

    async def flush(self) -> None:
        """Wait for the commit of everything queued so far, here and in the commit sources
        other components registered (add_commit_source)."""
        if self.store is not None:
            await self.store.flush()
        for source in self.commit_sources:
            await source.flush()

    def add_commit_source(self, source: object) -> None:
        """A component's store whose commits acknowledgements may wait for (it has
        `after_commit(fn)` and `async flush()`); flush() waits for it too."""
        self.commit_sources.append(source)

    def subscribe_callback(self, topic_filter: str,
                           callback: Callable[[Message], None]) -> InternalSubscriber:
        group, inner = parse_shared(topic_filter)
        if group is not None:
            raise InvalidTopic("internal subscribers cannot join shared subscriptions")
        validate_topic_filter(inner)
        sub = InternalSubscriber(topic_filter, callback)
        self.trie.add(inner, sub, SubOptions(2))
        self._cache.clear()
        return sub

    def unsubscribe_callback(self, sub: InternalSubscriber) -> None:
        if self.trie.remove(sub.topic_filter, sub):
            self._cache.clear()

    # ================================================================ connect / disconnect

    def handle_connect(self, conn: Connection, packet: pk.Connect) -> None:
        limits = self.limits
        level = packet.protocol_level
        v5 = level == pk.MQTT_5
        client_id = packet.client_id
        assigned = None
        if not client_id:
            if level == pk.MQTT_3_1 or (level == pk.MQTT_3_1_1 and not packet.clean_start) \
                    or not limits.allow_zero_length_client_id:
                self._refuse(conn, level, rc.CLIENT_IDENTIFIER_NOT_VALID,
                             "empty client id needs a clean session")
                return
            client_id = assigned = new_client_id()
        if v5 and "authentication_method" in packet.properties:
            self._refuse(conn, level, rc.BAD_AUTHENTICATION_METHOD,
                         f"authentication method {packet.properties['authentication_method']!r}"
                         " is not supported")
            return
        info = self._client_info(conn, client_id, packet)
        code = self.auth.authenticate(info, packet.password)
        if code:
            self._refuse(conn, level, code, "not authorised")
            return
        requested = requested_expiry(packet)
        expiry = self.cap_expiry(requested)

        existing = self.sessions.get(client_id)
        if existing is not None and existing.conn is not None:
            old = existing.conn
            log.info("client %s taken over by a new connection from %s", client_id, conn.peer)
            old.close(rc.SESSION_TAKEN_OVER, "another connection took over this client id")
            self.client_gone(old)
            existing = self.sessions.get(client_id)
        session_present = dropped = False
        if existing is not None and packet.clean_start:
            dropped = existing.stored
            self._drop_session(existing, publish_will=True)
            existing = None
        if existing is not None:
            session = existing
            session_present = True
            if session.will is not None:  # reconnected within the will delay: no will
                session.will = None
                session.will_due = None
        else:
            session = Session(client_id, limits.max_queued_messages)
            self.sessions[client_id] = session
        self.offline.pop(client_id, None)
        session.expiry_interval = expiry
        session.disconnected_at = None
        session.conn = conn
        session.info = info
        session.perms = info.permissions
        conn.info = info
        props = conn.apply_connect(packet, session)
        if self.store is not None and (session.persistent or session.stored or dropped):
            # The CONNACK promises the session (or a clean one): send it once the store has
            # it, and everything after it behind it.
            if session.persistent:
                self._save_session(session)
            elif session.stored:
                self.store.delete_session(client_id)
                session.stored = False
            conn.gate_output_until_commit()
        if v5:
            if assigned:
                props["assigned_client_identifier"] = assigned
            if expiry != requested:
                props["session_expiry_interval"] = expiry
        conn.send_packet(pk.Connack(session_present, rc.SUCCESS, props))
        self.stats.connects += 1
        if session_present:
            conn.resend_inflight()
            conn.fill_window()

    def _client_info(self, conn: Connection, client_id: str, packet: pk.Connect) -> ClientInfo:
        transport = conn.transport
        cert = der = None
        if transport is not None and transport.get_extra_info("sslcontext") is not None:
            cert = transport.get_extra_info("peercert")
            sslobj = transport.get_extra_info("ssl_object")
            der = sslobj.getpeercert(binary_form=True) if sslobj is not None else None
        return ClientInfo(client_id, packet.username, packet.protocol_level, conn.listener,
                          conn.peer, cert, der)

    def _refuse(self, conn: Connection, level: int, code: int, why: str) -> None:
        log.info("refused CONNECT from %s: %s [0x%02X]", conn.peer, why, code)
        self.stats.connections_refused += 1
        wire_code = code if level == pk.MQTT_5 else rc.connack_code_for_v3(code)
        props = {"reason_string": why} if level == pk.MQTT_5 else {}
        conn.write(pk.encode(pk.Connack(False, wire_code, props), level))
        conn._flush()
        conn.closed = True
        conn.transport.close()

    def cap_expiry(self, expiry: int) -> int:
        cap = self.limits.max_session_expiry
        if cap and expiry > cap:
            return cap
        return expiry

    def client_gone(self, conn: Connection) -> None:
        """The connection closed (or was taken over): will, then keep or drop the session."""
        session = conn.session
        conn.session = None
        if session is None or session.conn is not conn:
            return
        session.conn = None
        will = conn.will  # a DISCONNECT cleared it unless its reason was 0x04
        if will is not None:
            if conn.will_delay and session.persistent:
                session.will = will
                session.will_due = time.time() + min(conn.will_delay, session.expiry_interval)
            else:
                self._publish_will(will)
        if not session.persistent:
            self._drop_session(session)
            return
        session.disconnected_at = time.time()
        self.offline[session.client_id] = session
        if self.store is not None:
            self._save_session(session)

    def _publish_will(self, will: Message) -> None:
        log.debug("publishing will of %s on %s", will.origin, will.topic)
        self.route(will)

    def _drop_session(self, session: Session, publish_will: bool = False) -> None:
        if publish_will and session.will is not None:
            self._publish_will(session.will)
        session.will = None
        for topic_filter in list(session.subscriptions):
            self.unsubscribe(session, topic_filter)
        self.sessions.pop(session.client_id, None)
        self.offline.pop(session.client_id, None)
        if self.store is not None and session.stored:
            self.store.delete_session(session.client_id)
            session.stored = False

    def _save_session(self, session: Session) -> None:
        self.store.save_session(session.client_id, session.expiry_interval,
                                session.disconnected_at, session.subscriptions_json())
        session.stored = True

    # ================================================================ subscriptions

    def subscribe(self, conn: Connection, sub: pk.Subscription,
                  sub_id: int | None) -> tuple[int, bool]:
        """Add one subscription: (reason code for SUBACK, whether to send retained)."""
        session = conn.session
        failure = rc.V3_SUBACK_FAILURE
        try:
            group, inner = validate_subscription(sub)
        except InvalidTopic as exc:
            log.info("%s: invalid SUBSCRIBE filter: %s", session.client_id, exc)
            return (rc.TOPIC_FILTER_INVALID if conn.v5 else failure), False
        perms = conn.info.permissions
        if perms is not None and not perms.can_subscribe(sub.topic_filter):
            log.info("denied SUBSCRIBE by %s to %s", session.client_id, sub.topic_filter)
            return (rc.NOT_AUTHORIZED if conn.v5 else failure), False
        existed = sub.topic_filter in session.subscriptions
        if not existed and len(session.subscriptions) >= self.limits.max_subscriptions_per_client:
            log.info("%s: max_subscriptions_per_client reached", session.client_id)
            return (rc.QUOTA_EXCEEDED if conn.v5 else failure), False
        opts = SubOptions(sub.qos, sub.no_local, sub.retain_as_published, sub.retain_handling,
                          sub_id)
        session.subscriptions[sub.topic_filter] = opts
        self.trie.add(inner, session, opts, group)
        self._cache.clear()
        send_retained = group is None and (sub.retain_handling == 0 or
                                           (sub.retain_handling == 1 and not existed))
        return sub.qos, send_retained

    def unsubscribe(self, session: Session, topic_filter: str) -> int:
        if session.subscriptions.pop(topic_filter, None) is None:
            return rc.NO_SUBSCRIPTION_EXISTED
        group, inner = parse_shared(topic_filter)
        self.trie.remove(inner, session, group)
        self._cache.clear()
        return rc.SUCCESS

    def subscriptions_changed(self, session: Session) -> bool:
        """Persist a durable session's subscriptions; True if the ack must await it."""
        if self.store is not None and session.persistent:
            self._save_session(session)
            return True
        return False

    def deliver_retained(self, session: Session, topic_filter: str, opts: SubOptions) -> None:
        group, inner = parse_shared(topic_filter)
        if "+" in inner or "#" in inner:
            matches = compile_filter(inner)
            candidates = [m for t, m in self.retained.items() if matches(t)]
        else:
            m = self.retained.get(inner)
            candidates = [m] if m is not None else []
        sub_ids = (opts.sub_id,) if opts.sub_id else ()
        perms = session.info.permissions if session.info is not None else None
        now = time.time()
        for msg in candidates:
            if msg.expiry_at is not None and now >= msg.expiry_at:
                self.retained.pop(msg.topic, None)
                continue
            if perms is not None and not perms.can_receive(msg.topic):
                continue
            qos = msg.qos if msg.qos < opts.qos else opts.qos
            if qos == 0:
                if session.conn is not None:
                    session.conn.send_qos0(msg, True, sub_ids)
            else:
                self.deliver(session, msg, qos, True, sub_ids, from_retained=True)

    # ================================================================ routing

    def route(self, msg: Message) -> tuple[bool | CommitWait, bool]:
        """Deliver to every matching subscriber: (what the acknowledgement waits for: True
        for the broker's store, a CommitWait if internal subscribers answered; anyone
        matched)."""
        durable = self._retain(msg) if msg.retain else False
        entry = self._cache.get(msg.topic)
        if entry is None:
            entry = self._targets(msg.topic)
        targets, shared = entry
        origin = msg.origin
        msg_qos = msg.qos
        answers = None
        for key, qos, rap, sub_ids, nolocal in targets:
            if type(key) is InternalSubscriber:
                answer = key.deliver(msg)
                if answer is not None:
                    if answers is None:
                        answers = []
                    answers.append(answer)
                continue
            if nolocal is not None and origin == key.client_id:
                opts = [o for o in nolocal if not o.no_local]
                if not opts:
                    continue
                qos = max(o.qos for o in opts)
                rap = any(o.retain_as_published for o in opts)
                sub_ids = tuple(o.sub_id for o in opts if o.sub_id)
            perms = key.perms
            if perms is not None and not perms.can_receive(msg.topic):
                continue
            if msg_qos < qos:
                qos = msg_qos
            if qos == 0:
                conn = key.conn
                if conn is not None:
                    conn.send_qos0(msg, msg.retain and rap, sub_ids)
            elif self.deliver(key, msg, qos, msg.retain and rap, sub_ids):
                durable = True
        for group, topic_filter, members in shared:
            session, opts = self._share_member(group, topic_filter, members)
            perms = session.perms
            if perms is not None and not perms.can_receive(msg.topic):
                continue
            qos = msg_qos if msg_qos < opts.qos else opts.qos
            sub_ids = (opts.sub_id,) if opts.sub_id else ()
            retain = msg.retain and opts.retain_as_published
            if qos == 0:
                if session.conn is not None:
                    session.conn.send_qos0(msg, retain, sub_ids)
            elif self.deliver(session, msg, qos, retain, sub_ids):
                durable = True
        if answers is not None:
            return combine(self.store, durable, answers), True
        return durable, bool(targets or shared)

    def _targets(self, topic: str) -> tuple[list, list]:
        plain, shared = self.trie.match(topic)
        by_key: dict = {}
        for key, opts in plain:
            by_key.setdefault(key, []).append(opts)
        targets = []
        for key, opts_list in by_key.items():
            if type(key) is InternalSubscriber:
                targets.append((key, 2, False, (), None))
                continue
            qos = max(o.qos for o in opts_list)
            rap = any(o.retain_as_published for o in opts_list)
            sub_ids = tuple(o.sub_id for o in opts_list if o.sub_id)
            nolocal = opts_list if any(o.no_local for o in opts_list) else None
            targets.append((key, qos, rap, sub_ids, nolocal))
        if len(self._cache) >= _CACHE_LIMIT:
            self._cache.clear()
        entry = (targets, shared)
        self._cache[topic] = entry
        return entry

    def _share_member(self, group: str, topic_filter: str,
                      members: dict) -> tuple[Session, SubOptions]:
        """Round robin over the group, preferring members that are connected."""
        items = list(members.items())
        turn_key = (group, topic_filter)
        turn = self._share_turn.get(turn_key, 0)
        self._share_turn[turn_key] = turn + 1
        n = len(items)
        for i in range(n):
            session, opts = items[(turn + i) % n]
            if session.conn is not None:
                return session, opts
        return items[turn % n]

    def deliver(self, session: Session, msg: Message, qos: int, retain: bool,
                sub_ids: tuple[int, ...], from_retained: bool = False) -> bool:
        """A QoS 1/2 delivery to one session; True if it was written to the store."""
        item = Outgoing(msg, qos, retain, sub_ids, None)
        durable = False
        if session.persistent and self.store is not None:
            item.seq = session.next_seq()
            self.store.add_message(session.client_id, item.seq, msg, qos, retain, sub_ids)
            durable = True
        conn = session.conn
        if conn is not None and not session.queue and len(session.inflight) < conn.send_quota:
            conn.send_outgoing(item)
        elif not session.enqueue(item, from_retained):
            self.stats.dropped_queue_full += 1
            if session.dropped % 1000 == 1:
                log.warning("queue of %s full (%d): dropping messages", session.client_id,
                            session.max_queued)
            if durable:
                self.store.delete_message(session.client_id, item.seq)
        return durable

    def forget(self, session: Session, item: Outgoing) -> None:
        """A delivery is finished (acknowledged, expired or dropped)."""
        if item.seq is not None and self.store is not None:
            self.store.delete_message(session.client_id, item.seq)

    def mark_pubrel(self, session: Session, item: Outgoing) -> None:
        if item.seq is not None and self.store is not None:
            self.store.set_message_state(session.client_id, item.seq, item.packet_id,
                                         AWAITING_PUBCOMP)

    def _retain(self, msg: Message) -> bool:
        topic = msg.topic
        persist = self.store is not None and not topic.startswith("$SYS/")
        if not msg.payload:
            if self.retained.pop(topic, None) is not None and persist:
                self.store.delete_retained(topic)
                return True
            return False
        if topic not in self.retained and len(self.retained) >= self.limits.max_retained_messages:
            self.stats.retained_refused += 1
            log.warning("max_retained_messages (%d) reached: not retaining %s",
                        self.limits.max_retained_messages, topic)
            return False
        self.retained[topic] = msg
        if persist:
            self.store.put_retained(msg)
        return persist

    # ================================================================ timers

    async def _sweeper(self) -> None:
        """Connect timeout, delayed wills and session expiry, twice a second."""
        while True:
            await asyncio.sleep(0.5)
            try:
                self._sweep()
            except Exception:
                log.exception("sweeper failed")

    def _sweep(self) -> None:
        loop_now = self.loop.time()
        timeout = self.limits.connect_timeout
        for conn in list(self.connections):
            if conn.closed:
                continue
            if conn.session is None and loop_now - conn.opened_at > timeout:
                log.info("no CONNECT from %s within %.0fs: closing", conn.peer, timeout)
                conn.closed = True
                conn.transport.abort()
        now = time.time()
        for session in list(self.offline.values()):
            if session.will is not None and session.will_due is not None \
                    and now >= session.will_due:
                will, session.will, session.will_due = session.will, None, None
                self._publish_will(will)
            if session.expiry_interval != NEVER_EXPIRES and session.disconnected_at is not None \
                    and now >= session.disconnected_at + session.expiry_interval:
                log.info("session %s expired", session.client_id)
                self._drop_session(session, publish_will=True)

    async def _sys_publisher(self) -> None:
        while True:
            try:
                self.publish_sys()
            except Exception:
                log.exception("$SYS publish failed")
            await asyncio.sleep(self.limits.sys_interval)

    def publish_sys(self) -> None:
        s = self.stats
        values = {
            "version": VERSION,
            "uptime": f"{int(time.time() - self.started_at)} seconds",
            "clients/connected": len(self.sessions) - len(self.offline),
            "clients/disconnected": len(self.offline),
            "clients/total": len(self.sessions),
            "messages/received": s.messages_received,
            "messages/sent": s.messages_sent,
            "messages/dropped": s.dropped_queue_full + s.dropped_slow_consumer
            + s.dropped_expired + s.dropped_too_large,
            "bytes/received": s.bytes_received,
            "bytes/sent": s.bytes_sent,
            "subscriptions/count": self.trie.count,
            "retained messages/count": len(self.retained),
        }
        for name, value in values.items():
            self.publish(f"$SYS/broker/{name}", str(value), 0, True)

    def status(self) -> dict:
        return {
            "version": VERSION,
            "uptime_s": int(time.time() - self.started_at),
            "listeners": list(self.listeners),
            "clients_connected": len(self.sessions) - len(self.offline),
            "sessions": len(self.sessions),
            "subscriptions": self.trie.count,
            "retained": len(self.retained),
            "stats": asdict(self.stats),
        }
