"""Greengrass discovery (GET /greengrass/discover/thing/NAME) against a real gateway process,
with certificates from `lichen device add`, a real HTTPS client and real MQTT over TLS."""

from __future__ import annotations

import asyncio
import http.client
import ipaddress
import json
import queue
import socket
import ssl
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from gateway.auth import discovery
from gateway.auth.discovery import BadRequest, DiscoveryServer, parse_request
from gateway.auth.service import DeviceAuth
from gateway.config import GatewayConfig
from tests.certs import LocalCA
from tests.conftest import ROOT, BrokerProcess, free_port

DISCOVER = "/greengrass/discover/thing/"
WAIT = 5.0


def lichen(*args: str) -> str:
    result = subprocess.run([sys.executable, "-m", "gateway.cli", *args], cwd=ROOT,
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    return result.stdout


def start_gateway(tmp_path: Path, config: str | None = None,
                  extra_args: list[str] | None = None) -> BrokerProcess:
    state = tmp_path / "state"
    lichen("init", "--state-dir", str(state))
    gw = BrokerProcess(state, config=config, extra_args=extra_args)
    gw.start()
    gw.dir = tmp_path
    gw.ca_pem = tmp_path / "ca.pem"
    gw.ca_pem.write_text(lichen("ca", "show", "--state-dir", str(state)))
    wait_log(gw, "gateway ready")
    return gw


@pytest.fixture
def gw(tmp_path):
    b = start_gateway(tmp_path)
    yield b
    b.stop()


@pytest.fixture(scope="module")
def shared_gw(tmp_path_factory):
    """One gateway for the many malformed-request cases: each must leave it serving."""
    b = start_gateway(tmp_path_factory.mktemp("shared"))
    yield b
    b.stop()


def add_device(gw: BrokerProcess, thing: str) -> tuple[Path, Path]:
    cert, key = gw.dir / f"{thing}.crt", gw.dir / f"{thing}.key"
    lichen("device", "add", thing, "--state-dir", str(gw.state_dir), "--cert-out", str(cert),
           "--key-out", str(key))
    return cert, key


def wait_log(gw: BrokerProcess, text: str, timeout: float = WAIT) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        log = gw.log()
        if text in log:
            return log
        time.sleep(0.05)
    raise AssertionError(f"{text!r} not in the gateway log:\n{gw.log()[-3000:]}")


def client_context(gw: BrokerProcess, cert: Path | None = None,
                   key: Path | None = None) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(gw.ca_pem))
    if cert is not None:
        ctx.load_cert_chain(str(cert), str(key))
    return ctx


def https(gw: BrokerProcess, path: str, cert: Path | None = None, key: Path | None = None,
          method: str = "GET", body: bytes | None = None) -> http.client.HTTPResponse:
    """One request; the response with its body already read into `.data`."""
    conn = http.client.HTTPSConnection("127.0.0.1", gw.discovery_port,
                                       context=client_context(gw, cert, key), timeout=WAIT)
    try:
        conn.request(method, path, body=body)
        resp = conn.getresponse()
        resp.data = resp.read()
        return resp
    finally:
        conn.close()


def raw_request(gw: BrokerProcess, data: bytes, cert: Path, key: Path) -> bytes:
    """Send bytes over mutual TLS as they are; everything the gateway answers until it
    closes."""
    ctx = client_context(gw, cert, key)
    deadline = time.monotonic() + WAIT
    with socket.create_connection(("127.0.0.1", gw.discovery_port), timeout=WAIT) as sock, \
            ctx.wrap_socket(sock, server_hostname="127.0.0.1") as tls:
        tls.sendall(data)
        answer = b""
        while time.monotonic() < deadline:
            try:
                chunk = tls.recv(65536)
            except (ConnectionResetError, ssl.SSLError):
                break
            if not chunk:
                break
            answer += chunk
        return answer


def assert_error(resp: http.client.HTTPResponse, status: int, error_type: str) -> dict:
    assert resp.status == status, resp.data
    assert resp.getheader("Content-Type") == "application/json"
    assert resp.getheader("Connection") == "close"
    assert resp.getheader("x-amzn-ErrorType") == error_type
    body = json.loads(resp.data)
    assert set(body) == {"message", "traceId"} and body["message"]
    return body


