"""Hostile and broken clients against a real Lichen process.

Garbage, malformed and oversized packets, stalled and silent sockets, floods, too many
connections and abrupt disconnects: each gets the offending connection closed (with a
DISCONNECT naming the reason for an MQTT 5 client), while well-behaved clients carry on and
the process stays up. Raw sockets speak hand-encoded MQTT so the tests do not rely on the
broker's own codec. Every wait is bounded.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import socket
import struct
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from tests.conftest import ROOT, BrokerProcess

V311, V5 = 4, 5
WAIT = 5.0

CONNECT, CONNACK, PUBLISH, PUBACK = 1, 2, 3, 4
SUBSCRIBE, SUBACK, PINGREQ, PINGRESP, DISCONNECT = 8, 9, 12, 13, 14

MALFORMED_PACKET, PACKET_TOO_LARGE = 0x81, 0x95


def uid(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


# ====================================================================== wire encoding


def varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def mqtt_str(s: str | bytes) -> bytes:
    b = s.encode() if isinstance(s, str) else s
    return struct.pack("!H", len(b)) + b


def frame(first: int, body: bytes) -> bytes:
    return bytes([first]) + varint(len(body)) + body


def connect_pkt(client_id: str, version: int = V5, keepalive: int = 60,
                clean: bool = True) -> bytes:
    body = mqtt_str("MQTT") + bytes([version, 0x02 if clean else 0])
    body += struct.pack("!H", keepalive)
    if version == V5:
        body += b"\x00"   # no properties
    return frame(0x10, body + mqtt_str(client_id))


def publish_pkt(topic: str | bytes, payload: bytes, version: int = V5, qos: int = 0,
                pid: int = 1, retain: bool = False) -> bytes:
    body = mqtt_str(topic)
    if qos:
        body += struct.pack("!H", pid)
    if version == V5:
        body += b"\x00"
    return frame(0x30 | (qos << 1) | int(retain), body + payload)


def subscribe_pkt(pid: int, topic_filter: str, qos: int, version: int = V5) -> bytes:
    body = struct.pack("!H", pid) + (b"\x00" if version == V5 else b"")
    return frame(0x82, body + mqtt_str(topic_filter) + bytes([qos]))


class Closed(Exception):
    pass


class Raw:
    """A TCP socket speaking hand-encoded MQTT."""

    def __init__(self, port: int, version: int = V5) -> None:
        self.version = version
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=WAIT)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = bytearray()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def _take(self) -> tuple[int, int, bytes] | None:
        buf = self.buf
        length, shift, i = 0, 0, 1
        while True:
            if i >= len(buf):
                return None
            length |= (buf[i] & 0x7F) << shift
            shift += 7
            i += 1
            if not buf[i - 1] & 0x80:
                break
        if len(buf) < i + length:
            return None
        first, body = buf[0], bytes(buf[i:i + length])
        del buf[:i + length]
        return first >> 4, first & 0x0F, body

    def recv(self, timeout: float = WAIT) -> tuple[int, int, bytes]:
        """(type, flags, body) of the next packet; TimeoutError, or Closed at end of stream."""
        deadline = time.monotonic() + timeout
        while (pkt := self._take()) is None:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"nothing from the broker within {timeout}s")
            self.sock.settimeout(remaining)
            try:
                data = self.sock.recv(65536)
            except TimeoutError:
                continue
            except OSError as exc:   # reset by the broker
                raise Closed(str(exc)) from exc
            if not data:
                raise Closed("end of stream")
            self.buf += data
        return pkt

    def connect(self, client_id: str | None = None, keepalive: int = 60) -> bytes:
        """CONNECT and expect a successful CONNACK; returns the CONNACK body."""
        self.send(connect_pkt(client_id or uid("raw"), self.version, keepalive))
        kind, _, body = self.recv()
        assert kind == CONNACK and body[1] == 0, (kind, body)
        return body

    def subscribe(self, topic_filter: str, qos: int = 0, pid: int = 1) -> None:
        self.send(subscribe_pkt(pid, topic_filter, qos, self.version))
        kind, _, body = self.recv()
        assert kind == SUBACK and body[-1] == qos, (kind, body)

    def closed_within(self, timeout: float) -> list[tuple[int, int, bytes]]:
        """Wait for the broker to close the connection; the packets it sent before that.
        Fails if it is still open after `timeout` seconds."""
        deadline = time.monotonic() + timeout
        seen = []
        while True:
            try:
                seen.append(self.recv(max(0.0, deadline - time.monotonic())))
            except Closed:
                return seen
            except TimeoutError:
                raise AssertionError(f"still open after {timeout}s, got {seen}") from None

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()


def disconnect_reason(packets: list[tuple[int, int, bytes]]) -> int | None:
    """The reason code of the DISCONNECT among `packets` (0 for an empty one), or None."""
    for kind, _, body in packets:
        if kind == DISCONNECT:
            return body[0] if body else 0
    return None


def connack_property(body: bytes, ident: int) -> int | None:
    """A four-byte integer property (e.g. 0x27 Maximum Packet Size) of a v5 CONNACK body."""
    pos, shift, length = 2, 0, 0
    while True:
        byte = body[pos]
        length |= (byte & 0x7F) << shift
        shift += 7
        pos += 1
        if not byte & 0x80:
            break
    end = pos + length
    sizes = {0x11: 4, 0x21: 2, 0x22: 2, 0x24: 1, 0x25: 1, 0x27: 4, 0x28: 1, 0x29: 1, 0x2A: 1,
             0x13: 2}
    while pos < end:
        prop = body[pos]
        pos += 1
        if prop in sizes:
            value = int.from_bytes(body[pos:pos + sizes[prop]], "big")
            if prop == ident:
                return value
            pos += sizes[prop]
        elif prop in (0x12, 0x1A, 0x1C, 0x1F):   # UTF-8 strings
            pos += 2 + int.from_bytes(body[pos:pos + 2], "big")
        elif prop == 0x26:                       # user property: two strings
            for _ in range(2):
                pos += 2 + int.from_bytes(body[pos:pos + 2], "big")
        else:
            raise AssertionError(f"unexpected CONNACK property {prop:#x}")
    return None


# ====================================================================== well-behaved client


class Peer:
    """A paho client doing request/response round trips against itself or another one."""

    def __init__(self, port: int, version: int = V5, client_id: str | None = None) -> None:
        protocol = paho.MQTTv5 if version == V5 else paho.MQTTv311
        self.paho = paho.Client(CallbackAPIVersion.VERSION2, client_id=client_id or uid("peer"),
                                protocol=protocol, reconnect_on_failure=False)
        self._cond = threading.Condition()
        self.connected = False
        self.gone = False
        self.subacks: set[int] = set()
        self.acked: set[int] = set()
        self.received: list[tuple[str, bytes]] = []
        self.on_message: Callable[[paho.MQTTMessage], None] | None = None
        p = self.paho
        p.on_connect = lambda c, u, f, rc, pr: self._set(connected=not rc.is_failure)
        p.on_disconnect = lambda c, u, f, rc, pr: self._set(gone=True)
        p.on_subscribe = lambda c, u, mid, rcs, pr: self._add(self.subacks, mid)
        p.on_publish = lambda c, u, mid, rc, pr: self._add(self.acked, mid)
        p.on_message = self._message
        p.connect("127.0.0.1", port, keepalive=60)
        p.loop_start()
        assert self.wait(lambda: self.connected or self.gone), "no CONNACK"
        assert self.connected

    def _set(self, **values: bool) -> None:
        with self._cond:
            for name, value in values.items():
                setattr(self, name, value)
            self._cond.notify_all()

    def _add(self, target: set[int], mid: int) -> None:
        with self._cond:
            target.add(mid)
            self._cond.notify_all()

    def _message(self, client, userdata, msg: paho.MQTTMessage) -> None:
        if self.on_message is not None:
            self.on_message(msg)
        with self._cond:
            self.received.append((msg.topic, msg.payload))
            self._cond.notify_all()

    def wait(self, predicate: Callable[[], bool], timeout: float = WAIT) -> bool:
        with self._cond:
            return self._cond.wait_for(predicate, timeout)

    def subscribe(self, topic_filter: str, qos: int = 1) -> None:
        _, mid = self.paho.subscribe(topic_filter, qos)
        assert self.wait(lambda: mid in self.subacks), "no SUBACK"

    def round_trip(self, topic: str, payload: bytes, timeout: float = WAIT) -> float:
        """Publish QoS 1 and wait for the PUBACK and for `payload` to come back (on any
        subscribed topic); the time it took."""
        start = time.monotonic()
        info = self.paho.publish(topic, payload, qos=1)
        assert self.wait(lambda: info.mid in self.acked and
                         any(p == payload for _, p in self.received[-50:]), timeout), \
            f"round trip of {payload!r} not completed within {timeout}s"
        return time.monotonic() - start

    def close(self) -> None:
        if self.connected and not self.gone:
            self.paho.disconnect()
            self.wait(lambda: self.gone, 3)
        self.paho.loop_stop()


class Chatter(threading.Thread):
    """A client that keeps doing round trips in the background until stopped."""

    def __init__(self, port: int) -> None:
        super().__init__(daemon=True)
        self.peer = Peer(port)
        self.topic = uid("chat") + "/echo"
        self.peer.subscribe(self.topic, 1)
        self.trips = 0
        self.error: BaseException | None = None
        self._stop_event = threading.Event()

    def run(self) -> None:
        try:
            while not self._stop_event.is_set():
                self.peer.round_trip(self.topic, b"trip-%d" % self.trips)
                self.trips += 1
        except BaseException as exc:  # reported by finish()
            self.error = exc

    def finish(self, more: int = 3) -> None:
        """Let it make `more` round trips from now, then stop it; fail if any failed."""
        target = self.trips + more
        deadline = time.monotonic() + WAIT
        while self.trips < target and self.error is None and self.is_alive() \
                and time.monotonic() < deadline:
            time.sleep(0.01)
        self._stop_event.set()
        self.join(WAIT + 1)
        self.peer.close()
        assert self.error is None, f"the well-behaved client failed: {self.error}"
        assert self.trips >= target, f"only {self.trips} round trips, wanted {target}"


# ====================================================================== fixtures, health

ROBUST_CONFIG = """\
[mqtt]
max_packet_size = 1024
connect_timeout = 1
sys_interval = 1
"""


def start_broker(tmp_path: Path, config: str, name: str = "state") -> BrokerProcess:
    return BrokerProcess(tmp_path / name, config=config).start()


@pytest.fixture
def gw(tmp_path: Path) -> Iterator[BrokerProcess]:
    b = start_broker(tmp_path, ROBUST_CONFIG)
    yield b
    b.stop()


@pytest.fixture
def raws() -> Iterator[Callable[..., Raw]]:
    made: list[Raw] = []

    def make(port: int, version: int = V5) -> Raw:
        r = Raw(port, version)
        made.append(r)
        return r

    yield make
    for r in made:
        r.close()


def lichen_status(state_dir: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "gateway.cli", "status", "--state-dir",
                           str(state_dir), "--json"], cwd=ROOT, capture_output=True, text=True,
                          timeout=10, env=dict(os.environ, PYTHONPATH=str(ROOT)))


def assert_healthy(broker: BrokerProcess) -> None:
    """The process is alive, `lichen status` says it runs, and a new client gets through."""
    assert broker.proc is not None and broker.proc.poll() is None, \
        f"the broker process died:\n{broker.log()[-3000:]}"
    result = lichen_status(broker.state_dir)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["state"] == "running"
    peer = Peer(broker.port)
    try:
        peer.subscribe("health/" + uid("h"), 1)
    finally:
        peer.close()
    assert "Traceback" not in broker.log(), broker.log()[-3000:]


# ====================================================================== garbage and malformed


def garbage_cases() -> list[bytes]:
    """Byte strings that are not a usable CONNECT, each complete enough to be judged."""
    http = (b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nUser-Agent: curl/8.0\r\n"
            b"Accept: */*\r\nConnection: keep-alive\r\n\r\n")
    cases = [
        http,
        b"\x00" * 64,                                   # reserved packet type 0
        b"\x10\xff\xff\xff\xff\x7f",                    # five-byte remaining length
        b"\xf0\x00",                                    # AUTH before CONNECT
        b"\x30\x05\x00\x01a\x00\x00",                   # PUBLISH before CONNECT
        b"\x10\x0c\x00\x04MQTX\x04\x02\x00\x3c\x00\x00",  # wrong protocol name
        b"\x16\x00",                                    # CONNECT with flags, no body
        b"\x16\x03GET",                                 # TLS-record-looking bytes
        b"\x10\x7f" + bytes(range(127)),                # CONNECT whose body is nonsense
    ]
    rng = random.Random(1883)
    for _ in range(40):
        first = rng.choice([t << 4 | f for t in range(16) for f in range(16) if t != 1])
        body = bytes(rng.randrange(256) for _ in range(rng.randrange(128)))
        cases.append(bytes([first, len(body)]) + body)
    for _ in range(10):   # a CONNECT header, then random bytes for its body
        body = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 128)))
        cases.append(bytes([0x10, len(body)]) + body)
    return cases


def test_garbage_before_connect_is_closed_without_harming_others(gw: BrokerProcess,
                                                                  raws) -> None:
    chatter = Chatter(gw.port)
    chatter.start()
    for i, data in enumerate(garbage_cases()):
        r = raws(gw.port)
        r.send(data)
        seen = r.closed_within(WAIT)
        assert all(kind == CONNACK for kind, _, _ in seen), f"case {i} {data[:20]!r}: {seen}"
        assert all(body[1] != 0 for _, _, body in seen), f"case {i} {data[:20]!r} accepted"
    # Many at once, interleaved with the chatter's traffic.
    batch = [raws(gw.port) for _ in range(50)]
    for r, data in zip(batch, garbage_cases(), strict=False):
        r.send(data)
    for r in batch:
        r.closed_within(WAIT)
    chatter.finish()
    assert_healthy(gw)


MALFORMED_V5 = {
    "publish QoS 3": frame(0x36, mqtt_str("a/b") + b"\x00\x01\x00"),
    "topic runs past the end": frame(0x30, b"\x00\x20a/b\x00"),
    "topic not UTF-8": frame(0x30, mqtt_str(b"a/\xff\xfe") + b"\x00"),
    "properties run past the end": frame(0x30, mqtt_str("a/b") + b"\x10\x01\x01"),
    "remaining length of five bytes": b"\x30\xff\xff\xff\xff\x01",
    "subscribe with wrong fixed-header flags": frame(
        0x80, b"\x00\x01\x00" + mqtt_str("a/b") + b"\x01"),
}


@pytest.mark.parametrize("data", list(MALFORMED_V5.values()), ids=list(MALFORMED_V5))
def test_malformed_packet_after_connect_gets_disconnect_0x81(gw: BrokerProcess, raws,
                                                             data: bytes) -> None:
    other = raws(gw.port)
    other.connect()
    r = raws(gw.port)
    r.connect()
    r.send(data)
    seen = r.closed_within(WAIT)
    assert disconnect_reason(seen) == MALFORMED_PACKET, seen
    # The neighbour is unaffected.
    other.send(b"\xc0\x00")
    assert other.recv()[0] == PINGRESP
    assert_healthy(gw)


def test_malformed_packet_closes_a_v311_connection(gw: BrokerProcess, raws) -> None:
    r = raws(gw.port, V311)
    r.connect()
    r.send(frame(0x36, mqtt_str("a/b") + b"\x00\x01x"))
    assert r.closed_within(WAIT) == []   # 3.1.1 has no DISCONNECT from the server
    assert_healthy(gw)


# ====================================================================== packet size


def sized_publish(total: int, version: int, qos: int = 1) -> bytes:
    """A PUBLISH of exactly `total` bytes on the wire."""
    head = publish_pkt("big/t", b"", version, qos)
    payload_len = total - len(head)
    while len(publish_pkt("big/t", b"x" * payload_len, version, qos)) > total:
        payload_len -= 1
    data = publish_pkt("big/t", b"x" * payload_len, version, qos)
    assert len(data) == total
    return data


def test_connack_advertises_max_packet_size(gw: BrokerProcess, raws) -> None:
    body = raws(gw.port).connect()
    assert connack_property(body, 0x27) == 1024


@pytest.mark.parametrize("version", [V311, V5], ids=["v311", "v5"])
def test_packet_at_the_limit_is_accepted(gw: BrokerProcess, raws, version: int) -> None:
    r = raws(gw.port, version)
    r.connect()
    r.send(sized_publish(1024, version))
    kind, _, body = r.recv()
    assert kind == PUBACK and body[:2] == b"\x00\x01", (kind, body)


@pytest.mark.parametrize("partial", [False, True], ids=["whole", "header-only"])
def test_packet_over_the_limit_gets_disconnect_0x95_in_v5(gw: BrokerProcess, raws,
                                                          partial: bool) -> None:
    """Judged on the declared size: the broker need not wait for the whole packet."""
    r = raws(gw.port, V5)
    r.connect()
    data = sized_publish(1025, V5)
    r.send(data[:50] if partial else data)
    seen = r.closed_within(WAIT)
    assert disconnect_reason(seen) == PACKET_TOO_LARGE, seen
    assert_healthy(gw)


@pytest.mark.parametrize("partial", [False, True], ids=["whole", "header-only"])
def test_packet_over_the_limit_closes_v311(gw: BrokerProcess, raws, partial: bool) -> None:
    r = raws(gw.port, V311)
    r.connect()
    data = sized_publish(1025, V311)
    r.send(data[:50] if partial else data)
    assert r.closed_within(WAIT) == []
    assert_healthy(gw)


def test_huge_declared_length_is_closed_at_once(gw: BrokerProcess, raws) -> None:
    """A 256 MB declared PUBLISH: closed on the header, nothing buffered."""
    r = raws(gw.port, V5)
    r.connect()
    r.send(b"\x30\xff\xff\xff\x7f" + b"\x00\x03a/b")
    start = time.monotonic()
    assert disconnect_reason(r.closed_within(WAIT)) == PACKET_TOO_LARGE
    assert time.monotonic() - start < 2
    assert_healthy(gw)


# ====================================================================== stalls and timeouts


@pytest.mark.parametrize("version", [V311, V5], ids=["v311", "v5"])
def test_client_stalled_mid_packet_is_cut_off_by_keepalive(gw: BrokerProcess, raws,
                                                           version: int) -> None:
    chatter = Chatter(gw.port)
    chatter.start()
    r = raws(gw.port, version)
    r.connect(keepalive=1)
    data = publish_pkt("stall/t", b"p" * 200, version)
    r.send(data[:len(data) // 2])
    start = time.monotonic()
    r.closed_within(WAIT)
    elapsed = time.monotonic() - start
    assert elapsed < 3.0, f"a 1 s keepalive was enforced only after {elapsed:.1f}s"
    chatter.finish()
    assert_healthy(gw)


def test_idle_client_within_keepalive_is_kept(gw: BrokerProcess, raws) -> None:
    """The other side of the keepalive: pings every 0.5 s keep a keepalive 1 client on."""
    r = raws(gw.port, V5)
    r.connect(keepalive=1)
    for _ in range(6):
        time.sleep(0.5)   # the client's own pacing, not a wait on the broker
        r.send(b"\xc0\x00")
        assert r.recv()[0] == PINGRESP


@pytest.mark.parametrize("sent", [b"", b"\x10\x10\x00\x04MQ"], ids=["nothing", "half"])
def test_no_connect_within_connect_timeout_is_closed(gw: BrokerProcess, raws,
                                                     sent: bytes) -> None:
    chatter = Chatter(gw.port)
    chatter.start()
    r = raws(gw.port)
    start = time.monotonic()
    if sent:
        r.send(sent)
    assert r.closed_within(WAIT) == []
    elapsed = time.monotonic() - start
    assert 0.8 <= elapsed < 3.0, f"closed after {elapsed:.2f}s with connect_timeout = 1"
    chatter.finish()
    assert_healthy(gw)


# ====================================================================== flood


FLOODER = """
import signal, socket, struct, sys, time
signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
port, topic, limit = int(sys.argv[1]), sys.argv[2].encode(), float(sys.argv[3])
s = socket.create_connection(("127.0.0.1", port))
cid = b"flooder"
body = b"\\x00\\x04MQTT\\x05\\x02\\x00\\x3c\\x00" + struct.pack("!H", len(cid)) + cid
s.sendall(bytes([0x10, len(body)]) + body)
assert s.recv(64)[0] == 0x20
pub = struct.pack("!H", len(topic)) + topic + b"\\x00" + b"f" * 64
chunk = (bytes([0x30, len(pub)]) + pub) * 1000
print("flooding", flush=True)
sent, end = 0, time.monotonic() + limit
try:
    while time.monotonic() < end:
        s.sendall(chunk)
        sent += 1000
