"""The shadow service driven only through MQTT (paho-mqtt) against a real gateway process:
classic and named shadows, and the /accepted, /rejected, /delta and /documents payloads AWS
IoT Core publishes."""

from __future__ import annotations

import json
import socket
import struct

import paho.mqtt.client as mqtt
import pytest

from gateway.config import ConfigError, config_from_dict
from tests.conftest import BrokerProcess
from tests.shadow.helpers import Peer, near_now

PREFIX = "$aws/things/lamp/shadow"


@pytest.fixture(scope="module")
def gw(tmp_path_factory):
    b = BrokerProcess(tmp_path_factory.mktemp("shadow") / "state", tls=False).start()
    yield b
    b.stop()


@pytest.fixture
def peer(gw, request):
    p = Peer(gw.port, f"app-{request.node.name}"[:60]).connect()
    yield p
    p.close()


def test_classic_shadow_over_mqtt(peer):
    peer.subscribe(f"{PREFIX}/+/+")
    peer.publish(f"{PREFIX}/get")
    doc = peer.until(f"{PREFIX}/get/rejected")[0]
    assert doc == {"code": 404, "message": "No shadow exists with name: lamp",
                   "timestamp": doc["timestamp"]} and near_now(doc["timestamp"])

    peer.publish(f"{PREFIX}/update", {"state": {"desired": {"color": "RED", "lights": {"r": 1}}},
                                      "clientToken": "u1"})
    (t1, accepted), (t2, delta), (t3, documents) = peer.next(), peer.next(), peer.next()
    assert (t1, t2, t3) == (f"{PREFIX}/update/accepted", f"{PREFIX}/update/delta",
                            f"{PREFIX}/update/documents")
    ts = accepted["timestamp"]
    assert near_now(ts)
    assert accepted == {"state": {"desired": {"color": "RED", "lights": {"r": 1}}},
                        "metadata": {"desired": {"color": {"timestamp": ts},
                                                 "lights": {"r": {"timestamp": ts}}}},
                        "version": 1, "timestamp": ts, "clientToken": "u1"}
    assert delta == {"version": 1, "timestamp": ts, "state": {"color": "RED", "lights": {"r": 1}},
                     "metadata": {"color": {"timestamp": ts}, "lights": {"r": {"timestamp": ts}}},
                     "clientToken": "u1"}
    assert documents == {"previous": None,
                         "current": {"state": accepted["state"],
                                     "metadata": accepted["metadata"], "version": 1},
                         "timestamp": ts, "clientToken": "u1"}

    # the device reports what it was asked: accepted and documents, and no delta
    peer.publish(f"{PREFIX}/update", {"state": {"reported": {"color": "RED", "lights": {"r": 1}}}})
    (t1, accepted), (t2, documents) = peer.next(), peer.next()
    assert (t1, t2) == (f"{PREFIX}/update/accepted", f"{PREFIX}/update/documents")
    assert accepted["version"] == 2 and "clientToken" not in accepted
    assert documents["previous"]["version"] == 1 and documents["current"]["version"] == 2

    peer.publish(f"{PREFIX}/get", {"clientToken": "g1"})
    doc = peer.until(f"{PREFIX}/get/accepted")[0]
    assert doc["state"] == {"desired": {"color": "RED", "lights": {"r": 1}},
                            "reported": {"color": "RED", "lights": {"r": 1}}}
    assert set(doc["metadata"]) == {"desired", "reported"}
    assert (doc["version"], doc["clientToken"]) == (2, "g1")

    peer.publish(f"{PREFIX}/delete", {"clientToken": "d1"})
    doc = peer.until(f"{PREFIX}/delete/accepted")[0]
    assert doc == {"version": 2, "timestamp": doc["timestamp"], "clientToken": "d1"}
    peer.publish(f"{PREFIX}/delete")
    assert peer.until(f"{PREFIX}/delete/rejected")[0]["code"] == 404
    peer.publish(f"{PREFIX}/get")
    assert peer.until(f"{PREFIX}/get/rejected")[0]["code"] == 404
    # a deleted shadow's version carries on
    peer.publish(f"{PREFIX}/update", {"state": {"reported": {"color": "BLUE"}}})
    assert peer.until(f"{PREFIX}/update/accepted")[0]["version"] == 3


