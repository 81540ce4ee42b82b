"""Shadows as devices use them: the AWS IoT Device SDK v2 for Python (awsiotsdk) over mutual
TLS with a certificate from `lichen device add`, and policies that keep a device to its own
shadows."""

from __future__ import annotations

import json
import queue
import subprocess
import sys

import paho.mqtt.client as mqtt
import pytest

from tests.conftest import ROOT, BrokerProcess
from tests.shadow.helpers import TIMEOUT, Peer


def lichen(*args: str) -> str:
    result = subprocess.run([sys.executable, "-m", "gateway.cli", *args], cwd=ROOT,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return result.stdout


@pytest.fixture(scope="module")
def gw(tmp_path_factory):
    base = tmp_path_factory.mktemp("tlsgw")
    state = base / "state"
    lichen("init", "--state-dir", str(state))
    b = BrokerProcess(state).start()
    b.dir = base
    b.ca_pem = base / "ca.pem"
    b.ca_pem.write_text(lichen("ca", "show", "--state-dir", str(state)))
    yield b
    b.stop()


def add_device(gw, thing: str, *extra: str) -> dict[str, str]:
    cert, key = gw.dir / f"{thing}.crt", gw.dir / f"{thing}.key"
    lichen("device", "add", thing, "--state-dir", str(gw.state_dir), "--cert-out", str(cert),
           "--key-out", str(key), *extra)
    return {"ca": str(gw.ca_pem), "cert": str(cert), "key": str(key)}


def sdk_connection(gw, thing: str, creds: dict[str, str]):
    mqtt_connection_builder = pytest.importorskip("awsiot.mqtt_connection_builder")
    conn = mqtt_connection_builder.mtls_from_path(
        endpoint="127.0.0.1", port=gw.tls_port, cert_filepath=creds["cert"],
        pri_key_filepath=creds["key"], ca_filepath=creds["ca"], client_id=thing,
        clean_session=True, keep_alive_secs=30)
    conn.connect().result(TIMEOUT)
    return conn


def test_aws_iot_device_sdk_v2_shadow_client(gw):
    iotshadow = pytest.importorskip("awsiot.iotshadow")  # awsiotsdk, in the test extra
    QOS1 = pytest.importorskip("awscrt.mqtt").QoS.AT_LEAST_ONCE
    thing = "sdk-lamp"
    conn = sdk_connection(gw, thing, add_device(gw, thing))
    try:
        client = iotshadow.IotShadowClient(conn)
        events: queue.Queue = queue.Queue()

        def sub(method, request, kind):
            fut, _ = method(request, QOS1, lambda response: events.put((kind, response)))
            fut.result(TIMEOUT)

        sub(client.subscribe_to_update_shadow_accepted,
            iotshadow.UpdateShadowSubscriptionRequest(thing_name=thing), "update/accepted")
        sub(client.subscribe_to_update_shadow_rejected,
            iotshadow.UpdateShadowSubscriptionRequest(thing_name=thing), "update/rejected")
        sub(client.subscribe_to_shadow_delta_updated_events,
            iotshadow.ShadowDeltaUpdatedSubscriptionRequest(thing_name=thing), "delta")
        sub(client.subscribe_to_shadow_updated_events,
            iotshadow.ShadowUpdatedSubscriptionRequest(thing_name=thing), "documents")
        sub(client.subscribe_to_get_shadow_accepted,
            iotshadow.GetShadowSubscriptionRequest(thing_name=thing), "get/accepted")
        sub(client.subscribe_to_get_shadow_rejected,
            iotshadow.GetShadowSubscriptionRequest(thing_name=thing), "get/rejected")
        sub(client.subscribe_to_update_named_shadow_accepted,
            iotshadow.UpdateNamedShadowSubscriptionRequest(thing_name=thing,
                                                           shadow_name="settings"),
            "named/accepted")

        def expect(kind: str):
            while True:
                got, response = events.get(timeout=TIMEOUT)
                if got == kind:
                    return response

        client.publish_get_shadow(iotshadow.GetShadowRequest(thing_name=thing,
                                                             client_token="g0"),
                                  QOS1).result(TIMEOUT)
        err = expect("get/rejected")
        assert (err.code, err.client_token) == (404, "g0")

        # an app asks for a colour; the device gets the delta and reports it
        client.publish_update_shadow(iotshadow.UpdateShadowRequest(
            thing_name=thing, client_token="u1",
            state=iotshadow.ShadowState(desired={"color": "red", "power": "on"})),
            QOS1).result(TIMEOUT)
        accepted = expect("update/accepted")
        assert (accepted.version, accepted.client_token) == (1, "u1")
        assert accepted.state.desired == {"color": "red", "power": "on"}
        delta = expect("delta")
        assert delta.state == {"color": "red", "power": "on"} and delta.version == 1
        updated = expect("documents")
        assert updated.previous is None and updated.current.version == 1
        assert updated.current.state.desired == {"color": "red", "power": "on"}

        client.publish_update_shadow(iotshadow.UpdateShadowRequest(
            thing_name=thing, state=iotshadow.ShadowState(reported=delta.state),
            version=delta.version), QOS1).result(TIMEOUT)
        assert expect("update/accepted").version == 2

        client.publish_get_shadow(iotshadow.GetShadowRequest(thing_name=thing,
                                                             client_token="g1"),
                                  QOS1).result(TIMEOUT)
        got = expect("get/accepted")
        assert got.version == 2 and got.client_token == "g1"
        assert got.state.reported == {"color": "red", "power": "on"}
        assert got.state.delta is None

        # a stale version is refused with 409
        client.publish_update_shadow(iotshadow.UpdateShadowRequest(
            thing_name=thing, client_token="old", version=1,
            state=iotshadow.ShadowState(reported={"color": "blue"})), QOS1).result(TIMEOUT)
        err = expect("update/rejected")
        assert (err.code, err.message, err.client_token) == (409, "Version conflict", "old")

        client.publish_update_named_shadow(iotshadow.UpdateNamedShadowRequest(
            thing_name=thing, shadow_name="settings", client_token="n1",
            state=iotshadow.ShadowState(reported={"interval": 30})), QOS1).result(TIMEOUT)
        named = expect("named/accepted")
        assert (named.version, named.client_token) == (1, "n1")
    finally:
        conn.disconnect().result(TIMEOUT)


def test_a_device_cannot_use_another_things_shadow(gw):
    mine = add_device(gw, "dev-a")
    add_device(gw, "dev-b")
    watcher = Peer(gw.port, "loopback-watcher").connect()
    # MQTT 5: the denied publish below is answered 0x87; on 3.1.1 the gateway would close
    # the connection (as AWS IoT Core does), ending the test's session with it
    device = Peer(gw.tls_port, "dev-a", protocol=mqtt.MQTTv5, tls=mine).connect()
    try:
        watcher.subscribe("$aws/things/dev-b/shadow/#")
        # subscribing to dev-b's replies is refused; its own are fine
        assert device.subscribe("$aws/things/dev-b/shadow/update/accepted") == [0x87]
        assert device.subscribe("$aws/things/dev-a/shadow/update/+") == [1]
        # a publish to dev-b's request topic is denied: the service never sees it
        device.publish("$aws/things/dev-b/shadow/update", {"state": {"desired": {"x": 1}}})
        device.publish("$aws/things/dev-a/shadow/update", {"state": {"reported": {"x": 1}},
                                                           "clientToken": "mine"})
        doc = device.until("$aws/things/dev-a/shadow/update/accepted")[0]
        assert doc["clientToken"] == "mine"
        watcher.publish("$aws/things/dev-b/shadow/get", {"clientToken": "w"})
        doc, before = watcher.until("$aws/things/dev-b/shadow/get/rejected")
        assert doc["code"] == 404  # dev-b's shadow was never created
        assert [t for t, _ in before] == ["$aws/things/dev-b/shadow/get"]
    finally:
        device.close()
        watcher.close()


def test_replies_are_filtered_by_the_receivers_policy(gw):
    """A policy may let a device subscribe widely but receive only its own shadow topics:
    the service publishes on the reserved topics and the broker's receive check applies."""
    policy = {"Version": "2012-10-17", "Statement": [
        {"Effect": "Allow", "Action": "iot:Connect", "Resource": "*"},
        {"Effect": "Allow", "Action": "iot:Subscribe",
         "Resource": "arn:aws:iot:*:*:topicfilter/$aws/things/*"},
        {"Effect": "Allow", "Action": ["iot:Publish", "iot:Receive"],
         "Resource": "arn:aws:iot:*:*:topic/$aws/things/${iot:Connection.Thing.ThingName}/*"}]}
    pfile = gw.dir / "narrow.json"
    pfile.write_text(json.dumps(policy))
    lichen("policy", "put", "narrow", str(pfile), "--state-dir", str(gw.state_dir))
    creds = add_device(gw, "dev-c", "--policy", "narrow")
    device = Peer(gw.tls_port, "dev-c", tls=creds).connect()
    app = Peer(gw.port, "loopback-app").connect()
    try:
        assert device.subscribe("$aws/things/+/shadow/update/accepted") == [1]
        app.publish("$aws/things/dev-d/shadow/update", {"state": {"reported": {"secret": 1}}})
        device.publish("$aws/things/dev-c/shadow/update", {"state": {"reported": {"x": 1}}})
        topic, _ = device.next()
        assert topic == "$aws/things/dev-c/shadow/update/accepted"
        app.subscribe("$aws/things/dev-d/shadow/get/accepted")
        app.publish("$aws/things/dev-d/shadow/get")
        assert app.until("$aws/things/dev-d/shadow/get/accepted")[0]["state"] == \
            {"reported": {"secret": 1}}
        assert device.inbox.empty()  # dev-d's /accepted (published before dev-c's) never came
    finally:
        device.close()
        app.close()