class MQTTDevice:
    """A paho client over mutual TLS that records what it receives."""

    def __init__(self, client_id: str, ca: Path, cert: Path, key: Path) -> None:
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id,
                                  protocol=mqtt.MQTTv5)
        self.client.tls_set(ca_certs=str(ca), certfile=str(cert), keyfile=str(key))
        self.client.connect_timeout = 3.0
        self.connack: queue.Queue = queue.Queue()
        self.inbox: queue.Queue = queue.Queue()
        self.subacks: queue.Queue = queue.Queue()
        self.client.on_connect = lambda _c, _u, _f, reason, _p: self.connack.put(reason.value)
        self.client.on_message = lambda _c, _u, m: self.inbox.put(m)
        self.client.on_subscribe = lambda _c, _u, _m, reasons, _p: self.subacks.put(
            [r.value for r in reasons])

    def connect(self, host: str, port: int) -> int | None:
        try:
            self.client.connect(host, port, 30)
        except (OSError, ValueError):
            return None
        self.client.loop_start()
        try:
            return self.connack.get(timeout=WAIT)
        except queue.Empty:
            self.client.loop_stop()
            return None

    def round_trip(self, topic: str, payload: bytes) -> bytes:
        self.client.subscribe(topic, 1)
        assert self.subacks.get(timeout=WAIT) == [1]
        self.client.publish(topic, payload, qos=1).wait_for_publish(WAIT)
        return self.inbox.get(timeout=WAIT).payload

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def healthy(gw: BrokerProcess) -> None:
    """The gateway still serves MQTT over TLS to an enrolled device."""
    thing = f"probe-{time.monotonic_ns()}"
    cert, key = add_device(gw, thing)
    d = MQTTDevice(thing, gw.ca_pem, cert, key)
    assert d.connect("127.0.0.1", gw.tls_port) == 0
    assert d.round_trip(f"things/{thing}/ping", b"pong") == b"pong"
    d.close()


def connect_as_discovered(document: dict, thing: str, cert: Path, key: Path,
                          workdir: Path) -> tuple[MQTTDevice, str]:
    """What a Greengrass client device does with the answer: trust the group CA, try the
    core's addresses in order, keep the first that connects."""
    group = document["GGGroups"][0]
    ca_file = workdir / f"{thing}-group-ca.pem"
    ca_file.write_text("".join(group["CAs"]))
    tried = []
    for core in group["Cores"]:
        for entry in core["Connectivity"]:
            d = MQTTDevice(thing, ca_file, cert, key)
            code = d.connect(entry["HostAddress"], entry["PortNumber"])
            if code == 0:
                return d, entry["HostAddress"]
            tried.append((entry["HostAddress"], code))
    raise AssertionError(f"no advertised address worked: {tried}")


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


# ---------------------------------------------------------------------------- tests


def test_device_discovers_the_core_and_connects_with_what_it_got(gw):
    cert, key = add_device(gw, "sensor-d")
    resp = https(gw, DISCOVER + "sensor-d", cert, key)
    assert resp.status == 200, resp.data
    assert resp.getheader("Content-Type") == "application/json"
    assert resp.getheader("Connection") == "close"
    doc = json.loads(resp.data)
    assert list(doc) == ["GGGroups"] and len(doc["GGGroups"]) == 1
    group = doc["GGGroups"][0]
    assert set(group) == {"GGGroupId", "Cores", "CAs"}
    assert group["GGGroupId"]
    assert group["CAs"] == [gw.ca_pem.read_text()]
    [core] = group["Cores"]
    assert core["thingArn"].startswith("arn:aws:iot:local:000000000000:thing/")
    entries = core["Connectivity"]
    assert entries and all(set(e) == {"Id", "HostAddress", "PortNumber", "Metadata"}
                           for e in entries)
    assert {e["PortNumber"] for e in entries} == {gw.tls_port}
    hosts = [e["HostAddress"] for e in entries]
    assert "127.0.0.1" in hosts
    loopback = [_is_loopback(h) for h in hosts]
    assert loopback == sorted(loopback), f"loopback addresses must come last: {hosts}"
    wait_log(gw, "discovery for thing sensor-d from 127.0.0.1")
    # the same answer again (stable group id), then the device uses it
    assert json.loads(https(gw, DISCOVER + "sensor-d", cert, key).data) == doc
    d, host = connect_as_discovered(doc, "sensor-d", cert, key, gw.dir)
    assert d.round_trip("things/sensor-d/temp", b"21.5") == b"21.5", host
    d.close()


