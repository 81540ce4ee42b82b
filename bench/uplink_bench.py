"""The cloud uplink's idle cost and reconnect delay (issue #13), against the mosquitto
stand-in for AWS IoT Core reached through a cuttable link (gateway.cloud.linkproxy).

idle: a gateway with a cloud connection and routes, connected and with no traffic; its CPU
    time (utime + stime from /proc/PID/stat, all threads) over --seconds, as % of a core.
reconnect: per run, a fresh gateway with the shipped reconnect settings; a device publishes
    10 messages/s; the link is cut for --outage seconds and restored. Measured: from the
    restore to the first message spooled during the outage arriving in the cloud (the
    drain starts). Reported min/median/max over --runs, and how many were within 5 s.

Usage: python bench/uplink_bench.py idle [--seconds 30]
       python bench/uplink_bench.py reconnect [--runs 10] [--outage 20]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import paho.mqtt.client as mqtt

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from gateway.cloud.linkproxy import LinkProxy  # noqa: E402
from gateway.cloud.standin import Standin, free_port, wait_port  # noqa: E402

THING = "bench-gateway"
TICK = os.sysconf("SC_CLK_TCK")


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


class Gateway:
    """lichen run, bridged to the stand-in through `link`, with the shipped [cloud] settings
    apart from where the cloud is (aws_iot_limits stays on, as in production)."""

    def __init__(self, work: Path, standin: Standin, link: LinkProxy) -> None:
        self.work = work
        self.state = work / "state"
        self.port = free_port()
        cloud = standin.cloud_config(link.port)
        for shipped in ("aws_iot_limits", "min_reconnect_s", "max_reconnect_s"):
            cloud.pop(shipped)   # the defaults, not the stand-in's fast test values
        lines = ["[cloud]"] + [f"{k} = {json.dumps(v)}" for k, v in cloud.items()]
        lines += ["[[routes]]", 'name = "up"', 'direction = "up"', 'filter = "bench/#"',
                  'topic = "dt/{thing}/{topic}"']
        self.conf = work / "lichen.toml"
        self.conf.write_text("\n".join(lines) + "\n")
        out = open(work / "lichen.log", "ab")  # noqa: SIM115 - for the child
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "gateway.cli", "run", "--state-dir", str(self.state),
             "--mqtt-port", str(self.port), "--tls-port", "0", "--discovery-port", "0",
             "--config", str(self.conf)],
            stdout=out, stderr=subprocess.STDOUT, cwd=ROOT, start_new_session=True,
            env=dict(os.environ, PYTHONPATH=str(ROOT)))
        out.close()
        wait_port(self.port, 30)

    def cloud_state(self) -> str | None:
        try:
            return json.loads((self.state / "status.json").read_text())["cloud"]["state"]
        except (OSError, ValueError, KeyError):
            return None

    def wait_connected(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while self.cloud_state() != "connected":
            if time.monotonic() > deadline:
                raise TimeoutError("the gateway never connected to the stand-in")
            time.sleep(0.1)

    def cpu_seconds(self) -> float:
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / TICK   # utime, stime

    def stop(self) -> None:
        os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)


class CloudWatcher:
    """A subscriber on the stand-in that notes when each payload first arrived."""

    def __init__(self, standin: Standin) -> None:
        f = standin.files
        self.arrived: dict[bytes, float] = {}
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="bench-watcher")
        self.client.tls_set(ca_certs=str(f.ca), certfile=str(f.cert("observer")),
                            keyfile=str(f.key("observer")))
        subscribed = threading.Event()
        self.client.on_subscribe = lambda *a: subscribed.set()
        self.client.on_message = lambda c, u, m: self.arrived.setdefault(m.payload,
                                                                         time.monotonic())
        self.client.connect("127.0.0.1", standin.port)
        self.client.loop_start()
        self.client.subscribe(f"dt/{THING}/#", 1)
        if not subscribed.wait(10):
            raise TimeoutError("cannot subscribe on the stand-in")

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def idle(seconds: float) -> dict:
    with tempfile.TemporaryDirectory(prefix="uplink-idle-") as tmp:
        work = Path(tmp)
        standin = Standin(work / "standin", thing_name=THING)
        standin.start()
        link = LinkProxy(standin.port)
        gw = Gateway(work, standin, link)
        try:
            gw.wait_connected()
            time.sleep(2.0)   # start-up work done
            cpu0, t0 = gw.cpu_seconds(), time.monotonic()
            time.sleep(seconds)
            cpu1, t1 = gw.cpu_seconds(), time.monotonic()
            assert gw.cloud_state() == "connected"
        finally:
            gw.stop()
            link.close()
            standin.stop()
    pct = 100 * (cpu1 - cpu0) / (t1 - t0)
    return {"seconds": round(t1 - t0, 1), "cpu_s": round(cpu1 - cpu0, 2),
            "cpu_pct_of_core": round(pct, 1)}


def reconnect_once(outage: float) -> dict:
    with tempfile.TemporaryDirectory(prefix="uplink-reconnect-") as tmp:
        work = Path(tmp)
        standin = Standin(work / "standin", thing_name=THING)
        standin.start()
        link = LinkProxy(standin.port)
        gw = Gateway(work, standin, link)
        watcher = CloudWatcher(standin)
        dev = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="bench-device",
                          protocol=mqtt.MQTTv5)
        stop = threading.Event()
        try:
            gw.wait_connected()
            dev.connect("127.0.0.1", gw.port)
            dev.loop_start()

            def stream() -> None:
                i = 0
                while not stop.is_set():
                    dev.publish("bench/r", str(i).encode(), 1)
                    i += 1
                    stop.wait(0.1)

            t = threading.Thread(target=stream)
            t.start()
            time.sleep(2.0)
            link.cut()
            time.sleep(outage)
            first_unsent = None
            restored = time.monotonic()
            link.restore()
            deadline = restored + 300
            while time.monotonic() < deadline:
                late = [at for at in watcher.arrived.values() if at > restored]
                if late:
                    first_unsent = min(late)
                    break
                time.sleep(0.01)
            stop.set()
            t.join(5)
        finally:
            stop.set()
            dev.loop_stop()
            watcher.close()
            gw.stop()
            link.close()
            standin.stop()
    delay = None if first_unsent is None else first_unsent - restored
    return {"drain_starts_after_s": None if delay is None else round(delay, 2)}


def reconnect(runs: int, outage: float) -> dict:
    delays = []
    for i in range(runs):
        r = reconnect_once(outage)
        log(f"run {i + 1}/{runs}: {outage:g} s outage, drain started after "
            f"{r['drain_starts_after_s']} s")
        delays.append(r["drain_starts_after_s"] if r["drain_starts_after_s"] is not None
                      else float("inf"))
    return {"outage_s": outage, "runs": runs, "delays_s": delays, "min_s": min(delays),
            "median_s": statistics.median(delays), "max_s": max(delays),
            "within_5s": sum(d <= 5.0 for d in delays)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="what", required=True)
    p = sub.add_parser("idle", help="CPU of a connected, idle gateway")
    p.add_argument("--seconds", type=float, default=30.0)
    p = sub.add_parser("reconnect", help="drain start after an outage")
    p.add_argument("--runs", type=int, default=10)
    p.add_argument("--outage", type=float, default=20.0)
    args = parser.parse_args()
    result = idle(args.seconds) if args.what == "idle" else reconnect(args.runs, args.outage)
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
