"""Function tests: a real gateway process with function code written into tmp dirs, and a
paho client that collects what the functions publish."""

from __future__ import annotations

import json
import queue
import textwrap
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest

from tests.conftest import BrokerProcess


class Collector:
    """A paho client on the gateway's loopback port; every message lands in a queue."""

    def __init__(self, port: int) -> None:
        self.messages: queue.Queue = queue.Queue()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2,
                                  client_id=f"t-{uuid.uuid4().hex[:8]}")
        self.client.on_message = lambda c, u, m: self.messages.put((m.topic, m.payload))
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()

    def subscribe(self, *filters: str) -> None:
        for f in filters:
            info = self.client.subscribe(f, qos=1)
            assert info[0] == 0
        # a round trip: the SUBACKs are in once our own message comes back
        probe = f"probe/{uuid.uuid4().hex}"
        self.client.subscribe(probe, qos=1)
        self.client.publish(probe, b"x", qos=1)
        self.expect(probe)

    def publish(self, topic: str, payload: object, qos: int = 1) -> None:
        data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        self.client.publish(topic, data, qos=qos).wait_for_publish(5)

    def expect(self, topic: str, timeout: float = 20.0) -> bytes:
        """The next message on `topic` (others on the way are kept aside)."""
        aside = []
        try:
            while True:
                t, payload = self.messages.get(timeout=timeout)
                if t == topic:
                    return payload
                aside.append((t, payload))
        except queue.Empty:
            raise AssertionError(f"nothing on {topic} within {timeout}s; got {aside}") from None
        finally:
            for item in aside:
                self.messages.put(item)

    def expect_json(self, topic: str, timeout: float = 20.0) -> object:
        return json.loads(self.expect(topic, timeout))

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def write_code(directory: Path, modules: dict[str, str]) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    for name, source in modules.items():
        (directory / f"{name}.py").write_text(textwrap.dedent(source))
    return directory


@pytest.fixture
def gateway_with(tmp_path: Path) -> Iterator:
    """gateway_with(config_toml) -> (BrokerProcess, Collector), both closed afterwards."""
    started: list = []

    def start(config: str) -> tuple[BrokerProcess, Collector]:
        gw = BrokerProcess(tmp_path / "state", config=config, tls=False).start()
        started.append(gw)
        col = Collector(gw.port)
        started.append(col)
        return gw, col

    yield start
    for thing in reversed(started):
        if isinstance(thing, Collector):
            thing.close()
        else:
            thing.stop()


def fresh_functions_status(b: BrokerProcess) -> dict:
    """functions figures from status.json, once it has been rewritten (every 2 s)."""
    first = json.loads((b.state_dir / "status.json").read_text())["time"]
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        st = json.loads((b.state_dir / "status.json").read_text())
        if st["time"] != first:
            return st["functions"]
        time.sleep(0.1)
    raise AssertionError("status.json not rewritten within 10 s")