def test_configured_core_group_and_addresses(tmp_path):
    config = ('[auth]\nregion = "eu-west-1"\naccount = "123456789012"\n'
              '[discovery]\ncore_thing_name = "edge-core-1"\ngroup_id = "plant-7"\n'
              'host_addresses = ["127.0.0.1", "localhost"]\n')
    gw = start_gateway(tmp_path, config=config)
    try:
        cert, key = add_device(gw, "valve-3")
        resp = https(gw, DISCOVER + "valve-3", cert, key)
        assert resp.status == 200, resp.data
        group = json.loads(resp.data)["GGGroups"][0]
        assert group["GGGroupId"] == "plant-7"
        [core] = group["Cores"]
        assert core["thingArn"] == "arn:aws:iot:eu-west-1:123456789012:thing/edge-core-1"
        assert [(e["HostAddress"], e["PortNumber"]) for e in core["Connectivity"]] == \
            [("127.0.0.1", gw.tls_port), ("localhost", gw.tls_port)]
        d, host = connect_as_discovered({"GGGroups": [group]}, "valve-3", cert, key, tmp_path)
        assert host == "127.0.0.1"
        assert d.round_trip("things/valve-3/open", b"1") == b"1"
        d.close()
    finally:
        gw.stop()


def test_certificate_of_another_thing_is_forbidden(gw):
    cert, key = add_device(gw, "thing-a")
    add_device(gw, "thing-b")
    body = assert_error(https(gw, DISCOVER + "thing-b", cert, key), 403, "ForbiddenException")
    wait_log(gw, "refused discovery for thing 'thing-b' from 127.0.0.1")
    log = wait_log(gw, "belongs to thing 'thing-a'")
    assert body["traceId"] in log
    assert https(gw, DISCOVER + "thing-a", cert, key).status == 200
    healthy(gw)


def test_no_client_certificate_is_refused_in_the_handshake(gw):
    with pytest.raises((ssl.SSLError, OSError)):
        https(gw, DISCOVER + "anyone")
    wait_log(gw, "refused discovery TLS connection from 127.0.0.1")
    wait_log(gw, "no client certificate presented")
    healthy(gw)


def test_certificate_from_another_ca_is_refused_in_the_handshake(gw):
    other = LocalCA(gw.dir / "other", "Other CA").issue("sensor-x")
    with pytest.raises((ssl.SSLError, OSError)):
        https(gw, DISCOVER + "sensor-x", other.cert, other.key)
    wait_log(gw, "client certificate rejected")
    healthy(gw)


def test_revoked_certificate_is_forbidden(gw):
    cert, key = add_device(gw, "sensor-r")
    assert https(gw, DISCOVER + "sensor-r", cert, key).status == 200
    lichen("device", "revoke", "sensor-r", "--state-dir", str(gw.state_dir))
    assert_error(https(gw, DISCOVER + "sensor-r", cert, key), 403, "ForbiddenException")
    wait_log(gw, "refused discovery for thing 'sensor-r'")
    wait_log(gw, "is revoked")
    healthy(gw)


def test_removed_thing_is_forbidden(gw):
    cert, key = add_device(gw, "sensor-gone")
    lichen("device", "remove", "sensor-gone", "--state-dir", str(gw.state_dir))
    assert_error(https(gw, DISCOVER + "sensor-gone", cert, key), 403, "ForbiddenException")
    healthy(gw)


def test_unknown_path_is_404_and_other_methods_405(gw):
    cert, key = add_device(gw, "sensor-p")
    for path in ("/", "/greengrass/discover/thing/", "/greengrass/discover/thing/sensor-p/x",
                 "/greengrass/discover/things/sensor-p"):
        assert_error(https(gw, path, cert, key), 404, "NotFoundException")
    for method in ("POST", "PUT", "DELETE", "HEAD"):
        resp = https(gw, DISCOVER + "sensor-p", cert, key, method=method,
                     body=b'{"x": 1}' if method in ("POST", "PUT") else None)
        assert resp.status == 405, (method, resp.data)
        assert resp.getheader("Allow") == "GET"
        if method == "HEAD":
            assert resp.data == b""
        else:
            assert_error(resp, 405, "MethodNotAllowedException")
    # a query string does not change the resource
    assert https(gw, DISCOVER + "sensor-p?x=1", cert, key).status == 200
    healthy(gw)


