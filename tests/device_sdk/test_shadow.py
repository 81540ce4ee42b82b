"""Shadow against a real gateway's shadow service: round trips, deltas (each version once,
in order, caught up after connecting), named shadows, rejections and conflict retries."""

from __future__ import annotations

import queue
import time

import pytest

from device_sdk import (
    ShadowDelta,
    ShadowNotFound,
    ShadowRejected,
    ShadowUpdated,
    ShadowVersionConflict,
)
from tests.device_sdk.conftest import WAIT


def connected(gateway, clients, thing, **options):
    client = gateway.client(gateway.enrol(thing), **options)
    clients.append(client)
    client.connect(WAIT)
    return client


def next_delta(deltas: queue.SimpleQueue) -> ShadowDelta:
    return deltas.get(timeout=WAIT)


@pytest.mark.parametrize("protocol", ["5", "3.1.1"])
def test_round_trip(gateway, clients, protocol):
    thing = f"lamp-{protocol.replace('.', '')}"
    client = connected(gateway, clients, thing, protocol=protocol)
    shadow = client.shadow()
    with pytest.raises(ShadowNotFound, match="an update creates it") as exc:
        shadow.get()
    assert exc.value.code == 404 and exc.value.operation == "get"

    accepted = shadow.report({"on": False, "watts": 0})
    assert accepted.version == 1 and accepted.state == {"reported": {"on": False, "watts": 0}}
    assert shadow.desire({"on": True}).version == 2
    doc = shadow.get()
    assert (doc.desired, doc.reported, doc.delta, doc.version) == \
        ({"on": True}, {"on": False, "watts": 0}, {"on": True}, 2)
    assert doc.metadata["reported"]["watts"]["timestamp"] > 0
    assert shadow.version == 2

    # None removes a field, as in AWS IoT; a matching report clears the delta
    shadow.update({"reported": {"on": True, "watts": None}})
    doc = shadow.get()
    assert doc.reported == {"on": True} and doc.delta == {} and doc.version == 3
    assert shadow.delete() == 3
    with pytest.raises(ShadowNotFound):
        shadow.get()
    assert shadow.report({"on": True}).version == 4   # the version carries on


def test_delta_callbacks_from_an_app(gateway, clients):
    client = connected(gateway, clients, "relay-d")
    shadow = client.shadow()
    deltas: queue.SimpleQueue = queue.SimpleQueue()
    shadow.on_delta(deltas.put)
    updates: queue.SimpleQueue = queue.SimpleQueue()
    shadow.on_updated(updates.put)
    app = gateway.peer("app-relay-d")
    try:
        app.publish("$aws/things/relay-d/shadow/update",
                    {"state": {"desired": {"on": True, "level": 3}}, "clientToken": "app-1"})
        delta = next_delta(deltas)
        assert delta.state == {"on": True, "level": 3} and delta.version == 1
        assert delta.client_token == "app-1"
        updated: ShadowUpdated = updates.get(timeout=WAIT)
        assert updated.previous is None and updated.current.desired == {"on": True, "level": 3}

        # the device follows, then the app changes its mind
        shadow.report({"on": True, "level": 3})
        app.publish("$aws/things/relay-d/shadow/update",
                    {"state": {"desired": {"level": 5}}})
        delta = next_delta(deltas)
        assert delta.state == {"level": 5} and delta.version == 3

        # a stale or repeated delta (say, redelivered after a reconnect) is not passed on
        app.publish("$aws/things/relay-d/shadow/update/delta",
                    {"state": {"level": 1}, "version": 2, "timestamp": 1})
        app.publish("$aws/things/relay-d/shadow/update",
                    {"state": {"desired": {"level": 6}}})
        assert next_delta(deltas).state == {"level": 6}
        assert deltas.empty()
    finally:
        app.close()


def test_delta_missed_while_offline_is_delivered_on_connect(gateway, clients):
    creds = gateway.enrol("sleepy-1")
    app = gateway.peer("app-sleepy")
    try:
        app.subscribe("$aws/things/sleepy-1/shadow/update/accepted")
        app.publish("$aws/things/sleepy-1/shadow/update",
                    {"state": {"desired": {"on": True}, "reported": {"on": False}}})
        app.until("$aws/things/sleepy-1/shadow/update/accepted")
        client = gateway.client(creds)
        clients.append(client)
        deltas: queue.SimpleQueue = queue.SimpleQueue()
        client.shadow().on_delta(deltas.put)   # before connecting: caught up on connect
        client.connect(WAIT)
        delta = next_delta(deltas)
        assert delta.state == {"on": True} and delta.version == 1
        app.publish("$aws/things/sleepy-1/shadow/update", {"state": {"desired": {"on": 2}}})
        # the next one is the new version: version 1 was not delivered twice
        assert next_delta(deltas).version == 2
    finally:
        app.close()


