"""The SDK's pure parts: topic checks, filter matching, payloads, discovery documents,
shadow topics and documents, and the error hierarchy."""

import json

import pytest

from device_sdk import errors
from device_sdk.discovery import Endpoint, parse_discovery, parse_endpoint
from device_sdk.errors import DiscoveryError, ShadowNotFound, ShadowVersionConflict
from device_sdk.message import (
    Message,
    check_filter,
    check_qos,
    check_topic,
    encode_payload,
    filter_matches,
)
from device_sdk.shadow_protocol import (
    ShadowDelta,
    ShadowDocument,
    ShadowUpdated,
    UpdateAccepted,
    check_shadow_name,
    rejection,
    reply_topics,
    request_payload,
    shadow_prefix,
)

CA = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----"


@pytest.mark.parametrize("topic_filter, topic, expected", [
    ("a/b", "a/b", True), ("a/+", "a/b", True), ("a/+", "a/b/c", False),
    ("a/#", "a", True), ("a/#", "a/b/c", True), ("#", "a/b", True), ("+/+", "a/b", True),
    ("+", "a/b", False), ("a/b", "a/c", False), ("#", "$aws/things/x", False),
    ("+/things/x", "$aws/things/x", False), ("$aws/things/+/shadow/#",
                                            "$aws/things/x/shadow/get/accepted", True),
    ("$share/g/a/+", "a/b", True), ("a//b", "a//b", True), ("a/+/b", "a//b", True),
])
def test_filter_matching(topic_filter, topic, expected):
    assert filter_matches(topic_filter, topic) is expected


@pytest.mark.parametrize("topic", ["", "a/+", "a/#", "a\0b", "x" * 65536])
def test_bad_publish_topics(topic):
    with pytest.raises(ValueError):
        check_topic(topic)


@pytest.mark.parametrize("topic_filter", ["", "a/#/b", "a#", "a/b+", "a\0"])
def test_bad_filters(topic_filter):
    with pytest.raises(ValueError):
        check_filter(topic_filter)


def test_good_topics_and_qos():
    check_topic("things/s1/temp")
    check_filter("things/+/temp")
    check_filter("#")
    check_qos(0)
    check_qos(1)
    with pytest.raises(ValueError, match="0 or 1"):
        check_qos(2)


def test_payload_encoding():
    assert encode_payload(b"\x00\x01") == b"\x00\x01"
    assert encode_payload(bytearray(b"ab")) == b"ab"
    assert encode_payload("21.5 °C") == "21.5 °C".encode()
    assert encode_payload({"celsius": 21.5}) == b'{"celsius":21.5}'
    assert encode_payload([1, 2]) == b"[1,2]"
    with pytest.raises(TypeError, match="encode numbers yourself"):
        encode_payload(21.5)  # type: ignore[arg-type]
    message = Message("t", b'{"a": 1}')
    assert message.json() == {"a": 1} and message.text() == '{"a": 1}'


@pytest.mark.parametrize("text, expected", [
    ("gw", Endpoint("gw", 8443)), ("gw:9000", Endpoint("gw", 9000)),
    ("10.0.0.5:8443", Endpoint("10.0.0.5", 8443)), ("[::1]:8443", Endpoint("::1", 8443)),
    ("[fe80::1]", Endpoint("fe80::1", 8443)), ("fe80::1", Endpoint("fe80::1", 8443)),
])
def test_parse_endpoint(text, expected):
    assert parse_endpoint(text, 8443) == expected


@pytest.mark.parametrize("text", ["", ":80", "gw:0", "gw:x", "gw:70000", "[::1", "[::1]x"])
def test_parse_endpoint_rejects(text):
    with pytest.raises(ValueError):
        parse_endpoint(text, 8443)


