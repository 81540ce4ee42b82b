"""CPU per message forwarded to the cloud (issue #13 item 2): Lichen against mosquitto as a
bridge, to the same AWS IoT Core stand-in, in the same run.

Both gateways are the ones bench/spool_bench.py builds (route `bench/spool/fanin/+` ->
`dt/bench-gateway/...`, QoS 1, 100 in flight, through gateway.cloud.linkproxy). Four
devices (raw MQTT 3.1.1 sockets in this process, 64 QoS 1 in flight each) publish N
messages of 64 bytes, either paced at a total --rate (800 msg/s: a moderate, steady load) or
as fast as the gateway acknowledges (--rate 0). A mosquitto_sub on the stand-in counts them
arriving. Measured: the gateway process's CPU time (utime + stime of all its threads, from
/proc/PID/stat) from the first publish until the cloud has the N-th message, divided by N.
Several runs alternate the two gateways; min/median/max and the ratio are printed with the
load average.

Usage: python bench/uplink_cpu.py [--rate 800] [--seconds 15] [--runs 3]
       python bench/uplink_cpu.py --rate 0 --count 30000     # the maximum rate
       python bench/uplink_cpu.py --profile out.txt          # py-spy (pip install py-spy)
"""

from __future__ import annotations

import argparse
import json
import os
import select
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from spool_bench import PREFIX, THING, CloudSubscriber, LichenGateway, MosquittoBridge  # noqa: E402

from gateway.cloud.linkproxy import LinkProxy  # noqa: E402
from gateway.cloud.standin import Standin  # noqa: E402

TICK = os.sysconf("SC_CLK_TCK")
DEVICES = 4
WINDOW = 64


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK   # utime, stime: all threads


def thread_cpu(pid: int) -> dict[str, float]:
    """CPU seconds per thread name (threads of the same name summed)."""
    out: dict[str, float] = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            stat = (task / "stat").read_text()
        except OSError:
            continue
        name = stat[stat.index("(") + 1:stat.rindex(")")]
        fields = stat.rsplit(")", 1)[1].split()
        out[name] = out.get(name, 0.0) + (int(fields[11]) + int(fields[12])) / TICK
    return out


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        n, digit = n >> 7, n & 0x7F
        out.append(digit | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _packet(first: int, body: bytes) -> bytes:
    return bytes([first]) + _varint(len(body)) + body


def _string(s: str) -> bytes:
    b = s.encode()
    return len(b).to_bytes(2, "big") + b


class Device:
    """One MQTT 3.1.1 connection publishing QoS 1 on its own topic; counts PUBACKs."""

    def __init__(self, port: int, i: int, topics: int = 1) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port))
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        body = _string("MQTT") + bytes([4, 2]) + (60).to_bytes(2, "big")
        self.sock.sendall(_packet(0x10, body + _string(f"cpu-bench-{os.getpid()}-{i}")))
        if self._read_exact(4)[:2] != b"\x20\x02":
            raise RuntimeError("no CONNACK")
        # one topic per device, or `topics` of them in turn (fanin/<i>-<k>)
        self.heads = [_string(f"{PREFIX}/fanin/{i}")] if topics == 1 else \
            [_string(f"{PREFIX}/fanin/{i}-{k}") for k in range(topics)]
        self.pid = 0
        self.inflight = 0
        self.buf = b""

    def _read_exact(self, n: int) -> bytes:
        data = b""
        while len(data) < n:
            chunk = self.sock.recv(n - len(data))
            if not chunk:
                raise RuntimeError("connection closed")
            data += chunk
        return data

    def send(self, payloads: list[bytes]) -> None:
        out = []
        for p in payloads:
            self.pid = self.pid % 65535 + 1
            head = self.heads[self.pid % len(self.heads)]
            out.append(_packet(0x32, head + self.pid.to_bytes(2, "big") + p))
        self.inflight += len(payloads)
        self.sock.sendall(b"".join(out))

    def read(self) -> None:
        self.buf += self.sock.recv(65536)
        whole = len(self.buf) // 4   # only PUBACKs (4 bytes) come back
        self.inflight -= whole
        self.buf = self.buf[whole * 4:]

    def close(self) -> None:
        self.sock.close()


