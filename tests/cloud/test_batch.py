"""The batch format (gateway.cloud.batch) and the batch settings of a route: pure."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.cloud.batch import (
    MAX_PAYLOAD,
    BatchSettings,
    Packer,
    batch_size,
    element,
    is_json,
    pack,
    unpack,
)
from gateway.cloud.routes import RouteConfigError, parse_routes

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(), lambda inner: st.lists(inner, max_size=4)
    | st.dictionaries(st.text(), inner, max_size=4), max_leaves=10)
payloads = st.one_of(st.binary(max_size=300), json_values.map(lambda v: json.dumps(v).encode()))
messages = st.lists(st.tuples(st.text(min_size=1, max_size=40), st.integers(0, 2**45),
                              payloads), max_size=60)


def expected(payload: bytes):
    return (json.loads(payload), True) if is_json(payload) else (payload, False)


def pack_all(msgs, limits: BatchSettings) -> list[bytes]:
    """As a lane packs one topic's messages: a new batch when the next does not fit."""
    out, packer = [], None
    for i, (topic, ts, payload) in enumerate(msgs):
        elem = element(topic, ts, payload)
        if packer is not None and not packer.fits(elem):
            out.append(packer.payload())
            packer = None
        if packer is None:
            packer = Packer(limits, 0.0)
        packer.add(elem, i)
        if packer.full:
            out.append(packer.payload())
            packer = None
    if packer is not None:
        out.append(packer.payload())
    return out


@settings(max_examples=200, deadline=None)
@given(messages, st.integers(1, 20), st.integers(256, 4096))
def test_pack_unpack_exact_and_within_max_bytes(msgs, max_messages, max_bytes):
    limits = BatchSettings(max_messages, max_bytes, 0)
    batches = pack_all(msgs, limits)
    got = []
    for data in batches:
        items = unpack(data)
        assert len(items) <= max_messages
        if len(items) > 1:   # only a message too big to share goes alone, over the limit
            assert len(data) <= max_bytes
        got += items
    assert len(got) == len(msgs)
    for item, (topic, ts, payload) in zip(got, msgs, strict=True):
        assert (item.topic, item.timestamp_ms) == (topic, ts)
        assert (item.payload, item.is_json) == expected(payload)


@given(st.lists(st.binary(max_size=200), min_size=1, max_size=30))
def test_size_accounting_is_exact(payloads):
    elements = [element("t", 1, p) for p in payloads]
    assert len(pack(elements)) == batch_size(sum(map(len, elements)), len(elements))


def test_json_payloads_are_embedded_as_they_came():
    data = pack([element("a/b", 5, b'{"t": 21.5}'), element("a/c", 6, b"\x00\x01")])
    assert data == (b'{"batch":1,"messages":[{"topic":"a/b","timestamp":5,"payload":{"t": 21.5}},'
                    b'{"topic":"a/c","timestamp":6,"payload_b64":"AAE="}]}')
    assert not is_json(b"NaN") and not is_json(b"") and not is_json(b"\xef\xbb\xbf1")
    assert is_json(b'"text"') and is_json(b" [1, 2] ")


def test_a_message_too_big_to_share_goes_alone():
    limits = BatchSettings(10, 300, 0)
    small, big = b"x" * 10, b"y" * 400
    batches = pack_all([("t", 1, small), ("t", 2, big), ("t", 3, small)], limits)
    assert [len(unpack(b)) for b in batches] == [1, 1, 1]
    assert len(batches[1]) > 300 and len(batches[0]) <= 300


def route(batch) -> dict:
    return {"name": "r", "direction": "up", "filter": "s/#", "batch": batch}


def test_route_batch_settings():
    r = parse_routes([route({"max_messages": 10, "max_delay_ms": 50})])[0]
    assert r.batch == BatchSettings(10, MAX_PAYLOAD, 50)
    assert parse_routes([{"name": "r", "direction": "up", "filter": "s/#"}])[0].batch is None


@pytest.mark.parametrize("batch, message", [
    ({"max_bytes": MAX_PAYLOAD + 1}, "routes[0].batch.max_bytes: must be an integer from 256 "
     "to 131072 (AWS IoT Core's 128 KB payload limit), got 131073"),
    ({"max_messages": 0}, "routes[0].batch.max_messages: must be an integer from 1 to 10000"),
    ({"max_delay_ms": "1s"}, "routes[0].batch.max_delay_ms: must be an integer from 0 to 60000"),
    ({"max_messages": True}, "routes[0].batch.max_messages: must be an integer"),
    ({"size": 3}, "routes[0].batch.size: unknown setting (known: max_messages, max_bytes, "
     "max_delay_ms)"),
    (7, "routes[0].batch: must be a table"),
])
def test_bad_batch_settings_name_the_field(batch, message):
    with pytest.raises(RouteConfigError) as err:
        parse_routes([route(batch)])
    assert str(err.value).startswith(message)
    assert "\n" not in str(err.value)


def test_only_up_routes_batch():
    with pytest.raises(RouteConfigError, match=r"^routes\[0\]\.batch: only an up route"):
        parse_routes([{"name": "r", "direction": "down", "filter": "c/#", "batch": {}}])
