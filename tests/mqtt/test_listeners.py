"""Listeners other than plaintext TCP: TLS (with and without client certificates) and the
Unix socket; and the $SYS statistics topics."""

from __future__ import annotations

import queue
import ssl
import threading

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from tests.certs import LocalCA
from tests.conftest import BrokerProcess, free_port


def _connect(c: mqtt.Client, host: str, port: int) -> int:
    result: queue.Queue = queue.Queue()
    c.on_connect = lambda _c, _u, _f, reason, _p: result.put(reason)
    c.on_message = lambda _c, u, m: u.put(m)
    c.connect(host, port, 30)
    c.loop_start()
    return result.get(timeout=5).value


@pytest.fixture
def tls_broker(tmp_path):
    ca = LocalCA(tmp_path / "pki")
    server = ca.issue("localhost", server=True)
    port = free_port()
    config = ("[listeners]\ntls_host = \"127.0.0.1\"\n"
              f"tls_cert_file = \"{server.cert}\"\ntls_key_file = \"{server.key}\"\n"
              f"tls_ca_file = \"{ca.files.cert}\"\n")
    b = BrokerProcess(tmp_path / "state", config=config)
    b.tls_port = port
    b.start()
    b.ca = ca
    yield b
    b.stop()


def test_mutual_tls_round_trip(tls_broker):
    device = tls_broker.ca.issue("thing-1")
    inbox: queue.Queue = queue.Queue()
    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="thing-1", protocol=mqtt.MQTTv5,
                    userdata=inbox)
    c.tls_set(ca_certs=str(tls_broker.ca.files.cert), certfile=str(device.cert),
              keyfile=str(device.key))
    assert _connect(c, "127.0.0.1", tls_broker.tls_port) == 0
    c.subscribe("tls/echo", 1)
    threading.Event().wait(0.2)
    c.publish("tls/echo", b"over tls", qos=1).wait_for_publish(5)
    assert inbox.get(timeout=5).payload == b"over tls"
    c.disconnect()
    c.loop_stop()


def test_tls_without_client_certificate_is_refused(tls_broker):
    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="anon", protocol=mqtt.MQTTv311)
    c.tls_set(ca_certs=str(tls_broker.ca.files.cert))
    with pytest.raises((ssl.SSLError, ConnectionError, OSError)):
        c.connect("127.0.0.1", tls_broker.tls_port, 30)
        # TLS 1.3 reports the missing certificate on the first read
        for _ in range(20):
            rc = c.loop(0.1)
            if rc != mqtt.MQTT_ERR_SUCCESS:
                raise ConnectionError(f"closed: {rc}")
    assert "Traceback" not in tls_broker.log()


def test_unix_socket_listener(tmp_path):
    sock = tmp_path / "gw.sock"
    b = BrokerProcess(tmp_path / "state", config=f"[listeners]\nunix_socket = \"{sock}\"\n")
    b.start()
    try:
        inbox: queue.Queue = queue.Queue()
        c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="local", transport="unix",
                        userdata=inbox)
        assert _connect(c, str(sock), 1) == 0  # port is ignored for unix
        c.subscribe("local/#", 0)
        threading.Event().wait(0.2)
        c.publish("local/x", b"via unix socket", qos=1).wait_for_publish(5)
        assert inbox.get(timeout=5).payload == b"via unix socket"
        assert oct(sock.stat().st_mode & 0o777) == "0o660"
        c.disconnect()
        c.loop_stop()
    finally:
        b.stop()


def test_sys_topics(tmp_path):
    b = BrokerProcess(tmp_path / "state", config="[mqtt]\nsys_interval = 1\n")
    b.start()
    try:
        inbox: queue.Queue = queue.Queue()
        c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="sys-watcher", userdata=inbox)
        assert _connect(c, "127.0.0.1", b.port) == 0
        c.subscribe("$SYS/broker/#", 0)
        seen = {}
        for _ in range(200):
            m = inbox.get(timeout=5)
            seen[m.topic] = m.payload.decode()
            # the retained values may predate this client: wait for a fresh count
            if seen.get("$SYS/broker/clients/connected", "0") != "0" \
                    and "$SYS/broker/version" in seen and "$SYS/broker/messages/received" in seen:
                break
        assert seen["$SYS/broker/version"].startswith("lichen")
        assert int(seen["$SYS/broker/clients/connected"]) >= 1
        # and '#' alone does not match $SYS topics
        c.subscribe("#", 0)
        c.publish("plain/x", b"1")
        while True:
            m = inbox.get(timeout=5)
            if not m.topic.startswith("$SYS/"):
                assert m.topic == "plain/x"
                break
        c.disconnect()
        c.loop_stop()
    finally:
        b.stop()
