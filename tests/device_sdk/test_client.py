"""DeviceClient against a real gateway: discovery, mutual TLS, publish/subscribe with MQTT 5
and 3.1.1, and a specific, actionable error for each way connecting can fail."""

from __future__ import annotations

import queue

import pytest

from device_sdk import (
    ConnectRefused,
    DeviceClient,
    DiscoveryError,
    GatewayUnreachable,
    NotConnected,
    PublishRefused,
    SubscribeRefused,
    TLSError,
    discover,
)
from tests.certs import LocalCA
from tests.conftest import free_port
from tests.device_sdk.conftest import WAIT, lichen


def test_discovery_finds_the_gateway_and_its_ca(gateway):
    creds = gateway.enrol("disc-1")
    host, port = gateway.discovery.split(":")
    found = discover("disc-1", creds.cert, creds.key, host=host, port=int(port), ca=creds.ca)
    assert [(e.host, e.port) for e in found.endpoints] == [("127.0.0.1", gateway.tls_port)]
    assert found.ca_pem.strip() == creds.ca.read_text().strip()
    assert found.group_id and found.cores[0].thing_arn.startswith("arn:aws:iot:")


@pytest.mark.parametrize("protocol, use_discovery, session_expiry", [
    ("5", True, 0), ("3.1.1", False, 0), ("5", False, 300), ("3.1.1", True, 300)])
def test_connect_publish_and_subscribe(gateway, clients, protocol, use_discovery,
                                       session_expiry):
    thing = f"pubsub-{protocol.replace('.', '')}-{session_expiry}"
    creds = gateway.enrol(thing)
    client = gateway.client(creds, discover=use_discovery, protocol=protocol,
                            session_expiry=session_expiry)
    clients.append(client)
    client.connect(WAIT)
    assert client.connected and client.endpoint.port == gateway.tls_port
    if use_discovery:
        assert client.discovered.endpoints[0].port == gateway.tls_port

    app = gateway.peer(f"app-{thing}")
    try:
        app.subscribe(f"things/{thing}/#")
        inbox: queue.SimpleQueue = queue.SimpleQueue()
        client.subscribe(f"things/{thing}/cmd/+", inbox.put)

        # device -> gateway: QoS 1 (acknowledged) and QoS 0, str, bytes and JSON
        delivery = client.publish(f"things/{thing}/temp", {"celsius": 21.5})
        assert delivery.wait(WAIT) and delivery.delivered
        assert client.publish(f"things/{thing}/raw", b"\x00\x01", qos=0).wait(WAIT)
        assert app.next() == (f"things/{thing}/temp", {"celsius": 21.5})
        assert app.next() == (f"things/{thing}/raw", b"\x00\x01")
        assert len(client.queue) == 0

        # gateway -> device, through the callback thread
        app.publish(f"things/{thing}/cmd/led", "on")
        app.publish(f"things/{thing}/other", "not for the callback")
        app.publish(f"things/{thing}/cmd/fan", {"speed": 2})
        first, second = inbox.get(timeout=WAIT), inbox.get(timeout=WAIT)
        assert (first.topic, first.text()) == (f"things/{thing}/cmd/led", "on")
        assert (second.topic, second.json()) == (f"things/{thing}/cmd/fan", {"speed": 2})
        assert inbox.empty()
    finally:
        app.close()


def test_unsubscribe_stops_the_callback(gateway, clients):
    creds = gateway.enrol("unsub-1")
    client = gateway.client(creds)
    clients.append(client)
    client.connect(WAIT)
    got: queue.SimpleQueue = queue.SimpleQueue()
    sub = client.subscribe("things/unsub-1/a", got.put)
    client.publish("things/unsub-1/a", "1").wait(WAIT)
    assert got.get(timeout=WAIT).text() == "1"
    sub.unsubscribe()
    sub.unsubscribe()   # idempotent
    marker: queue.SimpleQueue = queue.SimpleQueue()
    client.subscribe("things/unsub-1/b", marker.put)
    client.publish("things/unsub-1/a", "2").wait(WAIT)
    client.publish("things/unsub-1/b", "done").wait(WAIT)
    assert marker.get(timeout=WAIT).text() == "done"   # in order: "2" came before, if at all
    assert got.empty()


