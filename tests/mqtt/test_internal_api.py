"""The in-process interface other components use: publish as the gateway, callbacks on
filters, and authorisation hooks, with real MQTT clients on a real socket."""

from __future__ import annotations

import asyncio
import queue
import threading

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from gateway.config import MQTTLimits
from gateway.mqtt import reason_codes as rc
from gateway.mqtt.auth_hooks import AuthHooks, ClientInfo
from gateway.mqtt.broker import Broker
from gateway.mqtt.store import BrokerStore
from gateway.mqtt.topics import InvalidTopic
from tests.conftest import free_port


class BrokerThread:
    """A Broker on its own event loop in a background thread."""

    def __init__(self, broker: Broker) -> None:
        self.broker = broker
        self.port = free_port()
        self.loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)

        async def start() -> None:
            await self.broker.start()
            await self.broker.listen_tcp("127.0.0.1", self.port)
            self._ready.set()

        self.loop.run_until_complete(start())
        self.loop.run_forever()

    def __enter__(self) -> BrokerThread:
        self._thread.start()
        assert self._ready.wait(10)
        return self

    def call(self, fn, *args):
        """Run fn(*args) on the broker's loop and return its result."""
        async def wrapper():
            result = fn(*args)
            if asyncio.iscoroutine(result):
                result = await result
            return result
        return asyncio.run_coroutine_threadsafe(wrapper(), self.loop).result(10)

    def __exit__(self, *exc) -> None:
        self.call(self.broker.stop)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)


def client(port: int, client_id: str, v5: bool = True) -> tuple[mqtt.Client, queue.Queue]:
    proto = mqtt.MQTTv5 if v5 else mqtt.MQTTv311
    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=proto)
    inbox: queue.Queue = queue.Queue()
    connected = threading.Event()
    c.on_message = lambda _c, _u, m: inbox.put(m)
    c.on_connect = lambda *_a: connected.set()
    c.connect("127.0.0.1", port, 30)
    c.loop_start()
    assert connected.wait(5)
    return c, inbox


def test_callback_gets_device_publishes_and_gateway_publish_reaches_devices():
    got: queue.Queue = queue.Queue()
    with BrokerThread(Broker()) as bt:
        handle = bt.call(bt.broker.subscribe_callback, "sensors/+/temp", got.put)
        dev, inbox = client(bt.port, "dev1")
        dev.subscribe("commands/#", qos=1)[1]
        dev.publish("sensors/t1/temp", b"21.5", qos=1).wait_for_publish(5)
        msg = got.get(timeout=5)
        assert (msg.topic, msg.payload, msg.origin) == ("sensors/t1/temp", b"21.5", "dev1")
        # wait until the subscription is in place, then publish as the gateway
        for _ in range(50):
            if bt.call(lambda: bt.broker.trie.count) >= 2:
                break
            threading.Event().wait(0.05)
        bt.call(bt.broker.publish, "commands/relay", b"on", 1, False,
                {"user_property": [("from", "gateway")]})
        m = inbox.get(timeout=5)
        assert (m.topic, m.payload, m.qos) == ("commands/relay", b"on", 1)
        assert ("from", "gateway") in m.properties.UserProperty
        bt.call(bt.broker.unsubscribe_callback, handle)
        dev.publish("sensors/t1/temp", b"22", qos=1).wait_for_publish(5)
        with pytest.raises(queue.Empty):
            got.get(timeout=0.3)
        dev.disconnect()
        dev.loop_stop()


def test_gateway_publish_validates_its_input():
    with BrokerThread(Broker()) as bt:
        with pytest.raises(InvalidTopic):
            bt.call(bt.broker.publish, "a/+", b"x")
        with pytest.raises(ValueError):
            bt.call(bt.broker.publish, "a/b", b"x", 3)
        with pytest.raises(InvalidTopic):
            bt.call(bt.broker.subscribe_callback, "a/#/b", print)


def test_failing_callback_does_not_stop_routing():
    got: queue.Queue = queue.Queue()

    def boom(_msg):
        raise RuntimeError("component bug")

    with BrokerThread(Broker()) as bt:
        bt.call(bt.broker.subscribe_callback, "x/#", boom)
        bt.call(bt.broker.subscribe_callback, "x/#", got.put)
        bt.call(bt.broker.publish, "x/y", b"1")
        assert got.get(timeout=5).payload == b"1"


def test_durable_gateway_publish_is_flushed(tmp_path):
    store = BrokerStore(tmp_path / "b.sqlite3")
    with BrokerThread(Broker(store=store)) as bt:
        assert bt.call(bt.broker.publish, "cfg/version", b"7", 1, True) is True
        bt.call(bt.broker.flush)
    again = BrokerStore(tmp_path / "b.sqlite3")
    assert [(m.topic, m.payload) for m in again.load_retained()] == [("cfg/version", b"7")]
    again.close()


class OwnTopics:
    """Permissions: only topics under the client's own id (and '#' to subscribe)."""

    def __init__(self, client_id: str) -> None:
        self.prefix = client_id + "/"

    def can_publish(self, topic: str) -> bool:
        return topic.startswith(self.prefix)

    def can_subscribe(self, topic_filter: str) -> bool:
        return topic_filter.startswith(self.prefix) or topic_filter == "#"

    def can_receive(self, topic: str) -> bool:
        return topic.startswith(self.prefix)


class OnlyOwnTopics(AuthHooks):
    """'bad' may not connect; everyone else is restricted to OwnTopics."""

    def authenticate(self, info: ClientInfo, password: bytes | None) -> int:
        if info.client_id == "bad":
            return rc.NOT_AUTHORIZED
        info.permissions = OwnTopics(info.client_id)
        return rc.SUCCESS


def test_auth_hooks_are_enforced():
    with BrokerThread(Broker(MQTTLimits(sys_interval=0), auth=OnlyOwnTopics())) as bt:
        refused = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="bad",
                              protocol=mqtt.MQTTv5)
        codes: queue.Queue = queue.Queue()
        refused.on_connect = lambda _c, _u, _f, reason, _p: codes.put(reason)
        refused.connect("127.0.0.1", bt.port)
        refused.loop_start()
        assert codes.get(timeout=5).value == rc.NOT_AUTHORIZED
        refused.loop_stop()

        a, inbox_a = client(bt.port, "a")
        granted: queue.Queue = queue.Queue()
        a.on_subscribe = lambda _c, _u, _mid, reasons, _p: granted.put(
            [r.value for r in reasons])
        a.subscribe([("a/#", 1), ("b/#", 1)])
        assert granted.get(timeout=5) == [1, rc.NOT_AUTHORIZED]
        a.subscribe("#", 1)  # allowed, but receive filtering applies
        granted.get(timeout=5)
        b, _ = client(bt.port, "b")
        b.publish("b/x", b"not for a", qos=1).wait_for_publish(5)
        info = b.publish("a/x", b"denied", qos=1)
        info.wait_for_publish(5)
        a.publish("a/x", b"mine", qos=1).wait_for_publish(5)
        m = inbox_a.get(timeout=5)
        assert (m.topic, m.payload) == ("a/x", b"mine")
        with pytest.raises(queue.Empty):
            inbox_a.get(timeout=0.3)
        for c in (a, b):
            c.disconnect()
            c.loop_stop()
