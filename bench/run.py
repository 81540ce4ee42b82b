#!/usr/bin/env python3
"""Benchmark harness: lichen against mosquitto and amqtt.

For every scenario and every broker it starts a fresh broker process on a free
loopback port, waits for the port, drives it with the C load generator
(bench/loadgen.c, built into bench/build/ on demand), samples the broker's CPU
and RSS with psutil, and stops it again.  The summary is a markdown table with
the lichen/mosquitto and lichen/amqtt ratios; ``--json`` keeps every raw figure.

    python bench/run.py
    python bench/run.py --brokers mosquitto,amqtt --duration 3 --json /tmp/bench.json
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import importlib.util
import json
import os
import platform
import pwd
import queue
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

try:
    import psutil
except ImportError:  # pragma: no cover - reported at start-up
    psutil = None

BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parent
BUILD_DIR = BENCH_DIR / "build"
LOADGEN_SRC = BENCH_DIR / "loadgen.c"
LOADGEN_BIN = BUILD_DIR / "loadgen"

ALL_BROKERS = ("lichen", "mosquitto", "amqtt")
QOS1_WINDOW = 64  # in-flight QoS 1 messages per publisher; the brokers' limits match it
MATCHED_QUEUE = 1_000_000  # per-client queue depth given to mosquitto and lichen
LOADGEN_CPU_WARN = 70.0  # % of one core; above this the generator may be the bottleneck
START_TIMEOUT = 30.0
STOP_TIMEOUT = 5.0
MB = 1024 * 1024


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- build


def build_loadgen(force: bool = False) -> Path:
    """Compiles bench/loadgen.c into bench/build/loadgen unless it is up to date."""
    fresh = LOADGEN_BIN.exists() and LOADGEN_BIN.stat().st_mtime >= LOADGEN_SRC.stat().st_mtime
    if fresh and not force:
        return LOADGEN_BIN
    BUILD_DIR.mkdir(parents=True, exist_ok=True)
    cc = os.environ.get("CC", "gcc")
    cmd = [cc, "-O2", "-Wall", "-Wextra", "-o", str(LOADGEN_BIN), str(LOADGEN_SRC)]
    log(f"building load generator: {' '.join(cmd)}")
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    if proc.returncode != 0:
        raise SystemExit(f"loadgen build failed:\n{proc.stderr}")
    return LOADGEN_BIN


# ------------------------------------------------------------------------- helpers


def raise_fd_limit(want: int = 65536) -> int:
    """Raises RLIMIT_NOFILE so 1,000+ sockets fit; brokers and loadgen inherit it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft >= want:
        return soft
    new_hard = hard if hard == resource.RLIM_INFINITY or hard >= want else want
    for limits in ((want, new_hard), (min(want, hard), hard)):
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, limits)
            return limits[0]
        except (ValueError, OSError):
            continue
    return soft


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def tail(path: Path, lines: int = 15) -> str:
    try:
        text = path.read_text(errors="replace").splitlines()
    except OSError:
        return ""
    return "\n".join(text[-lines:])


# ------------------------------------------------------------------------- brokers


class BrokerError(RuntimeError):
    pass