def test_subscriptions_made_before_connecting_are_sent_on_connect(gateway, clients):
    creds = gateway.enrol("early-sub")
    client = gateway.client(creds)
    clients.append(client)
    inbox: queue.SimpleQueue = queue.SimpleQueue()
    client.subscribe("things/early-sub/#", inbox.put)   # not connected: no wait
    client.connect(WAIT)
    client.publish("things/early-sub/x", "hello").wait(WAIT)
    assert inbox.get(timeout=WAIT).text() == "hello"


def test_subscription_outside_the_policy_is_refused(gateway, clients):
    creds = gateway.enrol("nosy-1")
    client = gateway.client(creds)
    clients.append(client)
    client.connect(WAIT)
    with pytest.raises(SubscribeRefused, match="policy allow iot:Subscribe") as exc:
        client.subscribe("things/someone-else/#", print)
    assert exc.value.topic_filter == "things/someone-else/#"
    assert exc.value.reason_code >= 0x80


def test_publish_outside_the_policy_is_refused_and_does_not_block_the_queue(gateway, clients):
    creds = gateway.enrol("nosy-2")
    client = gateway.client(creds)   # MQTT 5: the PUBACK carries the refusal
    clients.append(client)
    client.connect(WAIT)
    refused = client.publish("things/someone-else/x", "no")
    after = client.publish("things/nosy-2/x", "yes")
    with pytest.raises(PublishRefused, match="policy allow iot:Publish") as exc:
        refused.wait(WAIT)
    assert exc.value.reason_code == 0x87
    assert after.wait(WAIT)
    assert len(client.queue) == 0


def test_wrong_certificate_is_a_tls_error(gateway, tmp_path):
    stranger = LocalCA(tmp_path, "Stranger CA").issue("intruder")
    client = DeviceClient("intruder", stranger.cert, stranger.key, ca=gateway.ca,
                          host="127.0.0.1", port=gateway.tls_port)
    with pytest.raises(TLSError, match="refused this device's certificate") as exc:
        client.connect(WAIT)
    assert "lichen device add" in str(exc.value)
    client.close()


def test_untrusted_gateway_is_a_tls_error(gateway, tmp_path):
    creds = gateway.enrol("trusting-1")
    other_ca = LocalCA(tmp_path, "Other CA").files.cert
    client = DeviceClient("trusting-1", creds.cert, creds.key, ca=other_ca,
                          host="127.0.0.1", port=gateway.tls_port)
    with pytest.raises(TLSError, match="is not trusted") as exc:
        client.connect(WAIT)
    assert "lichen ca show" in str(exc.value)
    client.close()


def test_plaintext_port_is_a_tls_error(gateway):
    creds = gateway.enrol("plain-1")
    client = DeviceClient("plain-1", creds.cert, creds.key, ca=creds.ca, host="127.0.0.1",
                          port=gateway.port)
    with pytest.raises(TLSError, match="mutual-TLS port"):
        client.connect(WAIT)
    client.close()


def test_unreadable_credentials_fail_at_once(gateway, tmp_path):
    creds = gateway.enrol("files-1")
    other = gateway.enrol("files-2")
    with pytest.raises(TLSError, match="does not exist"):
        DeviceClient("files-1", tmp_path / "missing.crt", creds.key, host="127.0.0.1")
    with pytest.raises(TLSError, match="does not belong to the certificate"):
        DeviceClient("files-1", creds.cert, other.key, host="127.0.0.1")
    with pytest.raises(TLSError, match="CA file"):
        DeviceClient("files-1", creds.cert, creds.key, ca=tmp_path / "none.pem",
                     host="127.0.0.1")
    not_pem = tmp_path / "ca.txt"
    not_pem.write_text("hello")
    with pytest.raises(TLSError, match="not a PEM certificate"):
        DeviceClient("files-1", creds.cert, creds.key, ca=not_pem, host="127.0.0.1")