def discovery_doc(**group):
    base = {"GGGroupId": "g1", "CAs": [CA], "Cores": [{
        "thingArn": "arn:aws:iot:local:000000000000:thing/core",
        "Connectivity": [
            {"Id": "a", "HostAddress": "10.0.0.5", "PortNumber": 8883, "Metadata": ""},
            {"Id": "b", "HostAddress": "127.0.0.1", "PortNumber": 8884, "Metadata": ""}]}]}
    base.update(group)
    return {"GGGroups": [base]}


def test_parse_discovery():
    found = parse_discovery(discovery_doc())
    assert found.group_id == "g1"
    assert found.endpoints == [Endpoint("10.0.0.5", 8883), Endpoint("127.0.0.1", 8884)]
    assert found.cores[0].thing_arn.endswith("thing/core")
    assert found.ca_pem == CA + "\n"


@pytest.mark.parametrize("doc", [
    None, [], {}, {"GGGroups": []}, {"GGGroups": ["x"]},
    discovery_doc(CAs=[]), discovery_doc(CAs=["not a cert"]), discovery_doc(Cores=[]),
    discovery_doc(Cores=[{"thingArn": "x", "Connectivity": []}]),
    discovery_doc(Cores=[{"Connectivity": [{"HostAddress": "h", "PortNumber": "8883"}]}]),
    discovery_doc(Cores=[{"Connectivity": [{"HostAddress": "", "PortNumber": 8883}]}]),
    discovery_doc(Cores=[{"Connectivity": [{"HostAddress": "h", "PortNumber": True}]}]),
])
def test_parse_discovery_rejects_unusable_documents(doc):
    with pytest.raises(DiscoveryError, match="not usable") as exc:
        parse_discovery(doc)
    assert exc.value.status == 0


def test_shadow_topics():
    assert shadow_prefix("lamp") == "$aws/things/lamp/shadow"
    assert shadow_prefix("lamp", "dimmer") == "$aws/things/lamp/shadow/name/dimmer"
    assert reply_topics("$aws/things/lamp/shadow") == [
        f"$aws/things/lamp/shadow/{op}/{r}" for op in ("get", "update", "delete")
        for r in ("accepted", "rejected")]
    check_shadow_name("$config:v1_a-b")
    for bad in ("", "a/b", "x" * 65, "a+b"):
        with pytest.raises(ValueError):
            check_shadow_name(bad)


def test_request_payloads():
    assert json.loads(request_payload("t1")) == {"clientToken": "t1"}
    assert json.loads(request_payload("t2", {"reported": {"on": True}}, with_state=True,
                                      version=4)) == \
        {"state": {"reported": {"on": True}}, "version": 4, "clientToken": "t2"}


def test_reply_documents():
    got = ShadowDocument.from_reply({
        "state": {"desired": {"on": True}, "reported": {"on": False}, "delta": {"on": True}},
        "metadata": {"desired": {}}, "version": 7, "timestamp": 100, "clientToken": "x"})
    assert (got.desired, got.reported, got.delta, got.version, got.timestamp) == \
        ({"on": True}, {"on": False}, {"on": True}, 7, 100)
    empty = ShadowDocument.from_reply({"state": {}, "version": 1})
    assert (empty.desired, empty.reported, empty.delta) == ({}, {}, {})
    accepted = UpdateAccepted.from_reply({"state": {"reported": {"a": 1}}, "version": 3})
    assert accepted.state == {"reported": {"a": 1}} and accepted.version == 3
    delta = ShadowDelta.from_message({"state": {"on": True}, "version": 5, "clientToken": "c"})
    assert delta == ShadowDelta({"on": True}, 5, {}, None, "c")
    assert ShadowDelta.from_message({"state": {"on": True}}) is None
    assert ShadowDelta.from_message({"state": [], "version": 1}) is None
    updated = ShadowUpdated.from_message({"previous": None, "current": {
        "state": {"reported": {"a": 1}}, "version": 1}, "timestamp": 9})
    assert updated.previous is None and updated.current.reported == {"a": 1}