class Broker:
    """One broker process, started fresh for each scenario."""

    name = "broker"

    def __init__(self, workdir: Path, port: int, window: int = QOS1_WINDOW) -> None:
        self.workdir = workdir
        self.port = port
        self.window = window
        self.proc: subprocess.Popen[bytes] | None = None
        self.ps: Any = None
        self.log_path = workdir / f"{self.name}.log"

    # subclasses fill these in
    def command(self) -> list[str]:
        raise NotImplementedError

    def cwd(self) -> Path | None:
        return None

    def env(self) -> dict[str, str]:
        return dict(os.environ)

    @classmethod
    def available(cls) -> str | None:
        """Returns None when the broker can run here, else the reason it cannot."""
        return None

    def version(self) -> str:
        return ""

    def start(self, timeout: float = START_TIMEOUT) -> None:
        cmd = self.command()
        with open(self.log_path, "wb") as logf:
            self.proc = subprocess.Popen(
                cmd,
                cwd=self.cwd(),
                env=self.env(),
                stdin=subprocess.DEVNULL,
                stdout=logf,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # own process group, so stop() reaches children
            )
        self.ps = psutil.Process(self.proc.pid)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise BrokerError(
                    f"{self.name} exited with {self.proc.returncode} during start-up:\n"
                    f"{tail(self.log_path)}"
                )
            if port_open(self.port):
                return
            time.sleep(0.1)
        raise BrokerError(f"{self.name} did not open port {self.port} within {timeout:.0f} s")

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self) -> None:
        proc = self.proc
        if proc is None:
            return
        for sig, wait in ((signal.SIGTERM, STOP_TIMEOUT), (signal.SIGKILL, STOP_TIMEOUT)):
            if proc.poll() is not None:
                break
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, sig)
            try:
                proc.wait(timeout=wait)
            except subprocess.TimeoutExpired:
                continue
        # stragglers left in the broker's own process group
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        self.proc = None

    def _tree(self) -> list[Any]:
        if self.ps is None:
            return []
        procs = [self.ps]
        with contextlib.suppress(psutil.Error):
            procs += self.ps.children(recursive=True)
        return procs

    def rss_mb(self) -> float:
        total = 0
        for p in self._tree():
            with contextlib.suppress(psutil.Error):
                total += p.memory_info().rss
        return total / MB

    def cpu_s(self) -> float:
        total = 0.0
        for p in self._tree():
            with contextlib.suppress(psutil.Error):
                t = p.cpu_times()
                total += t.user + t.system
        return total


class Lichen(Broker):
    name = "lichen"
    # "matched": the same queue depth and in-flight window as the mosquitto config below;
    # "default": lichen's embedded defaults (max_queued_messages 1000, max_inflight 100)
    config_mode = "matched"
    root = REPO_ROOT  # the checkout to run; --lichen-root can point at another one

    def command(self) -> list[str]:
        cmd = [sys.executable, "-m", "gateway.cli", "run"]
        cmd += ["--state-dir", str(self.workdir / "state"), "--mqtt-port", str(self.port)]
        cmd += ["--tls-port", "0"]  # plaintext only, like the peers
        if self.config_mode == "matched":
            conf = self.workdir / "lichen.toml"
            conf.write_text(
                f"[mqtt]\nmax_inflight = {self.window}\nmax_queued_messages = {MATCHED_QUEUE}\n"
            )
            cmd += ["--config", str(conf)]
        return cmd

    def cwd(self) -> Path | None:
        return self.root

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        extra = env.get("PYTHONPATH")
        env["PYTHONPATH"] = str(self.root) + (os.pathsep + extra if extra else "")
        return env

    @classmethod
    def available(cls) -> str | None:
        gw = cls.root / "gateway"
        if not (gw / "cli.py").exists() and not (gw / "cli" / "__init__.py").exists():
            return "gateway.cli not found (broker not written yet)"
        return None

    def version(self) -> str:
        try:
            out = subprocess.run(
                ["git", "-C", str(self.root), "rev-parse", "--short", "HEAD"],
                capture_output=True,
                text=True,
                timeout=10,
            )
            return f"git {out.stdout.strip()}" if out.returncode == 0 else ""
        except (OSError, subprocess.TimeoutExpired):
            return ""


class Mosquitto(Broker):
    name = "mosquitto"

    @staticmethod
    def binary() -> str | None:
        found = shutil.which("mosquitto")
        if found:
            return found
        return "/usr/sbin/mosquitto" if Path("/usr/sbin/mosquitto").exists() else None

    @classmethod
    def available(cls) -> str | None:
        return None if cls.binary() else "mosquitto binary not found"

    def command(self) -> list[str]:
        conf = self.workdir / "mosquitto.conf"
        user = pwd.getpwuid(os.getuid()).pw_name
        conf.write_text(
            "\n".join(
                [
                    f"listener {self.port} 127.0.0.1",
                    "allow_anonymous true",
                    "persistence false",
                    # deep queues: nothing is dropped for lack of queue space
                    f"max_queued_messages {MATCHED_QUEUE}",
                    "max_queued_bytes 0",
                    f"max_inflight_messages {self.window}",
                    "sys_interval 0",
                    "set_tcp_nodelay true",
                    # when run as root, stay root instead of switching to 'mosquitto'
                    f"user {user}",
                    "log_dest stderr",
                    "log_type error",
                    "log_type warning",
                    "",
                ]
            )
        )
        return [str(self.binary()), "-c", str(conf)]

    def version(self) -> str:
        try:
            out = subprocess.run(
                [str(self.binary()), "-h"], capture_output=True, text=True, timeout=10
            )
        except (OSError, subprocess.TimeoutExpired):
            return ""
        first = (out.stdout or out.stderr).splitlines()
        return first[0].replace("mosquitto version ", "") if first else ""