def test_unreachable_gateway(gateway):
    creds = gateway.enrol("lonely-1")
    port = free_port()   # nothing listens there
    client = DeviceClient("lonely-1", creds.cert, creds.key, ca=creds.ca, host="127.0.0.1",
                          port=port)
    with pytest.raises(GatewayUnreachable, match=f"127.0.0.1:{port}: connection refused"):
        client.connect(1.0)
    assert not client.connected
    with pytest.raises(NotConnected, match="not started"):
        client.shadow().get(timeout=0.5)
    client.close()


def test_unreachable_discovery_endpoint(gateway):
    creds = gateway.enrol("lonely-2")
    client = DeviceClient("lonely-2", creds.cert, creds.key, ca=creds.ca,
                          discover=f"127.0.0.1:{free_port()}")
    with pytest.raises(GatewayUnreachable, match="discovery endpoint"):
        client.connect(1.0)
    client.close()


def test_discovery_with_another_things_certificate_is_refused(gateway):
    creds = gateway.enrol("disc-a")
    client = DeviceClient("disc-b", creds.cert, creds.key, ca=creds.ca,
                          discover=gateway.discovery)
    with pytest.raises(DiscoveryError, match="answered 403") as exc:
        client.connect(WAIT)
    assert exc.value.status == 403
    client.close()


def test_client_id_that_is_not_the_things_name_is_refused(gateway):
    creds = gateway.enrol("named-a")
    client = DeviceClient("named-b", creds.cert, creds.key, ca=creds.ca, host="127.0.0.1",
                          port=gateway.tls_port)
    with pytest.raises(ConnectRefused, match="client id must be the thing name") as exc:
        client.connect(WAIT)
    assert exc.value.reason_code == 0x87 and exc.value.permanent
    client.close()


def test_revoked_device_is_refused_with_a_hint(gateway):
    creds = gateway.enrol("revoked-1")
    lichen("device", "revoke", "revoked-1", "--state-dir", str(gateway.proc.state_dir))
    # The gateway looks at the registry on every connect: refused from the first attempt.
    client = gateway.client(creds)
    try:
        with pytest.raises(ConnectRefused, match="revoked"):
            client.connect(WAIT)
        assert not client.connected
    finally:
        client.close()


def test_qos0_while_offline_is_dropped_with_a_reason_and_qos1_is_queued(gateway):
    creds = gateway.enrol("offline-0")
    client = gateway.client(creds)
    lost = client.publish("things/offline-0/x", "gone", qos=0)
    assert lost.done and not lost.delivered
    with pytest.raises(NotConnected, match="QoS 0"):
        lost.wait(0)
    kept = client.publish("things/offline-0/x", "kept")
    assert not kept.done and len(client.queue) == 1
    client.connect(WAIT)
    assert kept.wait(WAIT) and client.flush(WAIT)
    client.close()
    client.close()   # idempotent
    with pytest.raises(Exception, match="closed"):
        client.publish("things/offline-0/x", "after close")


@pytest.fixture(scope="module")
def args_creds(gateway):
    return gateway.enrol("args-1")


@pytest.mark.parametrize("kwargs, match", [
    ({"host": "h", "discover": "h:1"}, "not both"), ({}, "not both or neither"),
    ({"host": "h", "protocol": "4"}, "protocol"), ({"host": "h", "max_inflight": 0}, "inflight"),
    ({"discover": "h:x"}, "bad port"),
])
def test_bad_arguments(args_creds, kwargs, match):
    with pytest.raises(ValueError, match=match):
        DeviceClient("args-1", args_creds.cert, args_creds.key, **kwargs)


def test_bad_thing_name(args_creds):
    with pytest.raises(ValueError, match="invalid thing name"):
        DeviceClient("bad/name", args_creds.cert, args_creds.key, host="h")