def test_rejections_map_to_specific_errors():
    err = rejection({"code": 404, "message": "No shadow exists with name: lamp"}, "lamp",
                    None, "get")
    assert isinstance(err, ShadowNotFound) and err.code == 404
    assert "an update creates it" in str(err)
    err = rejection({"code": 409, "message": "Version conflict", "clientToken": "t"}, "lamp",
                    "dimmer", "update")
    assert isinstance(err, ShadowVersionConflict)
    assert (err.shadow, err.operation, err.client_token) == ("dimmer", "update", "t")
    assert "named shadow 'dimmer'" in str(err) and "Shadow.modify()" in str(err)
    err = rejection({"code": 400, "message": "Invalid JSON"}, "lamp", None, "update")
    assert type(err) is errors.ShadowRejected and (err.code, err.message) == \
        (400, "Invalid JSON")


def test_error_hierarchy():
    assert issubclass(errors.GatewayUnreachable, errors.ConnectError)
    assert issubclass(errors.TLSError, errors.ConnectError)
    assert issubclass(errors.ConnectRefused, errors.ConnectError)
    assert issubclass(errors.NotConnected, errors.ConnectError)
    assert issubclass(errors.QueueFull, errors.QueueError)
    assert issubclass(errors.ShadowTimeout, errors.RequestTimeout)
    for name in errors.__dict__:
        obj = getattr(errors, name)
        if isinstance(obj, type) and issubclass(obj, Exception):
            assert issubclass(obj, errors.DeviceSDKError), name
    refused = errors.ConnectRefused("m", 0x87, "Not authorized")
    assert refused.permanent and not errors.ConnectRefused("m", 0x88, "busy").permanent


def test_subscription_table():
    from device_sdk.handles import Subscription
    from device_sdk.subscriptions import SubscriptionTable

    table = SubscriptionTable()
    a = Subscription(None, "things/t/#", print)   # type: ignore[arg-type]
    b = Subscription(None, "things/t/#", print)   # type: ignore[arg-type]
    c = Subscription(None, "things/t/cmd", print)  # type: ignore[arg-type]
    assert table.add([a], 0) == [("things/t/#", 0)]
    assert table.add([b], 0) == []                       # already subscribed
    assert table.add([b, c], 1) == [("things/t/#", 1), ("things/t/cmd", 1)]  # QoS raised
    assert table.matching("things/t/cmd") == [a, b, b, c]
    assert table.matching("other") == []
    assert table.missing({"things/t/#"}) == [("things/t/cmd", 1)]
    assert table.remove(a) is False and table.remove(a) is False
    assert table.remove(b) is False                      # b was added twice
    assert table.remove(b) is True                       # the filter's last callback
    assert table.missing(set()) == [("things/t/cmd", 1)]


def test_tls_failures_are_explained():
    import ssl

    from device_sdk.tls import explain

    def verify_error(message: str) -> ssl.SSLCertVerificationError:
        exc = ssl.SSLCertVerificationError(1, f"certificate verify failed: {message}")
        exc.verify_message = message
        return exc

    def alert(reason: str) -> ssl.SSLError:
        exc = ssl.SSLError(1, f"[SSL: {reason}] alert")
        exc.reason = reason
        return exc

    assert "does not name that host" in str(explain(verify_error(
        "Hostname mismatch, certificate is not valid for 'gw'."), "gw:8883"))
    assert "does not name that host" in str(explain(verify_error(
        "IP address mismatch, certificate is not valid for '10.0.0.9'."), "10.0.0.9:8883"))
    assert "is not trusted" in str(explain(verify_error("unable to get local issuer"), "gw"))
    assert "(revoked)" in str(explain(alert("SSLV3_ALERT_CERTIFICATE_REVOKED"), "gw"))
    assert "(expired)" in str(explain(alert("SSLV3_ALERT_CERTIFICATE_EXPIRED"), "gw"))
    assert "plaintext" in str(explain(alert("WRONG_VERSION_NUMBER"), "gw"))
    assert "TLS with gw failed: SOMETHING_ELSE" in str(explain(alert("SOMETHING_ELSE"), "gw"))