class Amqtt(Broker):
    name = "amqtt"

    @classmethod
    def available(cls) -> str | None:
        if importlib.util.find_spec("amqtt") is None and not shutil.which("amqtt"):
            return "amqtt is not installed"
        return None

    def command(self) -> list[str]:
        conf = self.workdir / "amqtt.yaml"
        conf.write_text(
            "listeners:\n"
            "  default:\n"
            "    type: tcp\n"
            f"    bind: 127.0.0.1:{self.port}\n"
            "    max_connections: 0\n"
            "plugins:\n"
            "  amqtt.plugins.authentication.AnonymousAuthPlugin:\n"
            "    allow_anonymous: true\n"
        )
        if importlib.util.find_spec("amqtt") is not None:
            # the module behind the `amqtt` console script, without a pyenv shim in between
            return [sys.executable, "-m", "amqtt.scripts.broker_script", "-c", str(conf)]
        return [str(shutil.which("amqtt")), "-c", str(conf)]

    def version(self) -> str:
        try:
            from importlib.metadata import version

            return version("amqtt")
        except Exception:
            return ""


BROKERS: dict[str, type[Broker]] = {"lichen": Lichen, "mosquitto": Mosquitto, "amqtt": Amqtt}


# ----------------------------------------------------------------------- loadgen


def run_loadgen(args: list[str], timeout: float) -> dict[str, Any]:
    """Runs the load generator to completion and returns its JSON result."""
    cmd = [str(LOADGEN_BIN), *args]
    try:
        proc = subprocess.run(
            cmd, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL
        )
    except subprocess.TimeoutExpired:
        return {"complete": False, "error": f"loadgen did not finish within {timeout:.0f} s"}
    return parse_loadgen_output(proc.stdout, proc.stderr, proc.returncode)


def parse_loadgen_output(stdout: str, stderr: str, rc: int | None) -> dict[str, Any]:
    for line in reversed(stdout.strip().splitlines()):
        line = line.strip()
        if line.startswith("{"):
            try:
                return json.loads(line)
            except json.JSONDecodeError:
                break
    return {"complete": False, "error": f"loadgen rc={rc}: {stderr.strip()[-500:]}"}


class LineReader:
    """Reads a child's stdout lines on a thread so waits can be bounded."""

    def __init__(self, stream: Any) -> None:
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.thread = threading.Thread(target=self._run, args=(stream,), daemon=True)
        self.thread.start()

    def _run(self, stream: Any) -> None:
        for line in stream:
            self.lines.put(line)
        self.lines.put(None)

    def get(self, timeout: float) -> str | None:
        try:
            return self.lines.get(timeout=timeout)
        except queue.Empty:
            return None


# --------------------------------------------------------------------- scenarios


@dataclass
class Options:
    duration: float
    warmup: float
    settle: float
    idle_conns: int
    retained: int
    latency_rate: float
    fanout_subs: int
    fanin_pubs: int
    size: int


def loadgen_common(broker: Broker, opts: Options) -> list[str]:
    return ["--port", str(broker.port), "--size", str(opts.size)]


def throughput_args(opts: Options) -> list[str]:
    return ["--duration", str(opts.duration), "--warmup", str(opts.warmup)]


def sc_fanin(qos: int) -> Callable[[Broker, Options], dict[str, Any]]:
    def run(broker: Broker, opts: Options) -> dict[str, Any]:
        args = ["fanin", "--qos", str(qos), "--pubs", str(opts.fanin_pubs)]
        args += ["--window", str(QOS1_WINDOW), *throughput_args(opts)]
        args += loadgen_common(broker, opts)
        limit = opts.duration + opts.warmup + 30
        return run_loadgen([*args, "--timeout", str(limit)], timeout=limit + 15)

    return run


