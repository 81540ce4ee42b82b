"""Limits a broker announces in CONNACK (v5) and then enforces: Server Keep Alive,
Maximum Packet Size, Topic Alias Maximum.

These need a broker configured with small limits, so this module starts its own broker per
test, Lichen and mosquitto alike, each configured the same way in its own syntax (except
that mosquitto will not take a max_keepalive below 10 s).
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import MOSQUITTO, BrokerProcess, MosquittoProcess

from .helpers import DISCONNECT, PUBACK, V5, V311, RawClient, SyncClient, parse_ack, unique_id

pytestmark = pytest.mark.timeout(30)

KEEPALIVE = {"lichen": 2, "mosquitto": 10}
PACKET_SIZE = 256

LICHEN_LIMITS = f"""
[mqtt]
max_keepalive = {KEEPALIVE["lichen"]}
max_packet_size = {PACKET_SIZE}
topic_alias_maximum = 0
"""

MOSQUITTO_LIMITS = f"""
max_keepalive {KEEPALIVE["mosquitto"]}
max_packet_size {PACKET_SIZE}
max_topic_alias 0
"""


class LimitedMosquitto(MosquittoProcess):
    def command(self) -> list[str]:
        cmd = super().command()
        conf = self.state_dir / "mosquitto.conf"
        conf.write_text(conf.read_text() + MOSQUITTO_LIMITS)
        return cmd


def _params() -> list[str]:
    params = ["lichen"]
    if MOSQUITTO and os.environ.get("LICHEN_TEST_MOSQUITTO") == "1":
        params.append("mosquitto")
    return params


@pytest.fixture(params=_params())
def limited_broker(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[BrokerProcess]:
    if request.param == "mosquitto":
        b: BrokerProcess = LimitedMosquitto(tmp_path / "state")
    else:
        b = BrokerProcess(tmp_path / "state", config=LICHEN_LIMITS)
    b.start()
    yield b
    b.stop()


@pytest.fixture
def clients(limited_broker) -> Iterator[list]:
    made: list = []
    yield made
    for c in made:
        c.close()


def _paho(limited_broker, clients, **kwargs) -> SyncClient:
    c = SyncClient(limited_broker.host, limited_broker.port, **kwargs)
    clients.append(c)
    return c


def _raw(limited_broker, clients, version: int = V5) -> RawClient:
    r = RawClient(limited_broker.host, limited_broker.port, version)
    clients.append(r)
    return r


def test_server_keep_alive_announced_and_followed_by_paho(limited_broker, clients, topic):
    keepalive = KEEPALIVE[limited_broker.name]
    c = _paho(limited_broker, clients, version=V5, keepalive=60)
    ack = c.connect()
    assert ack.reason_code == 0
    assert ack.props.get("ServerKeepAlive") == keepalive
    c.subscribe(topic, 1)
    # paho now pings at the server's interval; were it still using 60 s, a broker with a
    # 2 s keep alive would drop it after 3 s.
    c.no_message(min(1.5 * keepalive + 1.5, 5))
    assert c.connected
    c.publish(topic, b"still connected", 1)
    assert c.message().payload == b"still connected"


def test_server_keep_alive_enforced(limited_broker, clients):
    keepalive = KEEPALIVE[limited_broker.name]
    if keepalive > 4:
        pytest.skip(f"{limited_broker.name}: keep alive of {keepalive}s too long for this test")
    r = _raw(limited_broker, clients)
    ack = r.connect(unique_id(), keepalive=600)
    assert ack.props.get("ServerKeepAlive") == keepalive
    started = time.monotonic()
    r.wait_closed(timeout=9)  # lenient bound; test_connect checks the 1.5x rule itself
    assert time.monotonic() - started >= keepalive * 0.95


def test_v311_keepalive_above_server_limit(limited_broker, clients):
    """3.1.1 has no Server Keep Alive, so the broker either refuses the connection
    (mosquitto answers 0x02, identifier rejected) or accepts it, and then must not drop the
    client before 1.5 x the keep alive the client asked for."""
    keepalive = KEEPALIVE[limited_broker.name]
    r = _raw(limited_broker, clients, V311)
    ack = r.connect(unique_id(), keepalive=600)
    if ack.code != 0:
        assert ack.code in (0x02, 0x03), ack
        r.wait_closed()
        return
    r.nothing(min(1.5 * keepalive + 1.5, 6))


def test_server_maximum_packet_size_announced_and_enforced(limited_broker, clients, topic):
    watcher = _paho(limited_broker, clients, version=V5)
    watcher.connect()
    watcher.subscribe(topic, 1)
    r = _raw(limited_broker, clients)
    ack = r.connect(unique_id())
    assert ack.props.get("MaximumPacketSize") == PACKET_SIZE
    r.publish(topic, b"ok", qos=1)
    assert parse_ack(r.expect(PUBACK), V5).code in (0x00, 0x10)
    assert watcher.message().payload == b"ok"
    r.publish(topic, b"x" * PACKET_SIZE, qos=1)  # header + topic + payload > limit
    for pkt in r.wait_closed():
        assert pkt.type == DISCONNECT, pkt
        assert parse_ack(pkt, V5).code == 0x95  # Packet too large
    watcher.no_message()


def test_paho_respects_announced_maximum_packet_size(limited_broker, clients, topic):
    """Small messages flow normally under a small server Maximum Packet Size."""
    c = _paho(limited_broker, clients, version=V5)
    c.connect()
    c.subscribe(topic, 1)
    for i in range(5):
        c.publish(topic, f"small {i}".encode(), 1)
    assert [m.payload for m in c.messages(5)] == [f"small {i}".encode() for i in range(5)]


def test_topic_alias_refused_when_maximum_is_zero(limited_broker, clients, topic):
    r = _raw(limited_broker, clients)
    ack = r.connect(unique_id())
    assert ack.props.get("TopicAliasMaximum", 0) == 0
    r.publish(topic, b"x", qos=1, props={"TopicAlias": 1})
    for pkt in r.wait_closed():
        assert pkt.type == DISCONNECT, pkt
        assert parse_ack(pkt, V5).code in (0x94, 0x82), pkt