def publish(port: int, count: int, rate: float, topics: int = 1) -> float:
    """Publish `count` messages from DEVICES devices (`topics` topics each), paced at `rate`
    msg/s in total (0: as fast as acknowledgements allow); returns the achieved rate."""
    devices = [Device(port, i, topics) for i in range(DEVICES)]
    socks = {d.sock: d for d in devices}
    sent = 0
    start = time.monotonic()
    try:
        while sent < count or any(d.inflight for d in devices):
            now = time.monotonic()
            due = count if rate <= 0 else min(count, int((now - start) * rate) + 1)
            for d in devices:
                n = min(due - sent, WINDOW - d.inflight, -(-(due - sent) // DEVICES))
                if n > 0:
                    d.send([f"{sent + k:08d}".encode().ljust(64, b"x") for k in range(n)])
                    sent += n
            wait = 0.005 if sent < count and rate > 0 else 1.0
            ready, _, _ = select.select(list(socks), [], [], wait)
            for s in ready:
                socks[s].read()
        return count / (time.monotonic() - start)
    finally:
        for d in devices:
            d.close()


def _spool_commits(work: Path) -> int | None:
    try:
        status = json.loads((work / "lichen-state" / "status.json").read_text())
        return status["cloud"]["spool"]["commits"]
    except (OSError, ValueError, KeyError):
        return None


def loadavg() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def one_run(kind, work: Path, count: int, rate: float, profile: str | None) -> dict:
    standin = Standin(work / "standin", thing_name=THING)
    standin.start()
    link = LinkProxy(standin.port)
    gw = kind(work, standin, link)
    spy = None
    try:
        gw.start()
        time.sleep(3.0)   # connected to the stand-in and settled
        sub = CloudSubscriber(standin, count, work / f"{kind.name}-arrivals.txt")
        load = loadavg()
        if profile and kind.name == "lichen" and shutil.which("py-spy"):
            spy = subprocess.Popen(["py-spy", "record", "--gil", "-f", "raw", "-o",
                                    str(work / "profile.txt"), "-p", str(gw.proc.pid),
                                    "-d", str(int(count / max(rate, 1000)) + 2)],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        threads0 = thread_cpu(gw.proc.pid)
        cpu0, t0 = cpu_seconds(gw.proc.pid), time.monotonic()
        achieved = publish(gw.port, count, rate)
        arrived = sub.wait(120)
        cpu1, t1 = cpu_seconds(gw.proc.pid), time.monotonic()
        threads1 = thread_cpu(gw.proc.pid)
        time.sleep(2.5)   # status.json is rewritten every 2 s
        commits = _spool_commits(work)
        if spy is not None:
            spy.wait(60)
            shutil.copy(work / "profile.txt", profile)
    finally:
        gw.stop()
        link.close()
        standin.stop()
    delivered = arrived["received"]
    return {"cpu_us_per_msg": round((cpu1 - cpu0) * 1e6 / max(1, delivered), 1),
            "delivered": delivered, "complete": arrived["complete"],
            "publish_rate": round(achieved, 1), "cloud_rate": arrived["rate"],
            "seconds": round(t1 - t0, 1), "cpu_pct": round(100 * (cpu1 - cpu0) / (t1 - t0), 1),
            "loadavg": load, "spool_commits_per_msg": round(commits / max(1, delivered), 3)
            if commits is not None else None,
            "threads_us_per_msg": {k: round((v - threads0.get(k, 0.0)) * 1e6 / max(1, delivered),
                                            1)
                                   for k, v in threads1.items() if v > threads0.get(k, 0.0)}}


def spread(values: list[float]) -> dict:
    return {"min": min(values), "median": statistics.median(values), "max": max(values)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rate", type=float, default=800.0, help="msg/s in total; 0: max")
    parser.add_argument("--seconds", type=float, default=15.0, help="paced: how long")
    parser.add_argument("--count", type=int, default=30_000, help="--rate 0: messages")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--brokers", default="lichen,mosquitto")
    parser.add_argument("--profile", metavar="FILE",
                        help="py-spy record --gil of Lichen's first run, raw, to FILE")
    args = parser.parse_args()
    count = args.count if args.rate <= 0 else int(args.rate * args.seconds)
    kinds = {"lichen": LichenGateway, "mosquitto": MosquittoBridge}
    runs: dict[str, list[dict]] = {}
    for i in range(args.runs):
        for name in args.brokers.split(","):
            with tempfile.TemporaryDirectory(prefix=f"uplink-cpu-{name}-") as tmp:
                r = one_run(kinds[name], Path(tmp), count, args.rate,
                            args.profile if i == 0 else None)
            runs.setdefault(name, []).append(r)
            log(f"run {i + 1}/{args.runs} {name}: {r}")
    summary = {name: {k: spread([r[k] for r in rs])
                      for k in ("cpu_us_per_msg", "cloud_rate", "cpu_pct")}
               for name, rs in runs.items()}
    print(json.dumps({"rate": args.rate or "max", "messages": count, "runs": runs,
                      "summary": summary}, indent=2))
    if "lichen" in summary and "mosquitto" in summary:
        lich, mosq = summary["lichen"]["cpu_us_per_msg"], summary["mosquitto"]["cpu_us_per_msg"]
        print(f"\nCPU per message delivered to the cloud at {args.rate or 'max'} msg/s "
              f"({count} messages, {args.runs} runs; min / median / max):")
        print(f"  lichen    {lich['min']:8.1f} {lich['median']:8.1f} {lich['max']:8.1f} us")
        print(f"  mosquitto {mosq['min']:8.1f} {mosq['median']:8.1f} {mosq['max']:8.1f} us")
        print(f"  ratio (medians) {lich['median'] / mosq['median']:.2f}x; load average at "
              f"the runs: {[r['loadavg'] for r in runs['lichen']]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