def sc_fanout(broker: Broker, opts: Options) -> dict[str, Any]:
    args = ["fanout", "--qos", "0", "--subs", str(opts.fanout_subs), *throughput_args(opts)]
    args += loadgen_common(broker, opts)
    limit = opts.duration + opts.warmup + 30
    return run_loadgen([*args, "--timeout", str(limit)], timeout=limit + 15)


def sc_latency(broker: Broker, opts: Options) -> dict[str, Any]:
    args = ["latency", "--qos", "1", "--rate", str(opts.latency_rate)]
    args += ["--window", str(QOS1_WINDOW), *throughput_args(opts)]
    args += loadgen_common(broker, opts)
    limit = opts.duration + opts.warmup + 30
    return run_loadgen([*args, "--timeout", str(limit)], timeout=limit + 15)


def sc_retained(broker: Broker, opts: Options) -> dict[str, Any]:
    args = ["retained", "--qos", "1", "--count", str(opts.retained)]
    args += ["--window", str(QOS1_WINDOW), *loadgen_common(broker, opts)]
    limit = 120.0
    return run_loadgen([*args, "--timeout", str(limit)], timeout=limit + 15)


def sc_idle_rss(broker: Broker, opts: Options) -> dict[str, Any]:
    return {"complete": True, "error": None, "rss_mb": broker.rss_mb()}


def sc_idle_conns(broker: Broker, opts: Options) -> dict[str, Any]:
    before = broker.rss_mb()
    limit = 120.0
    cmd = [str(LOADGEN_BIN), "idle", "--conns", str(opts.idle_conns), "--duration", "0"]
    cmd += ["--timeout", str(limit), "--port", str(broker.port)]
    proc = subprocess.Popen(
        cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        reader = LineReader(proc.stdout)
        line = reader.get(timeout=limit + 15)
        result = parse_loadgen_output(line or "", "", proc.poll())
        time.sleep(opts.settle)  # let the broker finish its per-connection work
        after = broker.rss_mb()
        result.update(
            rss_before_mb=before,
            rss_after_mb=after,
            rss_growth_mb=after - before,
            kb_per_conn=(after - before) * 1024 / max(1, result.get("connected") or 1),
        )
        # closing stdin ends the hold; loadgen then closes its sockets and exits
        with contextlib.suppress(OSError):
            proc.stdin.close()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)
        result["dropped_note"] = (proc.stderr.read() or "").strip()[-300:]
        return result
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=5)


@dataclass
class Scenario:
    name: str
    title: str
    run: Callable[[Broker, Options], dict[str, Any]]
    cpu_key: str = "lg_window_cpu_pct"  # loadgen figure checked against LOADGEN_CPU_WARN


SCENARIOS: dict[str, Scenario] = {
    s.name: s
    for s in (
        Scenario("fanin_qos0", "QoS 0 fan-in", sc_fanin(0)),
        Scenario("fanin_qos1", "QoS 1 fan-in", sc_fanin(1)),
        Scenario("fanout_qos0", "QoS 0 fan-out", sc_fanout),
        Scenario("latency_qos1", "QoS 1 latency", sc_latency, "lg_cpu_pct"),
        Scenario("idle_conns", "idle connections", sc_idle_conns, ""),
        Scenario("idle_rss", "idle RSS", sc_idle_rss, ""),
        Scenario("retained", "retained delivery", sc_retained, "lg_cpu_pct"),
    )
}


def run_one(broker_cls: type[Broker], scenario: Scenario, opts: Options) -> dict[str, Any]:
    """Fresh broker, one scenario, broker stopped whatever happens."""
    workdir = Path(tempfile.mkdtemp(prefix=f"bench-{broker_cls.name}-"))
    broker = broker_cls(workdir, free_port())
    t0 = time.monotonic()
    try:
        try:
            broker.start()
        except BrokerError as exc:
            return {"complete": False, "error": str(exc), "start_failed": True}
        time.sleep(opts.settle)
        rss0 = broker.rss_mb()
        cpu0, w0 = broker.cpu_s(), time.monotonic()
        result = scenario.run(broker, opts)
        cpu1, w1 = broker.cpu_s(), time.monotonic()
        result["broker_idle_rss_mb"] = rss0
        result["broker_rss_end_mb"] = broker.rss_mb()
        result["broker_cpu_s"] = cpu1 - cpu0
        result["broker_cpu_pct"] = 100.0 * (cpu1 - cpu0) / max(1e-9, w1 - w0)
        if not broker.alive():
            result["complete"] = False
            result["error"] = (result.get("error") or "") + " broker exited during the run"
            result["broker_log"] = tail(broker.log_path)
        return result
    finally:
        broker.stop()
        result_wall = time.monotonic() - t0
        log(f"  {broker_cls.name:<10} {scenario.name:<13} done in {result_wall:5.1f} s")
        shutil.rmtree(workdir, ignore_errors=True)


