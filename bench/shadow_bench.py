#!/usr/bin/env python3
"""Shadow update throughput and latency: N things (default 100), each its own MQTT client,
all updating their classic shadow at once.

Each client keeps `--inflight` updates in flight (QoS 1 PUBLISH to
`$aws/things/bench-I/shadow/update`, a clientToken per request) and sends the next one when
the previous one's `/update/accepted` arrives. Measured over `--duration` seconds after a
`--warmup`: accepted updates per second, and the latency from writing the PUBLISH to
reading its /accepted (p50, p99). Every /accepted is sent only after the update is committed
to SQLite, so this is the durable rate.

The clients are raw asyncio sockets speaking just enough MQTT 3.1.1 (CONNECT, SUBSCRIBE at
QoS 0, PUBLISH at QoS 1), all in this one process, to cost the machine little besides the
gateway. A fresh gateway (`python -m gateway.cli run`, plaintext loopback, no TLS) is started
per scenario in a temporary state directory, unless `--port` names a running one.

    python bench/shadow_bench.py
    python bench/shadow_bench.py --things 100 --duration 10 --scenarios w1,w5,w1-full
    python bench/shadow_bench.py --port 1883 --scenarios w1       # an already running gateway
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from procs import free_port, stop_group, wait_port  # bench/procs.py: run as `python bench/...`

REPO_ROOT = Path(__file__).resolve().parent.parent

# name: (in-flight updates per thing, persistence.sync)
SCENARIOS = {
    "w1": (1, "normal"),
    "w5": (5, "normal"),
    "w1-full": (1, "full"),
}


# ---------------------------------------------------------------- MQTT 3.1.1, just enough


def _string(s: str) -> bytes:
    b = s.encode()
    return struct.pack("!H", len(b)) + b


def _packet(first: int, body: bytes) -> bytes:
    n, length = len(body), bytearray()
    while True:
        n, digit = divmod(n, 128)
        length.append(digit | (0x80 if n else 0))
        if not n:
            return bytes([first]) + bytes(length) + body


def connect_packet(client_id: str) -> bytes:
    return _packet(0x10, _string("MQTT") + b"\x04\x02\x00\x3c" + _string(client_id))


def subscribe_packet(packet_id: int, topics: list[str]) -> bytes:
    return _packet(0x82, struct.pack("!H", packet_id) + b"".join(_string(t) + b"\x00"
                                                                   for t in topics))


def publish_qos1(topic: bytes, packet_id: int, payload: bytes) -> bytes:
    return _packet(0x32, struct.pack("!H", len(topic)) + topic + struct.pack("!H", packet_id)
                   + payload)


async def read_packet(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    first = (await reader.readexactly(1))[0]
    mult, length = 1, 0
    while True:
        b = (await reader.readexactly(1))[0]
        length += (b & 0x7F) * mult
        if not b & 0x80:
            break
        mult *= 128
    return first, await reader.readexactly(length)


# ---------------------------------------------------------------- one thing


@dataclass
class Stats:
    measuring: bool = False
    latencies: list[float] = field(default_factory=list)
    accepted: int = 0
    rejected: int = 0


async def thing(port: int, index: int, inflight: int, stats: Stats, stop: asyncio.Event,
                ready: asyncio.Barrier) -> None:
    name = f"bench-{os.getpid()}-{index}"
    topic = f"$aws/things/{name}/shadow/update"
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    sock = writer.get_extra_info("socket")
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    writer.write(connect_packet(name))
    first, _ = await read_packet(reader)
    assert first == 0x20, "no CONNACK"
    writer.write(subscribe_packet(1, [f"{topic}/accepted", f"{topic}/rejected"]))
    first, _ = await read_packet(reader)
    assert first == 0x90, "no SUBACK"
    await ready.wait()

    topic_b = topic.encode()
    sent: dict[bytes, float] = {}
    seq = 0

    def send() -> None:
        nonlocal seq
        seq += 1
        token = str(seq).encode()
        payload = (b'{"state":{"reported":{"temp":21.5,"seq":' + token + b'}},"clientToken":"'
                   + token + b'"}')
        sent[token] = time.perf_counter()
        writer.write(publish_qos1(topic_b, seq % 65535 + 1, payload))

    for _ in range(inflight):
        send()
    marker = b'"clientToken":"'
    try:
        while True:
            first, body = await read_packet(reader)
            if first >> 4 != 3:
                continue  # PUBACK of our own publishes
            (tlen,) = struct.unpack_from("!H", body)
            reply_topic = body[2:2 + tlen]
            payload = body[2 + tlen:]
            at = payload.rfind(marker)
            token = payload[at + len(marker):payload.index(b'"', at + len(marker))]
            started = sent.pop(token, None)
            if started is not None and stats.measuring:
                if reply_topic.endswith(b"/accepted"):
                    stats.accepted += 1
                    stats.latencies.append(time.perf_counter() - started)
                else:
                    stats.rejected += 1
            if stop.is_set():
                if not sent:
                    break
                continue
            send()
    finally:
        writer.close()


async def drive(port: int, things: int, inflight: int, duration: float,
                warmup: float) -> dict:
    stats, stop = Stats(), asyncio.Event()
    ready = asyncio.Barrier(things + 1)
    tasks = [asyncio.create_task(thing(port, i, inflight, stats, stop, ready))
             for i in range(things)]
    await asyncio.wait_for(ready.wait(), 30)
    await asyncio.sleep(warmup)
    cpu0, t0 = time.process_time(), time.perf_counter()
    stats.measuring = True
    await asyncio.sleep(duration)
    stats.measuring = False
    elapsed, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    stop.set()
    await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 30)
    lat = sorted(stats.latencies)

    def pct(p: float) -> float:
        return lat[min(len(lat) - 1, int(p * len(lat)))] * 1000 if lat else float("nan")

    return {"things": things, "inflight": inflight, "accepted": stats.accepted,
            "rejected": stats.rejected, "updates_per_s": stats.accepted / elapsed,
            "p50_ms": pct(0.50), "p99_ms": pct(0.99),
            "mean_ms": statistics.fmean(lat) * 1000 if lat else float("nan"),
            "client_cpu_pct": 100 * cpu / elapsed}


# ---------------------------------------------------------------- the gateway


def start_gateway(state: Path, port: int, sync: str) -> subprocess.Popen:
    config = state.parent / "lichen.toml"
    config.write_text(f'[persistence]\nsync = "{sync}"\n[mqtt]\nsys_interval = 0\n')
    cmd = [sys.executable, "-m", "gateway.cli", "run", "--state-dir", str(state),
           "--mqtt-port", str(port), "--tls-port", "0", "--discovery-port", "0",
           "--config", str(config), "--log-level", "warning"]
    proc = subprocess.Popen(cmd, cwd=REPO_ROOT, env=dict(os.environ, PYTHONPATH=str(REPO_ROOT)),
                            start_new_session=True)
    wait_port(port, proc)
    return proc


def gateway_cpu(pid: int) -> float:
    """User + system CPU seconds of a process, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def shadow_status(state: Path) -> dict:
    """The shadow service's counters from the final status.json (written on a clean stop)."""
    try:
        return json.loads((state / "status.json").read_text())["shadow"]
    except (OSError, ValueError, KeyError):
        return {}


