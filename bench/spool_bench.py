"""Spool and cloud-bridge benchmark: Lichen against mosquitto as a bridge, same stand-in.

Both brokers bridge `bench/spool/fanin/+` to a local AWS IoT Core stand-in (mosquitto with
mutual TLS, gateway.cloud.standin) through a TCP link (gateway.cloud.linkproxy) that the
benchmark cuts and restores. For each broker, in one run:

1. ingest: the uplink is cut; bench/loadgen (C) publishes QoS 1 from 4 connections, 64
   in flight each, for 5 s; rate = PUBACKed messages/s. Lichen acknowledges each message
   only after the SQLite spool commit (group commit); mosquitto acknowledges from memory
   and writes its queue at autosave or shutdown (`persistence true`), so a crash loses
   what arrived since.
2. drain: the link is restored; a C subscriber on the stand-in (mosquitto_sub, TLS)
   timestamps every arrival; rate = messages / (last - first arrival).
3. drain over a limited link: the same with the link paced to --link-kbps; reported as
   a share of what the link can carry (bytes the link moved per message).
4. ingest while connected: the same load with the link up (Lichen then spools and sends
   at once, on one event loop and the SDK's thread).
5. awsiotsdk alone: its MQTT 5 client publishing QoS 1 from a plain thread, 100 in flight,
   over the same kind of link: the ceiling for a drain built on the SDK.

Usage: python bench/spool_bench.py [--brokers lichen,mosquitto] [--repeat 1]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from run import build_loadgen, run_loadgen  # noqa: E402

from gateway.cloud.linkproxy import LinkProxy  # noqa: E402
from gateway.cloud.standin import Standin, free_port, mosquitto_binary, wait_port  # noqa: E402

PREFIX = "bench/spool"
THING = "bench-gateway"
CLOUD_PREFIX = f"dt/{THING}/"
UNACKED_MAX = 4 * 64   # loadgen publishers x QoS 1 window


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


class Gateway:
    """A broker bridging to the stand-in through `link`."""

    name = ""

    def __init__(self, work: Path, standin: Standin, link: LinkProxy) -> None:
        self.work = work
        self.standin = standin
        self.link = link
        self.port = free_port()
        self.proc: subprocess.Popen | None = None

    def command(self) -> list[str]:
        raise NotImplementedError

    def start(self) -> None:
        out = open(self.work / f"{self.name}.log", "ab")  # noqa: SIM115 - for the child
        self.proc = subprocess.Popen(self.command(), stdout=out, stderr=subprocess.STDOUT,
                                     cwd=ROOT, start_new_session=True,
                                     env=dict(os.environ, PYTHONPATH=str(ROOT)))
        out.close()
        wait_port(self.port, 30)

    def stop(self) -> None:
        if self.proc is not None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
            self.proc = None


class LichenGateway(Gateway):
    name = "lichen"

    def command(self) -> list[str]:
        cloud = self.standin.cloud_config(self.link.port)
        cloud["max_inflight"] = 100
        lines = ["[cloud]"] + [f"{k} = {json.dumps(v)}" for k, v in cloud.items()]
        lines += ["[mqtt]", "max_queued_messages = 1000000", "sys_interval = 0",
                  "[[routes]]", 'name = "bench"', 'direction = "up"',
                  f'filter = "{PREFIX}/fanin/+"', f'topic = "{CLOUD_PREFIX}{{topic}}"']
        conf = self.work / "lichen.toml"
        conf.write_text("\n".join(lines) + "\n")
        return [sys.executable, "-m", "gateway.cli", "run", "--state-dir",
                str(self.work / "lichen-state"), "--mqtt-port", str(self.port),
                "--tls-port", "0", "--config", str(conf)]


class MosquittoBridge(Gateway):
    name = "mosquitto"

    def command(self) -> list[str]:
        f = self.standin.files
        state = self.work / "mosq-state"
        state.mkdir(exist_ok=True)
        conf = self.work / "bridge.conf"
        conf.write_text("\n".join([
            f"listener {self.port} 127.0.0.1",
            "allow_anonymous true",
            "persistence true",
            f"persistence_location {state}/",
            "max_queued_messages 1000000",
            "max_queued_bytes 0",
            "max_inflight_messages 100",
            "sys_interval 0",
            "set_tcp_nodelay true",
            f"user {os.environ.get('USER') or 'root'}",
            "log_dest stderr",
            "log_type error",
            "log_type warning",
            "connection cloud",
            f"address 127.0.0.1:{self.link.port}",
            f"bridge_cafile {f.ca}",
            f"bridge_certfile {f.cert('gateway')}",
            f"bridge_keyfile {f.key('gateway')}",
            "bridge_protocol_version mqttv311",
            f"remote_clientid {THING}-mosquitto",
            "cleansession false",
            "try_private false",
            "restart_timeout 1 1",
            "bridge_max_packet_size 0",
            f"topic fanin/+ out 1 {PREFIX}/ {CLOUD_PREFIX}{PREFIX}/",
            "",
        ]))
        return [mosquitto_binary(), "-c", str(conf)]


class CloudSubscriber:
    """mosquitto_sub on the stand-in, timestamping each arrival, until `count` arrived."""

    def __init__(self, standin: Standin, count: int, out: Path) -> None:
        f = standin.files
        self.out = out
        self.count = count
        self.proc = subprocess.Popen(
            ["mosquitto_sub", "-h", "127.0.0.1", "-p", str(standin.port), "--cafile", str(f.ca),
             "--cert", str(f.cert("observer")), "--key", str(f.key("observer")),
             "-i", "bench-observer", "-t", f"{CLOUD_PREFIX}#", "-q", "1", "-C", str(count),
             "-F", "%U"], stdout=open(out, "wb"), stderr=subprocess.DEVNULL)  # noqa: SIM115
        time.sleep(0.5)  # subscribed before anything is sent

    def wait(self, timeout: float) -> dict:
        try:
            self.proc.wait(timeout)
            complete = True
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
            complete = False
        stamps = [float(x) for x in self.out.read_text().split()]
        if len(stamps) < 2:
            return {"complete": False, "received": len(stamps), "rate": 0.0}
        span = stamps[-1] - stamps[0]
        return {"complete": complete, "received": len(stamps),
                "rate": round((len(stamps) - 1) / span, 1) if span > 0 else 0.0,
                "span_s": round(span, 3)}


def local_latency(port: int, duration: float) -> dict:
    """Local QoS 1 publish-to-delivery latency at 1,000 msg/s on a topic no route takes."""
    return run_loadgen(["latency", "--port", str(port), "--qos", "1", "--rate", "1000",
                        "--duration", str(duration), "--warmup", "0.5",
                        "--prefix", "bench/local"], duration + 60)


def ingest(port: int, duration: float) -> dict:
    return run_loadgen(["fanin", "--port", str(port), "--qos", "1", "--pubs", "4",
                        "--window", "64", "--size", "64", "--duration", str(duration),
                        "--warmup", "1", "--prefix", PREFIX], duration + 60)


def sdk_alone(work: Path, count: int = 50_000, window: int = 100) -> float:
    """awsiotsdk by itself, from a plain thread, QoS 1 with `window` in flight, over the
    same link to the same stand-in: the ceiling of any Python gateway built on it."""
    from awscrt import mqtt5
    from awsiot import mqtt5_client_builder

    standin = Standin(work / "standin-sdk", thing_name=THING)
    standin.start()
    link = LinkProxy(standin.port)
    f = standin.files
    connected = threading.Event()
    client = mqtt5_client_builder.mtls_from_path(
        endpoint="127.0.0.1", port=link.port, cert_filepath=str(f.cert("gateway")),
        pri_key_filepath=str(f.key("gateway")), ca_filepath=str(f.ca), client_id=THING,
        extended_validation_and_flow_control_options=(
            mqtt5.ExtendedValidationAndFlowControlOptions.NONE),
        on_lifecycle_connection_success=lambda d: connected.set())
    client.start()
    try:
        if not connected.wait(10):
            return 0.0
        slots = threading.Semaphore(window)
        finished = threading.Event()
        done = [0]

        def completed(_future) -> None:
            done[0] += 1
            slots.release()
            if done[0] == count:
                finished.set()

        started = time.perf_counter()
        for i in range(count):
            slots.acquire()
            client.publish(mqtt5.PublishPacket(
                topic=f"{CLOUD_PREFIX}{PREFIX}/fanin/{i % 4}", payload=b"x" * 64,
                qos=mqtt5.QoS.AT_LEAST_ONCE)).add_done_callback(completed)
        finished.wait(120)
        return round(done[0] / (time.perf_counter() - started), 1)
    finally:
        client.stop()
        link.close()
        standin.stop()


def one_run(kind: type[Gateway], work: Path, duration: float, link_kbps: float) -> dict:
    standin = Standin(work / "standin", thing_name=THING)
    standin.start()
    link = LinkProxy(standin.port)
    gw = kind(work, standin, link)
    result: dict = {}
    try:
        link.cut(hold=True)  # mosquitto 2.0.11's bridge stops retrying after failures
        gw.start()
        time.sleep(1.0)
        lg = ingest(gw.port, duration)
        result["ingest_rate"] = lg.get("sent_rate", 0.0)
        result["ingest_lg_cpu_pct"] = lg.get("lg_window_cpu_pct")
        spooled = int(lg.get("total_sent", 0))
        result["spooled"] = spooled
        log(f"  {kind.name}: ingest {result['ingest_rate']:.0f} msg/s, {spooled} spooled")

        # loadgen counts what it wrote; up to pubs x window of that was never acknowledged
        expect = spooled - UNACKED_MAX
        sub = CloudSubscriber(standin, expect, work / f"{kind.name}-drain.txt")
        idle = local_latency(gw.port, 3.0).get("latency", {})
        during: dict = {}

        def measure_during() -> None:
            during.update(local_latency(gw.port, 3.0).get("latency", {}))

        probe = threading.Thread(target=measure_during)
        link.restore()
        probe.start()   # local traffic while the backlog drains
        drained = sub.wait(max(120.0, spooled / 2000))
        probe.join(120)
        result["local_p99_idle_ms"] = round(idle.get("p99_us", 0) / 1000, 3)
        result["local_p99_draining_ms"] = round(during.get("p99_us", 0) / 1000, 3)
        log(f"  {kind.name}: local QoS 1 p99 {result['local_p99_idle_ms']} ms idle, "
            f"{result['local_p99_draining_ms']} ms while draining")
        result["drain_rate"] = drained["rate"]
        result["drain_complete"] = drained["complete"]
        log(f"  {kind.name}: drain {drained}")

        # a paced link: the same backlog size, as a share of what the link can carry
        link.cut(hold=True)
        time.sleep(0.5)
        lg = ingest(gw.port, 2.0)
        backlog = int(lg.get("total_sent", 0))
        # about 10 s of link
        limited = min(backlog - UNACKED_MAX, int(link_kbps * 1000 / 8 / 150 * 10))
        link.rate = link_kbps * 1000 / 8
        moved0 = link.bytes_up
        sub = CloudSubscriber(standin, limited, work / f"{kind.name}-limited.txt")
        link.restore()
        drained = sub.wait(120)
        per_msg = (link.bytes_up - moved0) / max(1, drained["received"])
        capacity = link.rate / per_msg if per_msg else 0.0
        result["limited_drain_rate"] = drained["rate"]
        result["limited_link_share"] = round(drained["rate"] / capacity, 3) if capacity else 0
        log(f"  {kind.name}: limited link {link_kbps:g} kbit/s: {drained['rate']:.0f} msg/s "
            f"= {result['limited_link_share']:.0%} of the link ({per_msg:.0f} bytes/msg)")
        link.rate = None

        # ingest with the link up: let the limited backlog finish first
        time.sleep(2.0)
        lg = ingest(gw.port, duration)
        result["ingest_connected_rate"] = lg.get("sent_rate", 0.0)
        log(f"  {kind.name}: ingest while connected {result['ingest_connected_rate']:.0f} "
            "msg/s")
    finally:
        if os.environ.get("SPOOL_BENCH_KEEP"):
            shutil.copytree(work, Path(os.environ["SPOOL_BENCH_KEEP"]) / kind.name,
                            dirs_exist_ok=True)
        gw.stop()
        link.close()
        standin.stop()
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--brokers", default="lichen,mosquitto")
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--link-kbps", type=float, default=2000.0,
                        help="the paced link's bandwidth (default 2000 kbit/s)")
    args = parser.parse_args()
    build_loadgen()
    kinds = {"lichen": LichenGateway, "mosquitto": MosquittoBridge}
    results: dict[str, list[dict]] = {}
    for i in range(args.repeat):
        for name in args.brokers.split(","):
            log(f"run {i + 1}/{args.repeat}: {name}")
            with tempfile.TemporaryDirectory(prefix=f"spool-{name}-") as tmp:  # noqa: SIM117
                results.setdefault(name, []).append(
                    one_run(kinds[name], Path(tmp), args.duration, args.link_kbps))
    sdk_rates = []
    for _ in range(args.repeat):
        with tempfile.TemporaryDirectory(prefix="spool-sdk-") as tmp:
            sdk_rates.append(sdk_alone(Path(tmp)))
    log(f"awsiotsdk alone over the same link: {sdk_rates} msg/s")
    keys = ["ingest_rate", "drain_rate", "limited_drain_rate", "limited_link_share",
            "ingest_connected_rate", "local_p99_idle_ms", "local_p99_draining_ms"]
    summary = {name: {k: statistics.median(r[k] for r in runs) for k in keys}
               for name, runs in results.items()}
    sdk = statistics.median(sdk_rates)
    print(json.dumps({"runs": results, "median": summary, "sdk_alone_rate": sdk}, indent=2))
    if "lichen" in summary and "mosquitto" in summary:
        lich, mosq = summary["lichen"], summary["mosquitto"]
        print("\n| measure | lichen | mosquitto bridge | lichen / mosquitto |")
        print("|---|---|---|---|")
        for k in keys:
            ratio = lich[k] / mosq[k] if mosq[k] else float("nan")
            print(f"| {k} | {lich[k]:,.1f} | {mosq[k]:,.1f} | {ratio:.2f}x |")
        print(f"\nawsiotsdk alone, same link: {sdk:,.0f} msg/s; lichen's drain is "
              f"{lich['drain_rate'] / sdk:.2f}x of it")
    return 0


if __name__ == "__main__":
    sys.exit(main())