def test_named_shadows_over_mqtt(peer):
    base = "$aws/things/pump/shadow"
    peer.subscribe(f"{base}/+/+", f"{base}/name/+/+/+")
    peer.publish(f"{base}/name/config/update", {"state": {"desired": {"rate": 5}},
                                                "clientToken": "n1"})
    accepted = peer.until(f"{base}/name/config/update/accepted")[0]
    assert (accepted["version"], accepted["clientToken"]) == (1, "n1")
    assert peer.until(f"{base}/name/config/update/delta")[0]["state"] == {"rate": 5}
    peer.publish(f"{base}/name/status/update", {"state": {"reported": {"ok": True}}})
    peer.publish(f"{base}/name/status/update", {"state": {"reported": {"ok": False}}})
    peer.until(f"{base}/name/status/update/accepted")
    assert peer.until(f"{base}/name/status/update/accepted")[0]["version"] == 2
    # the classic shadow is a different one
    peer.publish(f"{base}/get")
    assert peer.until(f"{base}/get/rejected")[0]["message"] == "No shadow exists with name: pump"
    peer.publish(f"{base}/name/config/get", {"clientToken": "g"})
    doc = peer.until(f"{base}/name/config/get/accepted")[0]
    assert doc["state"] == {"desired": {"rate": 5}, "delta": {"rate": 5}}
    peer.publish(f"{base}/name/nothing/get")
    assert peer.until(f"{base}/name/nothing/get/rejected")[0]["message"] == \
        "No shadow exists with name: nothing"
    peer.publish(f"{base}/name/config/delete")
    assert peer.until(f"{base}/name/config/delete/accepted")[0]["version"] == 1


DEEP = {"a": {"b": {"c": {"d": {"e": {"f": {"g": 1}}}}}}}


@pytest.mark.parametrize("payload,code,message", [
    (b"{not json", 400, "Invalid JSON"),
    (b"", 400, "Invalid JSON"),
    ({"clientToken": "t"}, 400, "Missing required node: state"),
    ({"state": "on", "clientToken": "t"}, 400, "State node must be an object"),
    ({"state": {"desired": 5}, "clientToken": "t"}, 400, "Desired node must be an object"),
    ({"state": {"reported": [1]}, "clientToken": "t"}, 400, "Reported node must be an object"),
    ({"state": {"delta": {}}, "clientToken": "t"}, 400, "State contains an invalid node"),
    ({"state": {}, "version": "1", "clientToken": "t"}, 400, "Invalid version"),
    ({"state": {}, "clientToken": "x" * 65}, 400, "Invalid clientToken"),
    ({"state": {"desired": DEEP}, "clientToken": "t"}, 400,
     "JSON contains too many levels of nesting; maximum is 6"),
    ({"state": {"reported": {"blob": "x" * 9000}}, "clientToken": "t"}, 413,
     "The payload exceeds the maximum size allowed"),
    (b'{"state": {"reported": {"s": "\xc3\x28"}}, "clientToken": "t"}', 415,
     "Unsupported documented encoding; supported encoding is UTF-8"),
])
def test_bad_updates_are_rejected_with_the_aws_error(peer, payload, code, message):
    topic = "$aws/things/errors/shadow/update"
    peer.subscribe(f"{topic}/+")
    peer.publish(topic, payload)
    doc = peer.until(f"{topic}/rejected")[0]
    expected = {"code": code, "message": message, "timestamp": doc["timestamp"]}
    if isinstance(payload, dict) and payload.get("clientToken") == "t" and code != 415:
        expected["clientToken"] = "t"
    assert doc == expected


def test_version_conflict_and_invalid_names(peer):
    base = "$aws/things/locked/shadow"
    peer.subscribe(f"{base}/update/+", "$aws/things/bad.name/shadow/update/+",
                   "$aws/things/ok/shadow/name/bad name/update/+")
    peer.publish(f"{base}/update", {"state": {"reported": {"a": 1}}})
    peer.until(f"{base}/update/accepted")
    peer.publish(f"{base}/update", {"state": {"reported": {"a": 2}}, "version": 5,
                                    "clientToken": "v5"})
    doc = peer.until(f"{base}/update/rejected")[0]
    assert (doc["code"], doc["message"], doc["clientToken"]) == (409, "Version conflict", "v5")
    peer.publish(f"{base}/update", {"state": {"reported": {"a": 2}}, "version": 1})
    assert peer.until(f"{base}/update/accepted")[0]["version"] == 2
    peer.publish("$aws/things/bad.name/shadow/update", {"state": {}})
    assert peer.until("$aws/things/bad.name/shadow/update/rejected")[0]["code"] == 400
    peer.publish("$aws/things/ok/shadow/name/bad name/update", {"state": {}})
    assert peer.until("$aws/things/ok/shadow/name/bad name/update/rejected")[0]["code"] == 400


