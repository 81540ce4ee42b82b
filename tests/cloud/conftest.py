"""A cloud stand-in (mosquitto, mutual TLS), a cuttable link to it, an observer on the cloud
side, and gateways configured to reach the stand-in through the link."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest

from gateway.cloud.linkproxy import LinkProxy
from gateway.cloud.standin import Standin
from tests.conftest import BrokerProcess

UP = {"name": "telemetry", "direction": "up", "filter": "sensors/#",
      "topic": "dt/{thing}/{topic}"}
DOWN = {"name": "commands", "direction": "down", "filter": "cmd/{thing}/#",
        "topic": "commands/{3}"}


def toml_value(v) -> str:
    if isinstance(v, dict):   # an inline table
        return "{ " + ", ".join(f"{k} = {toml_value(x)}" for k, x in v.items()) + " }"
    return json.dumps(v) if not isinstance(v, bool) else str(v).lower()


def gateway_config(cloud: dict, routes: list[dict], spool: dict | None = None) -> str:
    lines = ["[cloud]"] + [f"{k} = {toml_value(v)}" for k, v in cloud.items()]
    if spool:
        lines += ["[spool]"] + [f"{k} = {toml_value(v)}" for k, v in spool.items()]
    for r in routes:
        lines += ["[[routes]]"] + [f"{k} = {toml_value(v)}" for k, v in r.items()]
    return "\n".join(lines) + "\n"


class Observer:
    """A client of the stand-in that records what reaches the cloud."""

    def __init__(self, standin: Standin, topic: str = "dt/#") -> None:
        self.messages: list[tuple[str, bytes]] = []
        self.lock = threading.Lock()
        files = standin.files
        c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="observer",
                        clean_session=False)
        c.tls_set(ca_certs=str(files.ca), certfile=str(files.cert("observer")),
                  keyfile=str(files.key("observer")))
        c.on_message = self._on_message
        subscribed = threading.Event()
        c.on_subscribe = lambda *a: subscribed.set()
        c.connect("127.0.0.1", standin.port)
        c.loop_start()
        c.subscribe(topic, 1)
        assert subscribed.wait(10), "observer could not subscribe to the stand-in"
        self.client = c

    def _on_message(self, client, userdata, m) -> None:
        with self.lock:
            self.messages.append((m.topic, m.payload))

    def wait_for(self, predicate, timeout: float = 30.0) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                if predicate(list(self.messages)):
                    return True
            time.sleep(0.05)
        return False

    def publish(self, topic: str, payload: bytes, qos: int = 1) -> None:
        self.client.publish(topic, payload, qos).wait_for_publish(10)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
def standin(tmp_path: Path) -> Iterator[Standin]:
    s = Standin(tmp_path / "standin")
    s.start()
    yield s
    s.stop()


@pytest.fixture
def link(standin: Standin) -> Iterator[LinkProxy]:
    proxy = LinkProxy(standin.port)
    yield proxy
    proxy.close()


@pytest.fixture
def observer(standin: Standin) -> Iterator[Observer]:
    o = Observer(standin)
    yield o
    o.close()


@pytest.fixture
def make_gateway(tmp_path: Path, standin: Standin, link: LinkProxy):
    started: list[BrokerProcess] = []

    def make(routes: list[dict] | None = None, spool: dict | None = None,
             cloud: dict | None = None) -> BrokerProcess:
        c = standin.cloud_config(link.port)
        c.update(cloud or {})
        config = gateway_config(c, [UP, DOWN] if routes is None else routes, spool)
        gw = BrokerProcess(tmp_path / f"gw{len(started)}", config=config, tls=False).start()
        started.append(gw)
        return gw

    yield make
    for gw in started:
        gw.stop()


def read_status(gw: BrokerProcess) -> dict:
    path = gw.state_dir / "status.json"
    return json.loads(path.read_text()) if path.exists() else {}


def wait_cloud_state(gw: BrokerProcess, state: str, timeout: float = 20.0) -> dict:
    deadline = time.monotonic() + timeout
    status: dict = {}
    while time.monotonic() < deadline:
        status = read_status(gw).get("cloud", {})
        if status.get("state") == state:
            return status
        time.sleep(0.1)
    raise AssertionError(f"cloud state never became {state!r}: {status}\n{gw.log()[-3000:]}")


def wait_cloud_status(gw: BrokerProcess, predicate, timeout: float = 20.0) -> dict:
    """The cloud part of status.json once predicate(it) holds (it is rewritten every 2 s)."""
    deadline = time.monotonic() + timeout
    status: dict = {}
    while time.monotonic() < deadline:
        status = read_status(gw).get("cloud", {})
        try:
            if predicate(status):
                return status
        except (KeyError, TypeError):
            pass
        time.sleep(0.1)
    raise AssertionError(f"cloud status never matched: {status}")