@pytest.mark.parametrize("request_bytes", [
    b"GARBAGE\r\n\r\n",
    b"\x00\x01\x02\x03\r\n\r\n",
    b"GET /greengrass/discover/thing/sensor-g HTTP/1.1\r\n\r\n",               # no Host
    b"GET /greengrass/discover/thing/sensor-g HTTP/1.1\nHost: x\n\n",         # bare LF
    b"GET /greengrass/discover/thing/sensor-g HTTP/2.0\r\nHost: x\r\n\r\n",
    b"GET  /greengrass/discover/thing/sensor-g HTTP/1.1\r\nHost: x\r\n\r\n",
    b"GET http://x/greengrass/discover/thing/sensor-g HTTP/1.1\r\nHost: x\r\n\r\n",
    b"GET /greengrass/discover/thing/sensor-g HTTP/1.1\r\nHost: x\r\n folded\r\n\r\n",
    b"GET /greengrass/discover/thing/sensor-g HTTP/1.1\r\nHost x\r\n\r\n",
    b"GET /greengrass/discover/thing/sensor-g HTTP/1.1\r\nHost: x\r\nHost: y\r\n\r\n",
    b"GET /greengrass/discover/thing/sensor-g HTTP/1.1\r\nHost: x\r\n"
    b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    b"GET /greengrass/discover/thing/sensor-g HTTP/1.1\r\nHost: x\r\n"
    b"Content-Length: 3\r\n\r\nabc",
    b"GET /greengrass/discover/thing/sensor-g HTTP/1.1\r\nHost: x\r\n"
    b"Content-Length: -1\r\n\r\n",
    b"GET /greengrass/discover/thing/bad.name HTTP/1.1\r\nHost: x\r\n\r\n",
    b"GET /" + b"a" * 5000 + b" HTTP/1.1\r\nHost: x\r\n\r\n",                 # long line
    b"GET /greengrass/discover/thing/sensor-g HTTP/1.1\r\nHost: x\r\n"
    + b"X-Padding: " + b"p" * 20000 + b"\r\n\r\n",                           # huge header
    b"GET /greengrass/discover/thing/sensor-g HTTP/1.1\r\nHost: x\r\n"
    + b"".join(b"X-%d: 1\r\n" % i for i in range(60)) + b"\r\n",              # too many
], ids=["garbage", "binary", "no-host", "bare-lf", "http2", "double-space",
        "absolute-form", "obs-fold", "no-colon", "two-hosts", "chunked", "body",
        "bad-length", "bad-thing-name", "long-line", "huge-header", "many-headers"])
def test_malformed_requests_get_400_and_close(shared_gw, request_bytes):
    gw = shared_gw
    cert, key = gw.dir / "sensor-g.crt", gw.dir / "sensor-g.key"
    if not cert.exists():
        add_device(gw, "sensor-g")
    answer = raw_request(gw, request_bytes, cert, key)
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400 Bad Request\r\n"), answer[:300]
    assert b"\r\nConnection: close" in head
    assert json.loads(body)["message"]
    # and a well-formed request on a new connection is answered
    good = raw_request(gw, b"GET /greengrass/discover/thing/sensor-g HTTP/1.1\r\n"
                           b"Host: 127.0.0.1\r\n\r\n", cert, key)
    assert good.startswith(b"HTTP/1.1 200 OK\r\n"), good[:300]
    healthy(gw)


def test_head_answer_has_no_body(gw):
    cert, key = add_device(gw, "sensor-h")
    answer = raw_request(gw, b"HEAD /greengrass/discover/thing/sensor-h HTTP/1.1\r\n"
                             b"Host: x\r\n\r\n", cert, key)
    head, sep, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 405 ") and sep and body == b"", answer


def test_http_1_0_and_percent_encoded_thing_name(gw):
    cert, key = add_device(gw, "site:dev_1")
    answer = raw_request(gw, b"GET /greengrass/discover/thing/site%3Adev_1 HTTP/1.0\r\n\r\n",
                         cert, key)
    assert answer.startswith(b"HTTP/1.1 200 OK\r\n"), answer[:300]
    assert json.loads(answer.partition(b"\r\n\r\n")[2])["GGGroups"]


def test_plain_http_on_the_discovery_port_is_refused(gw):
    with socket.create_connection(("127.0.0.1", gw.discovery_port), timeout=WAIT) as sock:
        sock.sendall(b"GET /greengrass/discover/thing/x HTTP/1.1\r\nHost: x\r\n\r\n")
        sock.settimeout(WAIT)
        try:
            data = sock.recv(4096)
        except ConnectionResetError:
            data = b""
    assert not data.startswith(b"HTTP/")
    wait_log(gw, "refused discovery TLS connection")
    healthy(gw)


