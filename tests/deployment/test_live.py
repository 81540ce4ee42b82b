"""Deployments to a real gateway process: in place with a device connected, a failed
health check rolled back, kill -9 at each step, and an offline apply picked up at start."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest

from tests.conftest import BrokerProcess
from tests.deployment.helpers import (
    ROOT,
    document,
    handler_source,
    invoke,
    lichen,
    status,
    wait_for,
)


class Device:
    """A paho client that records every disconnect."""

    def __init__(self, port: int) -> None:
        self.disconnects = 0
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2,
                                  client_id=f"dev-{uuid.uuid4().hex[:8]}")
        self.client.on_disconnect = self._gone
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        wait_for(self.client.is_connected, "device connected", 10)

    def _gone(self, *_args) -> None:
        self.disconnects += 1

    def round_trip(self) -> None:
        info = self.client.publish("dev/ping", b"x", qos=1)
        info.wait_for_publish(10)
        assert info.is_published()

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def _apply(state: Path, doc: Path) -> subprocess.CompletedProcess:
    return lichen("deploy", "apply", str(doc), "--state-dir", str(state), "--timeout", "90")


def _gateway(state: Path) -> BrokerProcess:
    return BrokerProcess(state, tls=False).start()


def _last(state: Path) -> dict:
    return status(state)["last"]


def _running_functions(state: Path) -> set[str]:
    data = json.loads((state / "status.json").read_text())
    return set(data.get("functions") or {})


def test_apply_in_place_keeps_devices_connected(tmp_path: Path) -> None:
    state = tmp_path / "state"
    v1 = document(tmp_path, {"echo-a": handler_source("a")}, name="v1")
    assert _apply(state, v1).returncode == 0  # offline: version 1 for the first start
    gw = _gateway(state)
    try:
        wait_for(lambda: _last(state)["state"] == "SUCCEEDED", "version 1 health-checked")
        device = Device(gw.port)
        v2 = document(tmp_path, {"echo-a": handler_source("a"), "echo-b": handler_source("b")},
                      model=True, name="v2",
                      routes=[{"name": "up", "direction": "up", "filter": "dev/#",
                               "topic": "dt/{topic}", "qos": 1}])
        r = _apply(state, v2)
        assert r.returncode == 0, r.stderr
        assert "SUCCEEDED" in r.stdout
        assert invoke(state, "echo-b") == {"fn": "b"}
        assert invoke(state, "echo-a") == {"fn": "a"}
        device.round_trip()
        assert device.disconnects == 0 and device.client.is_connected()
        version = status(state)["version"]
        config = (state / "deployments" / "versions" / str(version) / "config.toml").read_text()
        assert "digits" in config and "dev/#" in config
        device.close()
    finally:
        gw.stop()


BROKEN = "raise RuntimeError('cannot import me')\ndef handler(event, context):\n    return 1\n"


def test_failed_health_check_rolls_back(tmp_path: Path) -> None:
    state = tmp_path / "state"
    gw = _gateway(state)
    try:
        v1 = document(tmp_path, {"echo-a": handler_source("a")}, name="v1")
        assert _apply(state, v1).returncode == 0
        good = status(state)["version"]
        bad = document(tmp_path, {"echo-a": BROKEN}, name="bad")
        r = _apply(state, bad)
        assert r.returncode == 1
        line = r.stderr.strip()
        assert "\n" not in line and "FAILED" in line and "cannot import me" in line, line
        assert f"rolled back to version {good}" in line
        assert status(state)["version"] == good
        assert _last(state)["state"] == "FAILED"
        assert invoke(state, "echo-a") == {"fn": "a"}
    finally:
        gw.stop()


def test_config_flag_refuses_deployments(tmp_path: Path) -> None:
    state = tmp_path / "state"
    gw = BrokerProcess(state, tls=False, config="log_level = \"info\"\n").start()
    try:
        wait_for(lambda: (state / "status.json").exists(), "status written", 20)
        r = _apply(state, document(tmp_path, {"echo-a": handler_source("a")}))
        assert r.returncode == 1 and "--config" in r.stderr
        assert "\n" not in r.stderr.strip()
    finally:
        gw.stop()


@pytest.mark.parametrize("step", ["VALIDATED", "STAGED", "SWITCHING", "SWITCHED",
                                  "HEALTH_CHECK"])
def test_kill_at_each_step(tmp_path: Path, step: str, monkeypatch) -> None:
    """kill -9 with the deployment paused at `step`; after a restart the gateway runs the
    old version or the new one, whole, and the deployment is final."""
    state = tmp_path / "state"
    v1 = document(tmp_path, {"echo-a": handler_source("a")}, name="v1")
    assert _apply(state, v1).returncode == 0
    gw = _gateway(state)
    wait_for(lambda: _last(state)["state"] == "SUCCEEDED", "version 1 health-checked")
    gw.stop()
    monkeypatch.setenv("LICHEN_DEPLOY_PAUSE_AT", step)
    gw.start()
    monkeypatch.delenv("LICHEN_DEPLOY_PAUSE_AT")
    cli = None
    try:
        v2 = document(tmp_path, {"echo-a": handler_source("a2"), "echo-b": handler_source("b")},
                      name="v2")
        cli = subprocess.Popen([sys.executable, "-m", "gateway.cli", "deploy", "apply",
                                str(v2), "--state-dir", str(state), "--timeout", "60"],
                               cwd=ROOT, env=dict(os.environ, PYTHONPATH=str(ROOT)),
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        marker = state / "deployments" / f"paused-at-{step}"
        wait_for(marker.exists, f"paused at {step}")
        # what the running gateway is doing shows in `lichen deploy status` meanwhile
        live = wait_for(lambda: status(state)["progress"], "progress in deploy status", 15)
        assert live["deployment"] == _last(state)["id"] and live["step"], live
        gw.kill()
        marker.unlink()
        gw.start()
        wait_for(lambda: _last(state)["state"] in ("SUCCEEDED", "FAILED"), "a final state")
        version = status(state)["version"]
        wait_for(lambda: _running_functions(state), "status.json lists functions", 20)
        if version == 1:
            assert _running_functions(state) == {"echo-a"}
            assert invoke(state, "echo-a") == {"fn": "a"}
        else:
            assert _last(state)["state"] == "SUCCEEDED"
            wait_for(lambda: _running_functions(state) == {"echo-a", "echo-b"},
                     "the new version's functions", 20)
            assert invoke(state, "echo-a") == {"fn": "a2"}
            assert invoke(state, "echo-b") == {"fn": "b"}
    finally:
        if cli is not None:
            cli.send_signal(signal.SIGKILL)
            cli.wait(timeout=10)
        gw.stop()


def test_offline_apply_then_start(tmp_path: Path) -> None:
    state = tmp_path / "state"
    doc = document(tmp_path, {"echo-a": handler_source("a")}, model=True)
    r = _apply(state, doc)
    assert r.returncode == 0 and "next start" in r.stdout
    assert _last(state)["state"] == "SWITCHED"
    gw = _gateway(state)
    try:
        wait_for(lambda: _last(state)["state"] == "SUCCEEDED", "health-checked at start")
        assert invoke(state, "echo-a") == {"fn": "a"}
        r = lichen("deploy", "rollback", "--state-dir", str(state), "--timeout", "60")
        assert r.returncode == 0, r.stderr
        assert status(state)["version"] == 0
        history = json.loads(lichen("deploy", "history", "--state-dir", str(state),
                                    "--json").stdout)
        assert [h["state"] for h in history] == ["SUCCEEDED", "ROLLED_BACK"]
    finally:
        gw.stop()
