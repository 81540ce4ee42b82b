"""Mutual TLS on the device listener, the registry and policies, with real certificates,
real TLS and real paho-mqtt clients against a Lichen process."""

from __future__ import annotations

import datetime as dt
import json
import queue
import subprocess
import sys
import threading
import time
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from paho.mqtt.enums import CallbackAPIVersion

from tests.certs import LocalCA
from tests.conftest import ROOT, BrokerProcess

V5, V311 = mqtt.MQTTv5, mqtt.MQTTv311


def lichen(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run([sys.executable, "-m", "gateway.cli", *args], cwd=ROOT,
                            capture_output=True, text=True, timeout=30)
    if check:
        assert result.returncode == 0, result.stderr
    return result


class Device:
    """A paho client over mutual TLS; records CONNACK, disconnects and messages."""

    def __init__(self, gw: BrokerProcess, client_id: str, cert: Path | None,
                 key: Path | None, protocol: int = V5) -> None:
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id,
                                  protocol=protocol)
        self.client.tls_set(ca_certs=str(gw.ca_pem), certfile=str(cert) if cert else None,
                            keyfile=str(key) if key else None)
        self.connack: queue.Queue = queue.Queue()
        self.gone = threading.Event()
        self.inbox: queue.Queue = queue.Queue()
        self.subacks: queue.Queue = queue.Queue()
        self.client.on_connect = lambda _c, _u, _f, reason, _p: self.connack.put(reason.value)
        self.client.on_disconnect = lambda *_a: self.gone.set()
        self.client.on_message = lambda _c, _u, m: self.inbox.put(m)
        self.client.on_subscribe = lambda _c, _u, _m, reasons, _p: self.subacks.put(
            [r.value for r in reasons])
        self.gw = gw

    def connect(self) -> int | None:
        """The CONNACK code, or None if the TLS handshake itself was refused."""
        try:
            self.client.connect("127.0.0.1", self.gw.tls_port, 30)
        except OSError:
            return None
        self.client.loop_start()
        try:
            return self.connack.get(timeout=5)
        except queue.Empty:
            return None

    def subscribe(self, topic_filter: str, qos: int = 1) -> list[int]:
        self.client.subscribe(topic_filter, qos)
        return self.subacks.get(timeout=5)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
def gw(tmp_path):
    state = tmp_path / "state"
    lichen("init", "--state-dir", str(state))
    b = BrokerProcess(state)
    b.start()
    b.ca_pem = tmp_path / "ca.pem"
    b.ca_pem.write_text(lichen("ca", "show", "--state-dir", str(state)).stdout)
    b.dir = tmp_path
    yield b
    b.stop()


def add_device(gw, thing: str, *extra: str) -> tuple[Path, Path]:
    cert, key = gw.dir / f"{thing}.crt", gw.dir / f"{thing}.key"
    lichen("device", "add", thing, "--state-dir", str(gw.state_dir), "--cert-out", str(cert),
           "--key-out", str(key), *extra)
    return cert, key


def wait_log(gw: BrokerProcess, text: str, timeout: float = 5) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        log = gw.log()
        if text in log:
            return log
        time.sleep(0.05)
    raise AssertionError(f"{text!r} not in the gateway log:\n{gw.log()[-3000:]}")


def healthy(gw) -> None:
    """The gateway still serves other clients."""
    cert, key = add_device(gw, f"probe-{time.monotonic_ns()}")
    d = Device(gw, cert.stem, cert, key)
    assert d.connect() == 0
    d.close()


def test_enrolled_device_connects_and_uses_its_topics(gw):
    cert, key = add_device(gw, "sensor-1")
    assert oct(key.stat().st_mode & 0o777) == "0o600"
    d = Device(gw, "sensor-1", cert, key)
    assert d.connect() == 0
    assert d.subscribe("things/sensor-1/#") == [1]
    d.client.publish("things/sensor-1/temp", b"21.5", qos=1).wait_for_publish(5)
    assert d.inbox.get(timeout=5).payload == b"21.5"
    d.close()


def test_no_certificate_is_refused(gw):
    d = Device(gw, "anon", None, None)
    assert d.connect() is None
    wait_log(gw, "no client certificate presented")
    healthy(gw)


def test_certificate_from_another_ca_is_refused(gw):
    other = LocalCA(gw.dir / "other", "Other CA").issue("sensor-x")
    d = Device(gw, "sensor-x", other.cert, other.key)
    assert d.connect() is None
    wait_log(gw, "client certificate rejected")
    healthy(gw)