# ----------------------------------------------------------------------- summary


@dataclass
class Metric:
    scenario: str
    label: str
    get: Callable[[dict[str, Any]], float | None]
    better: str  # "higher" or "lower"
    fmt: str = "{:,.0f}"


def _lat(key: str) -> Callable[[dict[str, Any]], float | None]:
    return lambda r: (r.get("latency") or {}).get(key) if r.get("samples") else None


def metrics(opts: Options) -> list[Metric]:
    rate = int(opts.latency_rate)
    return [
        Metric(
            "fanin_qos0",
            f"QoS 0 fan-in, {opts.fanin_pubs} pub → 1 sub (msg/s)",
            lambda r: r.get("rate"),
            "higher",
        ),
        Metric(
            "fanin_qos1",
            f"QoS 1 fan-in, {opts.fanin_pubs} pub → 1 sub (msg/s)",
            lambda r: r.get("rate"),
            "higher",
        ),
        Metric(
            "fanin_qos1",
            "QoS 1 fan-in: rate PUBACKed to the publishers (msg/s)",
            lambda r: r.get("sent_rate"),
            "info",
        ),
        Metric(
            "fanout_qos0",
            f"QoS 0 fan-out, 1 pub → {opts.fanout_subs} subs (deliveries/s)",
            lambda r: r.get("rate"),
            "higher",
        ),
        Metric("latency_qos1", f"Latency p50 @ {rate:,} msg/s QoS 1 (µs)", _lat("p50_us"), "lower"),
        Metric("latency_qos1", f"Latency p99 @ {rate:,} msg/s QoS 1 (µs)", _lat("p99_us"), "lower"),
        Metric(
            "idle_conns",
            f"{opts.idle_conns:,} idle connections: RSS growth (MB)",
            lambda r: r.get("rss_growth_mb"),
            "lower",
            "{:,.1f}",
        ),
        Metric("idle_rss", "Idle RSS (MB)", lambda r: r.get("rss_mb"), "lower", "{:,.1f}"),
        Metric(
            "retained",
            f"{opts.retained:,} retained → 1 wildcard sub: time (s)",
            lambda r: r.get("deliver_s") or None,
            "lower",
            "{:,.3f}",
        ),
        Metric(
            "retained",
            f"{opts.retained:,} retained → 1 wildcard sub (msg/s)",
            lambda r: r.get("deliver_rate") or None,
            "higher",
        ),
    ]


def cell_flags(scenario: str, run: dict[str, Any], opts: Options) -> str:
    flags = ""
    if not run.get("complete", False):
        flags += "†"
    if scenario == "latency_qos1":
        achieved = run.get("publish_rate") or 0.0
        if achieved < 0.95 * opts.latency_rate:
            flags += "‡"
    return flags


def median_value(runs: list[dict[str, Any]], m: Metric) -> float | None:
    values = []
    for r in runs:
        if r.get("start_failed"):
            continue
        with contextlib.suppress(TypeError, ValueError):
            v = m.get(r)
            if v is not None:
                values.append(float(v))
    return statistics.median(values) if values else None


def representative(runs: list[dict[str, Any]], m: Metric) -> dict[str, Any]:
    """The run whose value is the median (for flags)."""
    med = median_value(runs, m)
    best = runs[0] if runs else {}
    for r in runs:
        with contextlib.suppress(TypeError, ValueError):
            if med is not None and m.get(r) is not None and float(m.get(r)) == med:
                return r
    return best


def fmt_ratio(a: float | None, b: float | None) -> str:
    if a is None or b is None or b == 0:
        return "–"
    r = a / b
    if r >= 10:
        return f"{r:,.0f}×"
    return f"{r:.2f}×" if r >= 0.1 else f"{r:.2g}×"