def test_replies_reach_every_subscriber_once_and_never_loop(gw, peer):
    base = "$aws/things/shared/shadow"
    other = Peer(gw.port, "watcher").connect()
    try:
        for p in (peer, other):
            p.subscribe(f"{base}/#")
        peer.publish(f"{base}/update", {"state": {"desired": {"x": 1}}})
        peer.publish(f"{base}/get", {"clientToken": "end"})
        for p in (peer, other):
            _, before = p.until(f"{base}/get/accepted")
            assert [t for t, _ in before] == [
                f"{base}/update", f"{base}/update/accepted", f"{base}/update/delta",
                f"{base}/update/documents", f"{base}/get"]
    finally:
        other.close()


def test_mqtt5_clients_are_served(gw):
    p = Peer(gw.port, "v5-app", protocol=mqtt.MQTTv5).connect()
    try:
        base = "$aws/things/five/shadow"
        p.subscribe(f"{base}/update/accepted")
        p.publish(f"{base}/update", {"state": {"reported": {"v": 5}}, "clientToken": "five"})
        assert p.until(f"{base}/update/accepted")[0]["clientToken"] == "five"
    finally:
        p.close()


def _mqtt_string(s: str) -> bytes:
    return struct.pack("!H", len(s.encode())) + s.encode()


def _packet(first: int, body: bytes) -> bytes:
    n, length = len(body), b""
    while True:
        n, digit = divmod(n, 128)
        length += bytes([digit | (0x80 if n else 0)])
        if not n:
            return bytes([first]) + length + body


def test_more_than_ten_requests_in_flight_get_429(gw, peer):
    """AWS IoT: "more than 10 in-flight requests on a single connection" are refused."""
    base = "$aws/things/busy/shadow"
    peer.subscribe(f"{base}/update/accepted", f"{base}/update/rejected")
    burst = b"".join(_packet(0x30, _mqtt_string(f"{base}/update") + json.dumps(
        {"state": {"reported": {"n": i}}, "clientToken": f"b{i}"}).encode()) for i in range(30))
    with socket.create_connection(("127.0.0.1", gw.port), timeout=10) as s:
        s.sendall(_packet(0x10, _mqtt_string("MQTT") + b"\x04\x02\x00\x3c"
                          + _mqtt_string("burster")))
        assert s.recv(4) == b"\x20\x02\x00\x00"
        s.sendall(burst)  # all in one segment: all taken before any is answered
        answers = {}
        while len(answers) < 30:
            topic, doc = peer.next()
            answers[doc["clientToken"]] = (topic.rsplit("/", 1)[1], doc.get("code"))
    refused = [k for k, v in answers.items() if v == ("rejected", 429)]
    accepted = [k for k, v in answers.items() if v[0] == "accepted"]
    assert refused and len(refused) + len(accepted) == 30
    assert len(accepted) >= 10
    assert answers["b0"][0] == "accepted"


def test_shadow_settings_are_validated():
    with pytest.raises(ConfigError, match=r"^shadow.max_depth: must be between 1 and 64, got 0"):
        config_from_dict({"shadow": {"max_depth": 0}})
    with pytest.raises(ConfigError, match="shadow.colour: unknown setting"):
        config_from_dict({"shadow": {"colour": 1}})
    cfg = config_from_dict({"shadow": {"max_document_bytes": 16384, "history_depth": 0}})
    assert (cfg.shadow.max_document_bytes, cfg.shadow.history_depth) == (16384, 0)


def test_settings_reach_the_service(tmp_path):
    config = "[shadow]\nmax_document_bytes = 256\nmax_depth = 2\n"
    gw = BrokerProcess(tmp_path / "state", tls=False, config=config).start()
    p = Peer(gw.port, "small").connect()
    try:
        base = "$aws/things/small/shadow"
        p.subscribe(f"{base}/update/+")
        p.publish(f"{base}/update", {"state": {"reported": {"a": {"b": {"c": 1}}}}})
        assert p.until(f"{base}/update/rejected")[0]["message"] == \
            "JSON contains too many levels of nesting; maximum is 2"
        p.publish(f"{base}/update", {"state": {"reported": {"a": "x" * 300}}})
        assert p.until(f"{base}/update/rejected")[0]["code"] == 413
    finally:
        p.close()
        gw.stop()