def test_mqtt_keeps_serving_while_discovery_is_used_and_abused(gw):
    cert, key = add_device(gw, "steady-1")
    d = MQTTDevice("steady-1", gw.ca_pem, cert, key)
    assert d.connect("127.0.0.1", gw.tls_port) == 0
    d.client.subscribe("things/steady-1/#", 1)
    assert d.subacks.get(timeout=WAIT) == [1]
    # idle and half-finished connections do not block anyone
    idle = [socket.create_connection(("127.0.0.1", gw.discovery_port), timeout=WAIT)
            for _ in range(5)]
    try:
        for i in range(10):
            assert https(gw, DISCOVER + "steady-1", cert, key).status == 200
            raw_request(gw, b"NONSENSE\r\n\r\n", cert, key)
            d.client.publish(f"things/steady-1/n{i}", str(i).encode(), qos=1)
            assert d.inbox.get(timeout=WAIT).payload == str(i).encode()
    finally:
        for s in idle:
            s.close()
    d.close()
    healthy(gw)


def test_discovery_port_0_turns_it_off(tmp_path):
    gw = start_gateway(tmp_path, extra_args=["--discovery-port", "0"])
    try:
        with pytest.raises(OSError), socket.create_connection(("127.0.0.1",
                                                               gw.discovery_port), timeout=2):
            pass
        assert "listening (discovery)" not in gw.log()
        healthy(gw)
    finally:
        gw.stop()


# ---------------------------------------------------------------------------- timeouts


@pytest.fixture
def quick_server(tmp_path, monkeypatch):
    """A DiscoveryServer in this process (on its own loop thread) with a short request
    timeout, so the timeout paths can be seen without waiting the real 10 s."""
    monkeypatch.setattr(discovery, "REQUEST_TIMEOUT", 0.5)
    state = tmp_path / "state"
    lichen("init", "--state-dir", str(state))
    auth = DeviceAuth(state)
    auth.prepare()
    cfg = GatewayConfig()
    cfg.discovery.host, cfg.discovery.port = "127.0.0.1", free_port()
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    server = DiscoveryServer(auth, cfg)
    asyncio.run_coroutine_threadsafe(server.start(), loop).result(WAIT)
    # what add_device and raw_request need to know, as on a BrokerProcess
    where = SimpleNamespace(server=server, dir=tmp_path, state_dir=state,
                            discovery_port=cfg.discovery.port, ca_pem=tmp_path / "ca.pem")
    where.ca_pem.write_bytes(auth.ca.pem())
    yield where
    asyncio.run_coroutine_threadsafe(server.stop(), loop).result(WAIT)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(WAIT)
    loop.close()
    auth.registry.close()


def test_connection_without_a_handshake_is_closed_in_time(quick_server):
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", quick_server.discovery_port),
                                  timeout=WAIT) as sock:
        assert sock.recv(1024) == b""  # closed by the gateway, well before our timeout
    assert time.monotonic() - started < 3
    deadline = time.monotonic() + WAIT
    while quick_server.server.connections and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not quick_server.server.connections


def test_unfinished_request_gets_408_in_time(quick_server):
    cert, key = add_device(quick_server, "slow-1")
    started = time.monotonic()
    answer = raw_request(quick_server, b"GET /greengrass/discover/thing/slow-1 HTTP/1.1\r\n",
                         cert, key)
    assert answer.startswith(b"HTTP/1.1 408 Request Timeout\r\n"), answer[:300]
    assert time.monotonic() - started < 3
    # the server still answers complete requests
    good = raw_request(quick_server, b"GET /greengrass/discover/thing/slow-1 HTTP/1.1\r\n"
                                     b"Host: x\r\n\r\n", cert, key)
    assert good.startswith(b"HTTP/1.1 200 OK\r\n"), good[:300]


# ---------------------------------------------------------------------------- the parser


def test_parse_request_accepts_a_normal_request():
    req = parse_request(b"GET /greengrass/discover/thing/a?b=c HTTP/1.1\r\nHost: gw:8443\r\n"
                        b"Accept: */*\r\nX-Two: 1\r\nx-two: 2")
    assert (req.method, req.target, req.version) == ("GET", "/greengrass/discover/thing/a?b=c",
                                                     "1.1")
    assert req.headers == {"host": "gw:8443", "accept": "*/*", "x-two": "1, 2"}


@pytest.mark.parametrize("head", [
    b"", b"GET / HTTP/1.1", b"get / HTTP/1.1\r\nHost: x", b"GET / HTTP/1.1 \r\nHost: x",
    b"GET / HTTP/1.1\r\nHost: x\r\nBad Name: y", b"GET / HTTP/1.1\r\nHost: x\r\nA: \x01",
    b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 1",
    b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: 1e3", b"GET \xff HTTP/1.1\r\nHost: x",
])
def test_parse_request_rejects(head):
    with pytest.raises(BadRequest):
        parse_request(head)