def test_self_signed_certificate_is_refused(gw):
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "sensor-1")])
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(1)
            .not_valid_before(now - dt.timedelta(days=1))
            .not_valid_after(now + dt.timedelta(days=1)).sign(key, hashes.SHA256()))
    cert_path, key_path = gw.dir / "self.crt", gw.dir / "self.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    d = Device(gw, "sensor-1", cert_path, key_path)
    assert d.connect() is None
    wait_log(gw, "self-signed certificate")
    healthy(gw)


def test_expired_certificate_is_refused(gw):
    pki = gw.state_dir / "pki"
    ca_key = serialization.load_pem_private_key((pki / "ca.key").read_bytes(), None)
    ca_cert = x509.load_pem_x509_certificate((pki / "ca.crt").read_bytes())
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "old-1")]))
            .issuer_name(ca_cert.subject).public_key(key.public_key()).serial_number(7)
            .not_valid_before(now - dt.timedelta(days=10))
            .not_valid_after(now - dt.timedelta(days=1)).sign(ca_key, hashes.SHA256()))
    cert_path, key_path = gw.dir / "old.crt", gw.dir / "old.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    d = Device(gw, "old-1", cert_path, key_path)
    assert d.connect() is None
    wait_log(gw, "certificate has expired")
    healthy(gw)


# paho reports the MQTT 3.1.1 return code 5 as the MQTT 5 reason 0x87 too
@pytest.mark.parametrize("protocol,refused", [(V5, 0x87), (V311, 0x87)])
def test_certificate_of_thing_a_with_client_id_b_is_refused(gw, protocol, refused):
    cert, key = add_device(gw, "thing-a")
    d = Device(gw, "thing-b", cert, key, protocol)
    assert d.connect() == refused
    wait_log(gw, "refused client id 'thing-b' for thing 'thing-a'")
    d.client.loop_stop()
    healthy(gw)


def test_wrong_private_key_cannot_be_used(gw):
    cert_a, _ = add_device(gw, "thing-a")
    _, key_b = add_device(gw, "thing-b")
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="thing-a")
    with pytest.raises(Exception, match="(?i)key values mismatch|private key"):
        client.tls_set(ca_certs=str(gw.ca_pem), certfile=str(cert_a), keyfile=str(key_b))
    healthy(gw)


def test_revocation_disconnects_at_once_and_refuses_reconnect(gw):
    cert, key = add_device(gw, "sensor-r")
    d = Device(gw, "sensor-r", cert, key)
    assert d.connect() == 0
    lichen("device", "revoke", "sensor-r", "--state-dir", str(gw.state_dir))
    assert d.gone.wait(5), "revoked device was not disconnected"
    d.client.loop_stop()
    wait_log(gw, "disconnecting sensor-r")
    again = Device(gw, "sensor-r", cert, key)
    assert again.connect() == 0x87
    wait_log(gw, "is revoked")
    again.client.loop_stop()
    healthy(gw)


def test_policies_allow_deny_and_receive_filtering(gw):
    policy = {
        "Version": "2012-10-17",
        "Statement": [
            {"Effect": "Allow", "Action": "iot:Connect", "Resource": "*"},
            {"Effect": "Allow", "Action": ["iot:Publish", "iot:Receive"],
             "Resource": "arn:aws:iot:*:*:topic/plant/*"},
            {"Effect": "Deny", "Action": ["iot:Publish", "iot:Receive"],
             "Resource": "arn:aws:iot:*:*:topic/plant/secret/*"},
            {"Effect": "Allow", "Action": "iot:Subscribe",
             "Resource": "arn:aws:iot:*:*:topicfilter/plant/*"},
            {"Effect": "Allow", "Action": "iot:Subscribe",
             "Resource": "arn:aws:iot:*:*:topicfilter/floor/"
                         "${iot:Connection.Thing.Attributes[floor]}/*"},
        ],
    }
    pfile = gw.dir / "plant.json"
    pfile.write_text(json.dumps(policy))
    lichen("policy", "put", "plant", str(pfile), "--state-dir", str(gw.state_dir))
    cert, key = add_device(gw, "op-1", "--policy", "plant", "--attr", "floor=3")
    d = Device(gw, "op-1", cert, key)
    assert d.connect() == 0
    assert d.subscribe("plant/#") == [1]
    assert d.subscribe("office/#") == [0x87]
    assert d.subscribe("floor/3/temp") == [1]
    assert d.subscribe("floor/4/temp") == [0x87]
    # a loopback client (allow-all) publishes; receive filtering drops plant/secret/*
    local = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="local-app")
    local.connect("127.0.0.1", gw.port)
    local.loop_start()
    for topic in ("plant/secret/key", "plant/line1/speed"):
        local.publish(topic, topic.encode(), qos=1).wait_for_publish(5)
    assert d.inbox.get(timeout=5).topic == "plant/line1/speed"
    with pytest.raises(queue.Empty):
        d.inbox.get(timeout=0.3)
    # publishes the policy denies are not delivered
    local.subscribe("#", 1)
    time.sleep(0.2)
    d.client.publish("office/x", b"denied", qos=1).wait_for_publish(5)
    d.client.publish("plant/ok", b"allowed", qos=1).wait_for_publish(5)
    wait_log(gw, "denied PUBLISH by op-1 to office/x")
    local.loop_stop()
    d.close()


