"""Past IoT Core's 100 publishes/s per connection (issue #13 item 5): a steady load through
a gateway that paces itself as IoT Core requires (`aws_iot_limits = true`: the SDK sends
at most 100 publishes/s on each connection), to the stand-in.

Four devices publish 64-byte QoS 1 messages at --rate in total for --seconds (the devices of
bench/uplink_cpu.py). The gateway's route either batches (--batch N: up to N messages per
publish, 128 KB, --delay-ms) or not (--batch 0), over --connections connections. Sampled
every 2 s from status.json: the spool's depth. At the end: whether the cloud received every
message (a paho observer unpacks the batches), duplicates, publishes it took, the deepest
backlog and the gateway's CPU per message. No mosquitto here: its bridge has neither
batching nor IoT Core's limit (bench/uplink_cpu.py compares CPU with it).

Usage: python bench/uplink_scale.py [--rate 800] [--seconds 600] [--batch 100]
       python bench/uplink_scale.py --batch 0 --connections 10 --topics 10   # connections
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import threading
import time
from pathlib import Path

import paho.mqtt.client as mqtt

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from spool_bench import THING, LichenGateway  # noqa: E402
from uplink_cpu import DEVICES, cpu_seconds, loadavg, publish  # noqa: E402

from gateway.cloud.batch import unpack  # noqa: E402
from gateway.cloud.linkproxy import LinkProxy  # noqa: E402
from gateway.cloud.standin import Standin  # noqa: E402


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


class ScaleGateway(LichenGateway):
    def __init__(self, work: Path, standin: Standin, link: LinkProxy, batch: int,
                 delay_ms: int, connections: int) -> None:
        super().__init__(work, standin, link)
        self.batch, self.delay_ms, self.connections = batch, delay_ms, connections

    def command(self) -> list[str]:
        cmd = super().command()
        conf = self.work / "lichen.toml"
        text = conf.read_text().replace('aws_iot_limits = false', 'aws_iot_limits = true')
        text = text.replace("[cloud]\n", f"[cloud]\nconnections = {self.connections}\n")
        if self.batch:
            text += (f"batch = {{ max_messages = {self.batch}, max_bytes = 131072, "
                     f"max_delay_ms = {self.delay_ms} }}\n")
        conf.write_text(text)
        return cmd

    def status(self) -> dict:
        try:
            return json.loads((self.work / "lichen-state" / "status.json").read_text())["cloud"]
        except (OSError, ValueError, KeyError):
            return {}


class Counter:
    """Counts distinct messages reaching the cloud, unpacking batches."""

    def __init__(self, standin: Standin) -> None:
        f = standin.files
        self.seen: set[tuple[str, bytes]] = set()
        self.arrivals = 0
        self.publishes = 0
        self.lock = threading.Lock()
        c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="scale-observer")
        c.tls_set(ca_certs=str(f.ca), certfile=str(f.cert("observer")),
                  keyfile=str(f.key("observer")))
        c.on_message = self._on_message
        subscribed = threading.Event()
        c.on_subscribe = lambda *a: subscribed.set()
        c.connect("127.0.0.1", standin.port)
        c.loop_start()
        c.subscribe(f"dt/{THING}/#", 1)
        if not subscribed.wait(10):
            raise TimeoutError("cannot subscribe on the stand-in")
        self.client = c

    def _on_message(self, client, userdata, m) -> None:
        if m.payload.startswith(b'{"batch":1'):
            items = [(x.topic, x.payload) for x in unpack(m.payload)]
        else:
            items = [(m.topic, m.payload)]
        with self.lock:
            self.publishes += 1
            self.arrivals += len(items)
            self.seen.update(items)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def run(args: argparse.Namespace) -> dict:
    count = int(args.rate * args.seconds)
    with tempfile.TemporaryDirectory(prefix="uplink-scale-") as tmp:
        work = Path(tmp)
        standin = Standin(work / "standin", thing_name=THING)
        standin.start()
        link = LinkProxy(standin.port)
        gw = ScaleGateway(work, standin, link, args.batch, args.delay_ms, args.connections)
        counter = Counter(standin)
        depths: list[int] = []
        try:
            gw.start()
            deadline = time.monotonic() + 60
            while gw.status().get("state") != "connected" and time.monotonic() < deadline:
                time.sleep(0.2)
            load = loadavg()
            cpu0, t0 = cpu_seconds(gw.proc.pid), time.monotonic()
            feeder = threading.Thread(target=publish,
                                      args=(gw.port, count, args.rate, args.topics))
            feeder.start()
            while feeder.is_alive():
                feeder.join(2.0)
                depths.append(gw.status().get("spool", {}).get("messages", 0))
                if len(depths) % 15 == 0:
                    log(f"  {time.monotonic() - t0:5.0f} s: backlog {depths[-1]}, cloud has "
                        f"{len(counter.seen)}")
            published = time.monotonic()
            drain_deadline = published + max(60.0, args.seconds)
            while len(counter.seen) < count and time.monotonic() < drain_deadline:
                time.sleep(0.2)
            cpu1, t1 = cpu_seconds(gw.proc.pid), time.monotonic()
            status = gw.status()
        finally:
            counter.close()
            gw.stop()
            link.close()
            standin.stop()
    return {"rate": args.rate, "seconds": args.seconds, "batch": args.batch,
            "connections": args.connections, "topics": DEVICES * args.topics,
            "aws_iot_limits": True, "messages": count,
            "cloud_received_distinct": len(counter.seen),
            "duplicates": counter.arrivals - len(counter.seen),
            "cloud_publishes": counter.publishes,
            "backlog_max": max(depths, default=0),
            "backlog_at_end_of_load": depths[-1] if depths else None,
            "drained_after_load_s": round(t1 - published, 1),
            "cpu_us_per_msg": round((cpu1 - cpu0) * 1e6 / max(1, len(counter.seen)), 1),
            "spool_rejected_by_cloud": status.get("spool", {}).get("rejected_by_cloud"),
            "loadavg": load}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rate", type=float, default=800.0)
    parser.add_argument("--seconds", type=float, default=600.0)
    parser.add_argument("--batch", type=int, default=100, help="max_messages; 0: unbatched")
    parser.add_argument("--delay-ms", type=int, default=200)
    parser.add_argument("--connections", type=int, default=1)
    parser.add_argument("--topics", type=int, default=1,
                        help="topics per device: a topic keeps to one connection")
    args = parser.parse_args()
    print(json.dumps(run(args), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