def render_table(
    results: dict[str, dict[str, list[dict[str, Any]]]],
    brokers: list[str],
    scenarios: list[str],
    opts: Options,
) -> str:
    cols = ["Scenario", *brokers]
    if "lichen" in brokers:
        cols += [f"lichen/{b}" for b in brokers if b != "lichen"]
    cols.append("better")
    out = ["| " + " | ".join(cols) + " |", "|" + "|".join(["---"] + ["---:"] * (len(cols) - 1))]
    out[-1] += "|"
    for m in metrics(opts):
        if m.scenario not in scenarios:
            continue
        row = [m.label]
        values: dict[str, float | None] = {}
        for b in brokers:
            runs = results.get(b, {}).get(m.scenario, [])
            v = median_value(runs, m)
            values[b] = v
            if v is None:
                err = runs[0].get("error") if runs else None
                row.append("n/a" if not err else "n/a†")
            else:
                row.append(m.fmt.format(v) + cell_flags(m.scenario, representative(runs, m), opts))
        if "lichen" in brokers:
            row += [fmt_ratio(values["lichen"], values[b]) for b in brokers if b != "lichen"]
        row.append(m.better)
        out.append("| " + " | ".join(row) + " |")
    return "\n".join(out)


def render_cpu_table(
    results: dict[str, dict[str, list[dict[str, Any]]]],
    brokers: list[str],
    scenarios: list[str],
) -> str:
    head = ["Scenario", *[f"{b} CPU %" for b in brokers], *[f"loadgen vs {b} %" for b in brokers]]
    out = ["| " + " | ".join(head) + " |", "|---" + "|---:" * (len(head) - 1) + "|"]
    for name in scenarios:
        if name == "idle_rss":  # nothing runs, so there is no CPU figure
            continue
        sc = SCENARIOS[name]
        row = [name]
        for b in brokers:
            vals = [
                r["broker_cpu_pct"]
                for r in results.get(b, {}).get(name, [])
                if "broker_cpu_pct" in r
            ]
            row.append(f"{statistics.median(vals):.0f}" if vals else "–")
        for b in brokers:
            vals = [
                r[sc.cpu_key]
                for r in results.get(b, {}).get(name, [])
                if sc.cpu_key and sc.cpu_key in r
            ]
            row.append(f"{max(vals):.0f}" if vals else "–")
        out.append("| " + " | ".join(row) + " |")
    return "\n".join(out)


# -------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--brokers", default=",".join(ALL_BROKERS), help="comma-separated list")
    p.add_argument(
        "--scenarios", default=",".join(SCENARIOS), help="comma-separated: " + ",".join(SCENARIOS)
    )
    p.add_argument("--duration", type=float, default=5.0, help="measured seconds per scenario")
    p.add_argument("--warmup", type=float, default=1.0, help="unmeasured seconds first")
    p.add_argument("--settle", type=float, default=1.0, help="pause after start-up before RSS")
    p.add_argument("--repeat", type=int, default=1, help="runs per cell; the median is shown")
    p.add_argument("--idle-conns", type=int, default=1000)
    p.add_argument("--retained", type=int, default=10000)
    p.add_argument("--latency-rate", type=float, default=2000.0)
    p.add_argument("--fanout-subs", type=int, default=20)
    p.add_argument("--fanin-pubs", type=int, default=4)
    p.add_argument("--size", type=int, default=64, help="payload bytes")
    p.add_argument(
        "--lichen-config",
        choices=("matched", "default"),
        default="matched",
        help="matched: lichen gets mosquitto's queue depth and in-flight window\n"
        "default: lichen's embedded defaults",
    )
    p.add_argument(
        "--lichen-root",
        type=Path,
        default=REPO_ROOT,
        help="checkout whose gateway/ is run (default: this repository)",
    )
    p.add_argument("--json", metavar="OUT", help="write every raw result here")
    p.add_argument("--rebuild", action="store_true", help="rebuild the load generator")
    return p.parse_args(argv)


