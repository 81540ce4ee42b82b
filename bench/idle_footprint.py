"""Idle footprint: RSS and CPU of a gateway that nobody talks to, side by side with its peers.

    python bench/idle_footprint.py                      # 5 runs each, 10 s idle sample
    python bench/idle_footprint.py --runs 3 --idle 30 --json /tmp/idle.json

Each run starts a fresh broker in a temporary directory, waits for its port, lets it settle,
then reads its RSS (VmRSS, /proc/PID/status, the process and its children) and the CPU time
it uses over `--idle` seconds (utime + stime from /proc/PID/stat). Brokers:

- `lichen-default`: `lichen run --state-dir TMP --mqtt-port N` with the embedded default
  config: the mutual-TLS device listener (on a free port instead of 8883), discovery (on a free
  port instead of 8443), the Unix socket, shadows, persistence: what a gateway runs.
- `lichen-plain`: the same with `--tls-port 0 --discovery-port 0` (plaintext broker only).
- `lichen-default-restart`: `lichen-default` measured on its second start, on the state a
  first start made (no CA, certificate or SQLite schema to create: what a gateway runs after
  any reboot).
- `mosquitto`: the Debian package, one loopback listener, persistence off.
- `amqtt`: the Python peer, one loopback listener (when installed: `pip install -e .[bench]`).

Reported: min / median / max over the runs, and each figure as a ratio to mosquitto's median.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from procs import free_port, stop_group, wait_port  # bench/procs.py: run as `python bench/...`

ROOT = Path(__file__).resolve().parent.parent
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def tree(pid: int) -> list[int]:
    """pid and its descendants (from /proc/*/stat's ppid field)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        p = todo.pop()
        found.append(p)
        todo += children.get(p, [])
    return found


def rss_kb(pids: list[int]) -> int:
    total = 0
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except OSError:
            pass
    return total


def cpu_seconds(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])  # utime, stime
        except (OSError, IndexError, ValueError):
            pass
    return total / CLOCK_TICKS


def command(name: str, work: Path, port: int) -> list[str] | None:
    if name.startswith("lichen"):
        name = name.removesuffix("-restart")
        lichen = shutil.which("lichen") or str(Path(sys.executable).parent / "lichen")
        cmd = [lichen, "run", "--state-dir", str(work / "state"), "--mqtt-port", str(port)]
        if name == "lichen-plain":
            return cmd + ["--tls-port", "0", "--discovery-port", "0"]
        return cmd + ["--tls-port", str(free_port()), "--discovery-port", str(free_port())]
    if name == "mosquitto":
        binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
        if not Path(binary).exists():
            return None
        conf = work / "mosquitto.conf"
        conf.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\n"
                        "persistence false\nsys_interval 0\n")
        return [binary, "-c", str(conf)]
    if name == "amqtt":
        try:
            import amqtt  # noqa: F401
        except ImportError:
            return None
        conf = work / "amqtt.yaml"
        conf.write_text(f"listeners:\n  default:\n    type: tcp\n    bind: 127.0.0.1:{port}\n"
                        "plugins:\n  amqtt.plugins.authentication.AnonymousAuthPlugin:\n"
                        "    allow_anonymous: true\n")
        return [sys.executable, "-m", "amqtt.scripts.broker_script", "-c", str(conf)]
    raise ValueError(name)


def one_run(name: str, settle: float, idle: float) -> dict | None:
    with tempfile.TemporaryDirectory(prefix=f"idle-{name}-") as tmp:
        work = Path(tmp)
        port = free_port()
        cmd = command(name, work, port)
        if cmd is None:
            return None
        if name.endswith("-restart"):  # a first start makes the state, then measure the next
            first = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
                                     cwd=work)
            try:
                wait_port(port, first)
            finally:
                first.terminate()
                first.wait(15)
        log = open(work / "log", "wb")  # noqa: SIM115 - the child's
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=work,
                                start_new_session=True)
        log.close()
        try:
            wait_port(port, proc)
            time.sleep(settle)
            pids = tree(proc.pid)
            rss = rss_kb(pids)
            cpu0, t0 = cpu_seconds(pids), time.monotonic()
            time.sleep(idle)
            cpu = (cpu_seconds(tree(proc.pid)) - cpu0) / (time.monotonic() - t0)
            return {"rss_mb": rss / 1024, "cpu_pct": 100 * cpu}
        finally:
            stop_group(proc)


def spread(values: list[float]) -> dict:
    return {"min": min(values), "median": statistics.median(values), "max": max(values)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--brokers", default="lichen-default,lichen-default-restart,lichen-plain,"
                   "mosquitto,amqtt")
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--settle", type=float, default=3.0, help="seconds after the port opens")
    p.add_argument("--idle", type=float, default=10.0, help="seconds of CPU sampling")
    p.add_argument("--json", help="write the raw figures here")
    args = p.parse_args(argv)
    names = args.brokers.split(",")
    raw: dict[str, list[dict]] = {n: [] for n in names}
    for _ in range(args.runs):  # interleaved, so drifts on a shared machine hit all alike
        for name in names:
            result = one_run(name, args.settle, args.idle)
            if result is not None:
                raw[name].append(result)
    load = os.getloadavg()
    summary = {n: {k: spread([r[k] for r in rs]) for k in ("rss_mb", "cpu_pct")}
               for n, rs in raw.items() if rs}
    base = summary.get("mosquitto")
    print(f"idle footprint, {args.runs} runs, {args.idle:g} s idle each; "
          f"load average at the end {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}\n")
    print("| broker | RSS MB min / median / max | x mosquitto | idle CPU % of a core "
          "min / median / max |")
    print("|---|---|---|---|")
    for name, s in summary.items():
        r, c = s["rss_mb"], s["cpu_pct"]
        ratio = f"{r['median'] / base['rss_mb']['median']:.1f}x" if base else "-"
        print(f"| {name} | {r['min']:.1f} / {r['median']:.1f} / {r['max']:.1f} | {ratio} | "
              f"{c['min']:.2f} / {c['median']:.2f} / {c['max']:.2f} |")
    for name in names:
        if not raw[name]:
            print(f"\n{name}: not available, skipped")
    if args.json:
        Path(args.json).write_text(json.dumps({"raw": raw, "summary": summary,
                                               "loadavg": load}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