def run_scenario(name: str, args: argparse.Namespace) -> dict:
    inflight, sync = SCENARIOS[name]
    if args.port:
        result = asyncio.run(drive(args.port, args.things, inflight, args.duration,
                                   args.warmup))
        return {"scenario": name, "sync": "(running gateway)", **result}
    with tempfile.TemporaryDirectory(prefix="shadow-bench-") as tmp:
        state, port = Path(tmp) / "state", free_port()
        proc = start_gateway(state, port, sync)
        try:
            cpu0 = gateway_cpu(proc.pid)
            result = asyncio.run(drive(port, args.things, inflight, args.duration,
                                       args.warmup))
            total = args.duration + args.warmup
            result["gateway_cpu_pct"] = 100 * (gateway_cpu(proc.pid) - cpu0) / total
        finally:
            stop_group(proc)
        counters = shadow_status(state)
        if counters.get("commits"):
            result["commits"] = counters["commits"]
            result["updates_per_commit"] = counters.get("update_accepted", 0) / counters["commits"]
    return {"scenario": name, "sync": sync, **result}


def table(rows: list[dict]) -> str:
    head = ("| scenario | sync | things | in flight / thing | updates/s | p50 ms | p99 ms "
            "| gateway CPU % | client CPU % | updates / commit |")
    lines = [head, "|" + "---|" * 10]
    for r in rows:
        per_commit = f"{r['updates_per_commit']:.1f}" if "updates_per_commit" in r else "—"
        lines.append(
            f"| {r['scenario']} | {r['sync']} | {r['things']} | {r['inflight']} "
            f"| {r['updates_per_s']:,.0f} | {r['p50_ms']:.1f} | {r['p99_ms']:.1f} "
            f"| {r.get('gateway_cpu_pct', float('nan')):.0f} | {r['client_cpu_pct']:.0f} "
            f"| {per_commit} |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--things", type=int, default=100)
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--scenarios", default=",".join(SCENARIOS))
    parser.add_argument("--repeat", type=int, default=1,
                        help="run each scenario N times and report the median run")
    parser.add_argument("--port", type=int, help="use the gateway already on 127.0.0.1:PORT")
    parser.add_argument("--json", help="write the raw figures here")
    args = parser.parse_args()
    names = args.scenarios.split(",")
    for name in names:
        if name not in SCENARIOS:
            parser.error(f"unknown scenario {name!r} (known: {', '.join(SCENARIOS)})")
    runs: dict[str, list[dict]] = {name: [] for name in names}
    for i in range(args.repeat):  # scenario after scenario, so slow drifts hit all alike
        for name in names:
            print(f"running {name} ({i + 1}/{args.repeat}) ...", file=sys.stderr)
            runs[name].append(run_scenario(name, args))
    rows = [sorted(r, key=lambda x: x["updates_per_s"])[len(r) // 2] for r in runs.values()]
    print(table(rows))
    if args.json:
        Path(args.json).write_text(json.dumps(runs, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