finally:
    print(sent, flush=True)
"""


def round_trips_under_flood(gw: BrokerProcess, raws, duration: float,
                            trip_timeout: float) -> tuple[list[float], int]:
    """Request/response round trips between two paho clients for `duration` seconds while a
    client in another process publishes QoS 0 as fast as its socket takes them.

    Returns the round-trip times and the number of flood messages sent; fails if the flood
    was not still going when the last round trip finished.
    """
    flood_topic = uid("flood") + "/t"
    # A subscriber to the flood that never reads: the broker must neither buffer without
    # bound for it nor stall on it.
    sink = raws(gw.port, V5)
    sink.connect()
    sink.subscribe(flood_topic, 0)

    responder = Peer(gw.port)
    requester = Peer(gw.port)
    req, resp = uid("req"), uid("resp")
    responder.on_message = lambda m: responder.paho.publish(
        f"{resp}/{m.topic.rsplit('/', 1)[1]}", m.payload, qos=1)
    responder.subscribe(f"{req}/+", 1)
    requester.subscribe(f"{resp}/+", 1)

    limit = duration + trip_timeout + 5
    flooder = subprocess.Popen([sys.executable, "-c", FLOODER, str(gw.port), flood_topic,
                                str(limit)], stdout=subprocess.PIPE, text=True)
    times: list[float] = []
    try:
        assert flooder.stdout.readline().strip() == "flooding"
        time.sleep(0.5)   # let the flood build up
        end = time.monotonic() + duration
        while time.monotonic() < end:
            times.append(requester.round_trip(f"{req}/{len(times)}", b"rq-%d" % len(times),
                                              trip_timeout))
        still_flooding = flooder.poll() is None
    finally:
        flooder.terminate()
        out, _ = flooder.communicate(timeout=WAIT)
        responder.close()
        requester.close()
    sent = int(out.split()[-1]) if out.strip() else 0
    assert still_flooding, "the flood ended before the round trips did"
    assert sent >= 20_000, f"only {sent} flood messages were sent"
    return times, sent


def test_flooding_client_does_not_stop_others_round_trips(gw: BrokerProcess, raws) -> None:
    times, _ = round_trips_under_flood(gw, raws, duration=3, trip_timeout=10)
    assert times, "no round trip completed"
    assert_healthy(gw)


def test_flooding_client_does_not_slow_others_round_trips(gw: BrokerProcess, raws) -> None:
    """Round trips under a flood stay interactive (mosquitto: ~0.1 s on the same host)."""
    times, _ = round_trips_under_flood(gw, raws, duration=6, trip_timeout=10)
    median = sorted(times)[len(times) // 2]
    assert len(times) >= 10 and median < 0.5, \
        f"{len(times)} round trips in 6 s under a flood, median {median:.2f}s"
    assert_healthy(gw)


# ====================================================================== connection limit


def test_max_connections_refuses_the_next_one(tmp_path: Path, raws) -> None:
    b = start_broker(tmp_path, "[mqtt]\nmax_connections = 5\n")
    try:
        five = [raws(b.port) for _ in range(5)]
        for r in five:
            r.connect()
        sixth = raws(b.port)
        with contextlib.suppress(OSError):
            sixth.send(connect_pkt(uid("sixth")))
        seen = sixth.closed_within(WAIT)
        assert all(kind == CONNACK and body[1] != 0 for kind, _, body in seen), seen
        # The five are unaffected...
        for r in five:
            r.send(b"\xc0\x00")
            assert r.recv()[0] == PINGRESP
        # ...and once one leaves there is room again.
        five[0].send(b"\xe0\x00")
        five[0].closed_within(WAIT)
        deadline = time.monotonic() + WAIT
        while True:
            again = raws(b.port)
            try:
                again.connect()
                break
            except (Closed, OSError, AssertionError):
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        assert b.proc.poll() is None
        result = lichen_status(b.state_dir)
        assert result.returncode == 0 and json.loads(result.stdout)["state"] == "running"
    finally:
        b.stop()


# ====================================================================== leaked sessions


def sys_clients_total_snapshot(port: int) -> int:
    """$SYS/broker/clients/total as last published before this client connected (its
    retained value), read by a client that is gone again when this returns."""
    r = Raw(port, V311)
    try:
        r.send(connect_pkt(uid("obs"), V311))
        assert r.recv()[0] == CONNACK
        r.send(subscribe_pkt(1, "$SYS/broker/clients/total", 0, V311))
        while True:
            kind, flags, body = r.recv()
            if kind == PUBLISH:
                assert flags & 0x01, "expected the retained value first"
                tlen = int.from_bytes(body[:2], "big")
                return int(body[2 + tlen:])
    finally:
        with contextlib.suppress(OSError):
            r.send(b"\xe0\x00")
        r.close()


def abrupt_clients(port: int, rounds: int) -> None:
    """Clean-session clients that go away in every rude way there is."""
    def rst(s: socket.socket) -> None:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        s.close()

    for i in range(rounds):
        version = V5 if i % 2 else V311
        # 1. connected, then the socket just closes (FIN, no DISCONNECT)
        r = Raw(port, version)
        r.connect()
        r.close()
        # 2. connected and subscribed, then reset
        r = Raw(port, version)
        r.connect()
        r.subscribe(f"leak/{i}/#", 1)
        rst(r.sock)
        # 3. CONNECT sent, gone before the CONNACK is read
        r = Raw(port, version)
        r.send(connect_pkt(uid("gone"), version))
        rst(r.sock)
        # 4. connected, half a PUBLISH, then reset
        r = Raw(port, version)
        r.connect()
        r.send(publish_pkt("leak/t", b"x" * 100, version, 1)[:30])
        rst(r.sock)
        # 5. two connections take the same client id in turn, both dropped
        cid = uid("twin")
        a, b = Raw(port, version), Raw(port, version)
        a.connect(cid)
        b.connect(cid)
        a.close()
        rst(b.sock)
        # 6. a QoS 1 message in flight to it when it vanishes
        r = Raw(port, version)
        r.connect()
        r.subscribe(f"leak/{i}/q", 1)
        r.send(publish_pkt(f"leak/{i}/q", b"y", version, 1, pid=7))
        rst(r.sock)


def test_abrupt_disconnects_leave_no_sessions(gw: BrokerProcess) -> None:
    # The figure is live: with 10 clients connected it counts them.
    held = [Raw(gw.port) for _ in range(10)]
    try:
        for r in held:
            r.connect()
        deadline = time.monotonic() + 10
        while sys_clients_total_snapshot(gw.port) < 10:
            assert time.monotonic() < deadline, "$SYS clients/total never counted 10"
            time.sleep(0.5)
    finally:
        for r in held:
            r.close()

    abrupt_clients(gw.port, 40)

    # Poll the snapshot: each read's own connection is gone before the next $SYS tick.
    deadline = time.monotonic() + 10
    values = []
    while True:
        values.append(sys_clients_total_snapshot(gw.port))
        if values[-1] == 0:
            break
        assert time.monotonic() < deadline, f"clients/total stays at {values[-5:]}: leaked"
        time.sleep(1.2)
    status = json.loads(lichen_status(gw.state_dir).stdout)
    assert status["state"] == "running"
    assert_healthy(gw)