def _terminate(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt  # unwinds through the finally blocks that stop brokers


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if psutil is None:
        raise SystemExit("psutil is required: pip install psutil")
    brokers = [b.strip() for b in args.brokers.split(",") if b.strip()]
    scenarios = [s.strip() for s in args.scenarios.split(",") if s.strip()]
    for b in brokers:
        if b not in BROKERS:
            raise SystemExit(f"unknown broker {b!r}; choose from {', '.join(BROKERS)}")
    for s in scenarios:
        if s not in SCENARIOS:
            raise SystemExit(f"unknown scenario {s!r}; choose from {', '.join(SCENARIOS)}")
    opts = Options(
        duration=args.duration,
        warmup=args.warmup,
        settle=args.settle,
        idle_conns=args.idle_conns,
        retained=args.retained,
        latency_rate=args.latency_rate,
        fanout_subs=args.fanout_subs,
        fanin_pubs=args.fanin_pubs,
        size=args.size,
    )
    Lichen.config_mode = args.lichen_config
    Lichen.root = args.lichen_root.resolve()
    signal.signal(signal.SIGTERM, _terminate)
    build_loadgen(force=args.rebuild)
    nofile = raise_fd_limit(max(65536, args.idle_conns * 2 + 1024))
    if nofile < args.idle_conns + 256:
        log(f"warning: RLIMIT_NOFILE is {nofile}; {args.idle_conns} connections may not fit")

    results: dict[str, dict[str, list[dict[str, Any]]]] = {b: {} for b in brokers}
    skipped: dict[str, str] = {}
    versions: dict[str, str] = {}
    for b in brokers:
        reason = BROKERS[b].available()
        if reason:
            skipped[b] = reason
            log(f"skipping {b}: {reason}")
    started = time.monotonic()
    # scenario-major order keeps each scenario's brokers close together in time, which
    # matters on a noisy machine
    for rep in range(args.repeat):
        for name in scenarios:
            log(f"[{rep + 1}/{args.repeat}] {name}")
            for b in brokers:
                if b in skipped:
                    continue
                res = run_one(BROKERS[b], SCENARIOS[name], opts)
                results[b].setdefault(name, []).append(res)
                if res.get("start_failed"):
                    skipped[b] = res["error"].splitlines()[0]
                    log(f"  {b} failed to start, skipping it from now on:\n{res['error']}")
                elif res.get("error"):
                    log(f"  {b} {name}: {res['error']}")
    elapsed = time.monotonic() - started
    for b in brokers:
        with contextlib.suppress(Exception):
            versions[b] = BROKERS[b](Path(tempfile.gettempdir()), 0).version()

    table = render_table(results, brokers, scenarios, opts)
    cpu_table = render_cpu_table(results, brokers, scenarios)
    print(table)
    print()
    print(
        f"† incomplete run or error (see --json).  ‡ the {opts.latency_rate:,.0f} msg/s "
        "publish rate was not sustained, so latency includes queueing.  Ratios are "
        "lichen ÷ other: read them against the 'better' column."
    )
    print()
    print(cpu_table)
    print()
    print(
        f"Broker CPU is % of one core over the whole loadgen run; loadgen CPU is its own "
        f"getrusage figure (fan modes: measured window). Warn level {LOADGEN_CPU_WARN:.0f}%."
    )
    for b in brokers:
        for name in scenarios:
            sc = SCENARIOS[name]
            for r in results.get(b, {}).get(name, []):
                v = r.get(sc.cpu_key) if sc.cpu_key else None
                if v is not None and v > LOADGEN_CPU_WARN:
                    print(f"WARNING: loadgen used {v:.0f}% CPU in {name} against {b}")
    for b, why in skipped.items():
        print(f"note: {b} skipped: {why}")
    print(f"\n{len(brokers)} brokers × {len(scenarios)} scenarios in {elapsed:.0f} s")

    if args.json:
        doc = {
            "meta": {
                "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
                "host": platform.node(),
                "platform": platform.platform(),
                "cpus": os.cpu_count(),
                "python": platform.python_version(),
                "versions": versions,
                "options": vars(args),
                "skipped": skipped,
                "elapsed_s": elapsed,
            },
            "table_markdown": table,
            "results": results,
        }
        Path(args.json).write_text(json.dumps(doc, indent=2, default=str) + "\n")
        log(f"raw results written to {args.json}")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        log("interrupted")
        sys.exit(130)
