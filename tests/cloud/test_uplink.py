"""The uplink at fleet scale (issue #13), against the mosquitto stand-in through the cuttable
link: an idle connection costs no CPU, a short outage is followed by a prompt reconnect, and
a backlog is visible in status.json, `lichen status`, the retained connection topic and,
when it keeps growing, the log. Bounds on time are loose: they detect a spinning loop or a
reconnect that waits for the wrong reason, they do not benchmark."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

from tests.cloud.conftest import read_status, wait_cloud_state, wait_cloud_status
from tests.cloud.test_bridge import Device, all_arrived, cloud_topic
from tests.conftest import ROOT

TICK = os.sysconf("SC_CLK_TCK")
SHIPPED_RECONNECT = {"min_reconnect_s": 1.0, "max_reconnect_s": 120.0}


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK   # utime + stime, all threads


def wait_log(gw, text: str, timeout: float = 20.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if text in gw.log():
            return True
        time.sleep(0.1)
    return False


def test_connected_and_idle_the_gateway_does_not_spin(make_gateway):
    gw = make_gateway()
    wait_cloud_state(gw, "connected")
    time.sleep(1.0)   # start-up work done
    cpu0, t0 = cpu_seconds(gw.proc.pid), time.monotonic()
    time.sleep(3.0)
    used = cpu_seconds(gw.proc.pid) - cpu0
    span = time.monotonic() - t0
    # a spin detector, not a timing test: a busy loop burns ~100% of a core
    assert used < 0.10 * span, f"idle gateway used {used:.2f} s of CPU in {span:.1f} s"
    assert read_status(gw)["cloud"]["state"] == "connected"


def test_reconnects_promptly_after_a_short_outage(make_gateway, observer, link):
    gw = make_gateway(cloud=SHIPPED_RECONNECT)   # the shipped reconnect settings
    wait_cloud_state(gw, "connected")
    dev = Device(gw.port, "short-outage")
    dev.publish("sensors/o", b"0")
    assert observer.wait_for(all_arrived(dev.acked()), 20)
    link.cut()
    wait_cloud_status(gw, lambda c: c["state"] != "connected")
    dev.publish("sensors/o", b"1")   # spooled while the link is down
    dev.settle()
    time.sleep(8.0)
    link.restore()
    restored = time.monotonic()
    # After 8 s down the wait is at most max(1, 120 * 8 / 600) = 1.6 s; the attempt-counting
    # backoff it replaces could wait up to 16 s. 8 s is a generous correctness bound.
    assert observer.wait_for(all_arrived(dev.acked()), 30), read_status(gw)
    took = time.monotonic() - restored
    assert took < 8.0, f"the drain started {took:.1f} s after the link came back"
    dev.close()


def test_backlog_in_status_cli_retained_topic_and_log(make_gateway, observer, link):
    link.cut()
    gw = make_gateway(cloud={"backlog_warn_after_s": 1})
    dev = Device(gw.port, "backlog")
    docs: list[dict] = []
    dev.client.on_message = lambda c, u, m: docs.append(json.loads(m.payload))
    dev.client.subscribe("$lichen/cloud/connection", 1)
    for i in range(30):   # traffic while the link is down: the backlog grows
        dev.publish("sensors/b", str(i).encode())
        time.sleep(0.1)
    dev.settle()
    assert len(dev.acked()) == 30

    spool = wait_cloud_status(gw, lambda c: c["spool"]["messages"] == 30
                              and c["spool"]["oldest_age_s"] >= 2)["spool"]
    assert spool["drain_per_s"] == 0 and spool["drain_eta_s"] is None, spool
    assert wait_log(gw, "cloud backlog growing"), gw.log()[-2000:]
    assert "the cloud is not connected" in gw.log()
    retained = [d for d in docs if d.get("backlog", {}).get("messages") == 30]
    assert retained and retained[-1]["backlog"]["oldest_age_s"] >= 1, docs[-3:]
    out = subprocess.run([sys.executable, "-m", "gateway.cli", "status", "--state-dir",
                          str(gw.state_dir)], capture_output=True, text=True, cwd=ROOT,
                         timeout=30)
    assert "backlog: oldest" in out.stdout and "not draining" in out.stdout, out.stdout

    link.restore()
    assert observer.wait_for(all_arrived(dev.acked()), 30)
    assert {cloud_topic("sensors/b")} == {t for t, _ in observer.messages}
    spool = wait_cloud_status(gw, lambda c: c["spool"]["messages"] == 0
                              and c["spool"]["drain_per_s"] > 0)["spool"]
    assert spool["drain_eta_s"] == 0 and spool["oldest_age_s"] is None, spool
    # the retained document says so too once the backlog is gone
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and docs[-1]["backlog"]["messages"] != 0:
        time.sleep(0.1)
    assert docs[-1]["backlog"]["messages"] == 0, docs[-1]
    out = subprocess.run([sys.executable, "-m", "gateway.cli", "status", "--state-dir",
                          str(gw.state_dir)], capture_output=True, text=True, cwd=ROOT,
                         timeout=30)
    assert "backlog: oldest 0 s" in out.stdout and "empty" in out.stdout, out.stdout
    dev.close()