def test_policy_put_rejects_a_bad_document(gw):
    bad = gw.dir / "bad.json"
    bad.write_text('{"Version": "2012-10-17", "Statement": [{"Effect": "allow", '
                   '"Action": "iot:Connect", "Resource": "*"}]}')
    r = lichen("policy", "put", "bad", str(bad), "--state-dir", str(gw.state_dir), check=False)
    assert r.returncode != 0
    assert len(r.stderr.strip().splitlines()) == 1 and "Effect" in r.stderr
    assert "bad" not in lichen("policy", "list", "--state-dir", str(gw.state_dir)).stdout.split()


def test_device_from_a_csr_and_a_registered_foreign_certificate(gw):
    key = ec.generate_private_key(ec.SECP256R1())
    csr = (x509.CertificateSigningRequestBuilder()
           .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "ignored")]))
           .sign(key, hashes.SHA256()))
    csr_path, key_path, cert_path = gw.dir / "c.csr", gw.dir / "c.key", gw.dir / "c.crt"
    csr_path.write_bytes(csr.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    lichen("device", "add", "csr-1", "--state-dir", str(gw.state_dir), "--csr", str(csr_path),
           "--cert-out", str(cert_path))
    d = Device(gw, "csr-1", cert_path, key_path)
    assert d.connect() == 0
    d.close()
    # a certificate issued elsewhere (as AWS IoT would), admitted by registering it
    foreign = LocalCA(gw.dir / "aws", "Fake AWS CA").issue("aws-thing")
    d = Device(gw, "aws-thing", foreign.cert, foreign.key)
    assert d.connect() is None
    lichen("device", "register", "aws-thing", "--cert", str(foreign.cert), "--state-dir",
           str(gw.state_dir))
    deadline = time.monotonic() + 5
    while True:  # the gateway picks the registration up without a restart
        d = Device(gw, "aws-thing", foreign.cert, foreign.key)
        code = d.connect()
        if code == 0 or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert code == 0
    d.close()


def test_server_certificate_renewed_before_expiry(tmp_path):
    """A server certificate inside the renewal window is replaced; the CA stays."""
    import asyncio

    from gateway.auth.ca import RENEW_BEFORE
    from gateway.auth.ca import LocalCA as GatewayCA
    from gateway.auth.pki import build_certificate, cert_pem, key_pem, new_key, write_private
    from gateway.auth.service import DeviceAuth

    auth = DeviceAuth(tmp_path)
    auth.prepare()
    ca = GatewayCA(tmp_path / "pki")
    ca.load()
    first = x509.load_pem_x509_certificate(ca.server_cert_path.read_bytes())
    assert asyncio.run(auth.renew_server_certificate()) is False  # still fresh
    key = new_key()
    days = RENEW_BEFORE.days - 1
    short = build_certificate("localhost", key.public_key(), ca.certificate, ca.key, days,
                              server_names=["localhost"])
    write_private(ca.server_key_path, key_pem(key))
    ca.server_cert_path.write_bytes(cert_pem(short))
    assert asyncio.run(auth.renew_server_certificate()) is True
    renewed = x509.load_pem_x509_certificate(ca.server_cert_path.read_bytes())
    assert renewed.serial_number not in (first.serial_number, short.serial_number)
    assert renewed.not_valid_after_utc > short.not_valid_after_utc
    assert oct(ca.server_key_path.stat().st_mode & 0o777) == "0o600"
    auth.registry.close()
