"""Shadow sync against a stand-in IoT Core: a second Lichen gateway plays the cloud.

The cloud side is Lichen's own shadow service (the same AWS semantics the device side has)
in its own process, with a mutual-TLS listener built from the cloud stand-in's PKI (its CA,
server certificate and the gateway's client certificate), and a plaintext listener where
test "cloud apps" read and write the cloud's shadows. The syncing gateway reaches it through
a LinkProxy that the tests cut and restore.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from gateway.cloud.linkproxy import LinkProxy
from gateway.cloud.standin import make_pki
from tests.cloud.conftest import read_status, toml_value
from tests.conftest import ROOT, BrokerProcess

WAIT = 60.0
THING = "lichen-gateway"


def table(name: str, values: dict) -> list[str]:
    return [f"[{name}]"] + [f"{k} = {toml_value(v)}" for k, v in values.items()]


class SyncRig:
    """The cloud gateway, the link, and the syncing gateway."""

    def __init__(self, tmp: Path, sync: dict[str, Any]) -> None:
        self.files = make_pki(tmp / "pki", thing_name=THING)
        f = self.files
        cloud_cfg = table("listeners", {"tls_cert_file": str(f.cert("server")),
                                        "tls_key_file": str(f.key("server")),
                                        "tls_ca_file": str(f.ca)})
        self.cloud = BrokerProcess(tmp / "cloud", config="\n".join(cloud_cfg) + "\n").start()
        self.link = LinkProxy(self.cloud.tls_port)
        cloud = {"endpoint": "127.0.0.1", "port": self.link.port, "thing_name": THING,
                 "cert_file": str(f.cert("gateway")), "key_file": str(f.key("gateway")),
                 "ca_file": str(f.ca), "aws_iot_limits": False, "min_reconnect_s": 0.2,
                 "max_reconnect_s": 1.0}
        self.config = "\n".join(table("cloud", cloud) + table(
            "shadow_sync", {"enabled": True, **sync})) + "\n"
        self.gw = BrokerProcess(tmp / "gw", config=self.config, tls=False).start()

    def close(self) -> None:
        self.gw.stop()
        self.link.close()
        self.cloud.stop()

    # ---------------------------------------------------------------- waiting

    def wait_connected(self, connected: bool = True) -> None:
        want = "connected" if connected else "disconnected"
        wait_until(lambda: read_status(self.gw).get("cloud", {}).get("state") == want,
                   f"cloud link {want}", self.gw)

    def sync_status(self) -> dict:
        out = subprocess.run([sys.executable, "-m", "gateway.cli", "shadow", "sync-status",
                              "--state-dir", str(self.gw.state_dir), "--json"],
                             capture_output=True, text=True, cwd=ROOT, timeout=30)
        assert out.returncode == 0, out.stderr
        return json.loads(out.stdout)


def wait_until(predicate, what: str, gw: BrokerProcess | None = None,
               timeout: float = WAIT) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise AssertionError(f"never: {what}" + (f"\n{gw.log()[-4000:]}" if gw else ""))


class ShadowClient:
    """A plain MQTT client doing shadow requests on one side (device side or cloud side),
    and counting the accepted updates it sees there."""

    def __init__(self, port: int, client_id: str) -> None:
        self.c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id)
        self.lock = threading.Lock()
        self.replies: dict[str, dict] = {}
        self.accepted: list[tuple[str, dict]] = []
        self.c.on_message = self._on_message
        subscribed = threading.Event()
        self.c.on_subscribe = lambda *a: subscribed.set()
        self.c.connect("127.0.0.1", port, 30)
        self.c.loop_start()
        self.c.subscribe([("$aws/things/+/shadow/+/+", 1),
                          ("$aws/things/+/shadow/name/+/+/+", 1)])
        assert subscribed.wait(10)
        self.seq = 0

    def _on_message(self, _c, _u, m) -> None:
        try:
            doc = json.loads(m.payload)
        except ValueError:
            return
        with self.lock:
            token = doc.get("clientToken") if isinstance(doc, dict) else None
            if token and token.startswith("t-") and not m.topic.endswith("/documents") \
                    and not m.topic.endswith("/delta"):
                self.replies[token] = {"topic": m.topic, **doc}
            if m.topic.endswith("/update/accepted"):
                self.accepted.append((m.topic, doc))

    def request(self, thing: str, op: str, doc: dict | None = None,
                name: str | None = None) -> dict:
        self.seq += 1
        token = f"t-{self.seq}"
        body = dict(doc or {}, clientToken=token)
        base = f"$aws/things/{thing}/shadow" + (f"/name/{name}" if name else "")
        self.c.publish(f"{base}/{op}", json.dumps(body), 1).wait_for_publish(10)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with self.lock:
                if token in self.replies:
                    return self.replies.pop(token)
            time.sleep(0.02)
        raise AssertionError(f"no answer to {op} on {thing}")

    def state(self, thing: str, name: str | None = None) -> dict | None:
        """desired + reported, or None when there is no shadow."""
        reply = self.request(thing, "get", name=name)
        if reply["topic"].endswith("/rejected"):
            assert reply["code"] == 404, reply
            return None
        return {k: v for k, v in reply["state"].items() if k != "delta"}

    def version(self, thing: str) -> int:
        return self.request(thing, "get")["version"]

    def update(self, thing: str, state: dict, name: str | None = None) -> dict:
        reply = self.request(thing, "update", {"state": state}, name)
        assert reply["topic"].endswith("/accepted"), reply
        return reply

    def close(self) -> None:
        self.c.disconnect()
        self.c.loop_stop()