def test_named_shadows_are_separate(gateway, clients):
    client = connected(gateway, clients, "multi-1")
    classic, config = client.shadow(), client.shadow("config")
    config_deltas: queue.SimpleQueue = queue.SimpleQueue()
    classic_deltas: queue.SimpleQueue = queue.SimpleQueue()
    config.on_delta(config_deltas.put)
    classic.on_delta(classic_deltas.put)
    assert config.desire({"interval": 30}).version == 1
    assert next_delta(config_deltas).state == {"interval": 30}
    with pytest.raises(ShadowNotFound):
        classic.get()
    assert config.get().desired == {"interval": 30}
    assert classic_deltas.empty()
    with pytest.raises(ValueError, match="invalid shadow name"):
        client.shadow("no/slashes")


def test_rejected_updates_raise_with_code_and_message(gateway, clients):
    client = connected(gateway, clients, "strict-1")
    shadow = client.shadow()
    too_deep = {"a": {"b": {"c": {"d": {"e": {"f": {"g": 1}}}}}}}
    with pytest.raises(ShadowRejected) as exc:
        shadow.report(too_deep)
    assert exc.value.code == 400 and "nesting" in exc.value.message
    assert "rejected: 400" in str(exc.value)
    with pytest.raises(ShadowRejected) as exc:
        shadow.report({"blob": "x" * 9000})
    assert exc.value.code == 413 and "size limit" in str(exc.value)
    shadow.report({"n": 1})
    with pytest.raises(ShadowVersionConflict) as exc:
        shadow.report({"n": 2}, version=5)
    assert exc.value.code == 409
    assert shadow.get().reported == {"n": 1}   # nothing changed
    with pytest.raises(TypeError):
        shadow.update(["not", "a", "mapping"])  # type: ignore[arg-type]


def test_modify_retries_a_version_conflict(gateway, clients):
    client = connected(gateway, clients, "counter-1")
    shadow = client.shadow()
    shadow.desire({"count": 0})
    app = gateway.peer("app-counter")
    calls = []

    def increment(doc):
        calls.append(doc.version)
        if len(calls) == 1:   # someone else writes between our get and our update
            app.publish("$aws/things/counter-1/shadow/update",
                        {"state": {"desired": {"count": 10}}})
            deadline = time.monotonic() + WAIT
            while shadow.get().version == doc.version and time.monotonic() < deadline:
                time.sleep(0.02)
        return {"desired": {"count": doc.desired["count"] + 1}}

    try:
        accepted = shadow.modify(increment)
    finally:
        app.close()
    assert calls == [1, 2]          # re-read after the conflict, then applied
    assert accepted.version == 3
    assert shadow.get().desired == {"count": 11}


def test_modify_gives_up_after_its_attempts(gateway, clients):
    client = connected(gateway, clients, "contended-1")
    shadow = client.shadow()
    shadow.report({"n": 0})
    other = client.shadow()   # a second writer that always gets in first

    def change(doc):
        other.report({"n": doc.reported["n"] + 100})
        return {"reported": {"n": doc.reported["n"] + 1}}

    with pytest.raises(ShadowVersionConflict, match="still after 3 attempts"):
        shadow.modify(change, attempts=3)
    assert shadow.get().reported == {"n": 300}
    assert shadow.modify(lambda doc: None) is None   # nothing to do: nothing sent


def test_shadow_callbacks_can_make_shadow_requests(gateway, clients):
    """on_delta runs off the network thread, so a callback may wait on a reply."""
    client = connected(gateway, clients, "echo-1")
    shadow = client.shadow()
    done: queue.SimpleQueue = queue.SimpleQueue()

    def follow(delta):
        done.put(shadow.report(delta.state).version)

    shadow.on_delta(follow)
    shadow.desire({"mode": "eco"})
    assert done.get(timeout=WAIT) == 2
    assert shadow.get().delta == {}
