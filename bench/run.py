#!/usr/bin/env python3
"""Benchmark harness: lichen against mosquitto and amqtt.

For every scenario and every broker it starts a fresh broker process on a free
loopback port, waits for the port, drives it with the C load generator
(bench/loadgen.c, built into bench/build/ on demand), samples the broker's CPU
and RSS with psutil, and stops it again.  The summary is a markdown table with
the lichen/mosquitto and lichen/amqtt ratios; ``--json`` keeps every raw figure.

The auth scenarios (``tls_connect``, ``policy_fanin``) run lichen and mosquitto only: the
mutual-TLS connection rate (bench/tlsconnect.c, OpenSSL) against certificates from lichen's
own CA, and QoS 0 fan-in with and without a policy (lichen) or an ACL file (mosquitto).

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
TLSCONNECT_SRC = BENCH_DIR / "tlsconnect.c"
TLSCONNECT_BIN = BUILD_DIR / "tlsconnect"
POLICY_FILE = BENCH_DIR / "bench-policy.json"  # lichen's "bench" policy (policy_fanin)
ACL_FILE = BENCH_DIR / "bench-acl.conf"  # mosquitto's counterpart of it
POLICY_NAME = "bench"
TLS_ID_PREFIX = "bench-dev-"  # thing names = client ids of the TLS scenario

ALL_BROKERS = ("lichen", "mosquitto", "amqtt")
QOS1_WINDOW = 64  # in-flight QoS 1 messages per publisher; the brokers' limits match it
MATCHED_QUEUE = 1_000_000  # per-client queue depth given to mosquitto and lichen
LOADGEN_CPU_WARN = 70.0  # % of one core; above this the generator may be the bottleneck
STARVED_PCT = 90.0  # a CPU-bound broker below this % of a core was short of CPU
START_TIMEOUT = 30.0
STOP_TIMEOUT = 5.0
MB = 1024 * 1024


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- build


def _build(src: Path, binary: Path, force: bool, libs: tuple[str, ...] = ()) -> str | None:
    """Compiles one C file unless the binary is up to date; the compiler's errors, or None."""
    fresh = binary.exists() and binary.stat().st_mtime >= src.stat().st_mtime
    if fresh and not force:
        return None
    BUILD_DIR.mkdir(parents=True, exist_ok=True)
    cc = os.environ.get("CC", "gcc")
    cmd = [cc, "-O2", "-Wall", "-Wextra", "-o", str(binary), str(src), *libs]
    log(f"building {binary.name}: {' '.join(cmd)}")
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    return proc.stderr if proc.returncode != 0 else None


def build_loadgen(force: bool = False) -> Path:
    """Compiles bench/loadgen.c into bench/build/loadgen unless it is up to date."""
    err = _build(LOADGEN_SRC, LOADGEN_BIN, force)
    if err is not None:
        raise SystemExit(f"loadgen build failed:\n{err}")
    return LOADGEN_BIN


def build_tlsconnect(force: bool = False) -> str | None:
    """Compiles bench/tlsconnect.c (needs libssl-dev); returns why it cannot, or None."""
    err = _build(TLSCONNECT_SRC, TLSCONNECT_BIN, force, ("-lssl", "-lcrypto"))
    if err is not None:
        return "tlsconnect build failed (libssl-dev installed?): " + err.strip()[-300:]
    return None


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


# ------------------------------------------------------------------- auth fixtures


class FixtureError(RuntimeError):
    pass


@dataclass
class TLSFixture:
    state: Path  # a lichen state directory (CA, registry with the devices) to copy per run
    certs: Path  # <TLS_ID_PREFIX><i>.crt / .key for i < ids
    ids: int
    ca: Path  # lichen's CA certificate, from `lichen ca show`
    server_cert: Path  # mosquitto's server certificate, issued by lichen's CA
    server_key: Path


class Fixtures:
    """What the auth scenarios need, made once per run.py invocation with lichen's own CLI
    (from --lichen-root) and shared by every broker and repetition: a CA and enrolled
    devices for tls_connect, a registry holding the "bench" policy for policy_fanin."""

    def __init__(self, base: Path, tls_ids: int) -> None:
        self.base = base
        self.tls_ids = tls_ids
        self._tls: TLSFixture | None = None
        self._policy: Path | None = None
        self._failed: dict[str, str] = {}

    def lichen(self, *args: str) -> str:
        cmd = [sys.executable, "-m", "gateway.cli", *args]
        try:
            proc = subprocess.run(
                cmd,
                cwd=Lichen.root,
                env=lichen_env(Lichen.root),
                capture_output=True,
                text=True,
                timeout=60,
                stdin=subprocess.DEVNULL,
            )
        except subprocess.TimeoutExpired:
            raise FixtureError(f"`lichen {' '.join(args[:2])}` did not finish in 60 s") from None
        if proc.returncode != 0:
            raise FixtureError(f"`lichen {' '.join(args)}` failed: {proc.stderr.strip()[-400:]}")
        return proc.stdout

    def _once(self, key: str, make: Callable[[], Any]) -> Any:
        if key in self._failed:
            raise FixtureError(self._failed[key])
        try:
            return make()
        except (FixtureError, OSError, ValueError, ImportError) as exc:
            self._failed[key] = str(exc)
            raise FixtureError(str(exc)) from None

    def tls(self) -> TLSFixture:
        if self._tls is None:
            self._tls = self._once("tls", self._make_tls)
        return self._tls

    def _make_tls(self) -> TLSFixture:
        t0 = time.monotonic()
        d = self.base / "tls"
        state, certs = d / "state", d / "certs"
        certs.mkdir(parents=True)
        ca = d / "ca.pem"
        ca.write_text(self.lichen("ca", "show", "--state-dir", str(state)))
        for i in range(self.tls_ids):
            name = f"{TLS_ID_PREFIX}{i}"
            # default policy lichen-device: connect as client id = thing name, own topics
            self.lichen(
                "device", "add", name, "--state-dir", str(state),
                "--cert-out", str(certs / f"{name}.crt"), "--key-out", str(certs / f"{name}.key"),
            )  # fmt: skip
        server_cert, server_key = d / "mosquitto-server.crt", d / "mosquitto-server.key"
        issue_server_cert(
            state / "pki" / "ca.crt", state / "pki" / "ca.key", server_cert, server_key
        )
        log(f"  tls fixture: lichen CA and {self.tls_ids} devices in {time.monotonic() - t0:.1f} s")
        return TLSFixture(state, certs, self.tls_ids, ca, server_cert, server_key)

    def policy_state(self) -> Path:
        if self._policy is None:
            self._policy = self._once("policy", self._make_policy)
        return self._policy

    def _make_policy(self) -> Path:
        state = self.base / "policy" / "state"
        self.lichen("policy", "put", POLICY_NAME, str(POLICY_FILE), "--state-dir", str(state))
        return state


def issue_server_cert(ca_cert: Path, ca_key: Path, cert_out: Path, key_out: Path) -> None:
    """A server certificate for 127.0.0.1 from lichen's CA, for mosquitto: EC P-256 and
    ECDSA-SHA256 like the one lichen issues itself, so both handshakes cost the same."""
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    authority = x509.load_pem_x509_certificate(ca_cert.read_bytes())
    signer = serialization.load_pem_private_key(ca_key.read_bytes(), password=None)
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    names = [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
        .issuer_name(authority.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(signer, hashes.SHA256())  # type: ignore[arg-type]
    )
    cert_out.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_out.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    key_out.chmod(0o600)


# ------------------------------------------------------------------------- brokers


class BrokerError(RuntimeError):
    pass


class Broker:
    """One broker process, started fresh for each scenario.

    `profile` selects the set-up: "" plaintext loopback listener, allow-all (every
    throughput scenario); "open" the same for policy_fanin's baseline; "policy" with lichen's
    loopback policy / mosquitto's ACL file; "tls" the mutual-TLS device listener, which is
    then `port`."""

    name = "broker"
    fixtures: Fixtures | None = None  # certificates and policies, shared by all runs

    def __init__(
        self, workdir: Path, port: int, window: int = QOS1_WINDOW, profile: str = ""
    ) -> None:
        self.workdir = workdir
        self.port = port
        self.window = window
        self.profile = profile
        self.proc: subprocess.Popen[bytes] | None = None
        self.ps: Any = None
        self.log_path = workdir / f"{self.name}.log"
        self.probe_port = port  # the port whose opening means "ready"

    def prepare(self) -> None:
        """Writes what the broker needs on disk before it starts (profile-specific)."""

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
        self.prepare()
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
            if port_open(self.probe_port):
                return
            time.sleep(0.1)
        raise BrokerError(f"{self.name} did not open port {self.probe_port} within {timeout:.0f} s")

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


def lichen_env(root: Path) -> dict[str, str]:
    env = dict(os.environ)
    extra = env.get("PYTHONPATH")
    env["PYTHONPATH"] = str(root) + (os.pathsep + extra if extra else "")
    return env


class Lichen(Broker):
    name = "lichen"
    # "matched": the same queue depth and in-flight window as the mosquitto config below;
    # "default": lichen's embedded defaults (max_queued_messages 1000, max_inflight 100)
    config_mode = "matched"
    root = REPO_ROOT  # the checkout to run; --lichen-root can point at another one

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if self.profile == "tls":
            self.mqtt_port = free_port()
            # the plaintext listener opens after the TLS one; probing it instead keeps a
            # refused handshake out of the TLS listener's log and counters
            self.probe_port = self.mqtt_port

    def prepare(self) -> None:
        state = self.workdir / "state"
        if self.profile in ("open", "policy"):
            # both variants get the same registry (holding the "bench" policy), so the one
            # difference is whether [auth] loopback_policy names it
            assert self.fixtures is not None
            shutil.copytree(self.fixtures.policy_state(), state)
        elif self.profile == "tls":
            assert self.fixtures is not None
            shutil.copytree(self.fixtures.tls().state, state)

    def command(self) -> list[str]:
        state = self.workdir / "state"
        cmd = [sys.executable, "-m", "gateway.cli", "run", "--state-dir", str(state)]
        sections = []
        if self.config_mode == "matched":
            sections.append(
                f"[mqtt]\nmax_inflight = {self.window}\nmax_queued_messages = {MATCHED_QUEUE}\n"
            )
        if self.profile == "tls":
            cmd += ["--mqtt-port", str(self.mqtt_port), "--tls-port", str(self.port)]
            cmd += ["--discovery-port", "0"]
            sections.append('[listeners]\ntls_host = "127.0.0.1"\n')
        else:
            cmd += ["--mqtt-port", str(self.port)]
            cmd += ["--tls-port", "0"]  # plaintext only, like the peers
            if self.profile in ("open", "policy"):
                cmd += ["--discovery-port", "0"]
        if self.profile == "policy":
            sections.append(f'[auth]\nloopback_policy = "{POLICY_NAME}"\n')
        if sections:
            conf = self.workdir / "lichen.toml"
            conf.write_text("\n".join(sections))
            cmd += ["--config", str(conf)]
        return cmd

    def cwd(self) -> Path | None:
        return self.root

    def env(self) -> dict[str, str]:
        return lichen_env(self.root)

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
        if self.profile == "tls":
            assert self.fixtures is not None
            tls = self.fixtures.tls()
            acl = self.workdir / "tls-acl.conf"
            # the counterpart of lichen's default device policy: each device its own topics
            acl.write_text("pattern readwrite things/%u/#\npattern readwrite $aws/things/%u/#\n")
            access = [
                f"listener {self.port} 127.0.0.1",
                f"cafile {tls.ca}",  # lichen's CA: the same device certificates work here
                f"certfile {tls.server_cert}",
                f"keyfile {tls.server_key}",
                "require_certificate true",
                "use_identity_as_username true",  # username = certificate CN = thing name
                "allow_anonymous false",
                f"acl_file {acl}",
            ]
        else:
            access = [f"listener {self.port} 127.0.0.1", "allow_anonymous true"]
            if self.profile == "policy":
                access.append(f"acl_file {ACL_FILE}")
        conf.write_text(
            "\n".join(
                [
                    *access,
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
    tls_conns: int = 8
    tls_procs: int = 1
    tls_verify: bool = True
    policy_topics: int = 1


def loadgen_common(broker: Broker, opts: Options) -> list[str]:
    return ["--port", str(broker.port), "--size", str(opts.size)]


def throughput_args(opts: Options) -> list[str]:
    return ["--duration", str(opts.duration), "--warmup", str(opts.warmup)]


def sc_fanin(qos: int, policy: bool = False) -> Callable[[Broker, Options], dict[str, Any]]:
    def run(broker: Broker, opts: Options) -> dict[str, Any]:
        args = ["fanin", "--qos", str(qos), "--pubs", str(opts.fanin_pubs)]
        if policy and opts.policy_topics > 1:
            args += ["--topics", str(opts.policy_topics)]
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


def sc_tls_connect(broker: Broker, opts: Options) -> dict[str, Any]:
    assert broker.fixtures is not None
    try:
        tls = broker.fixtures.tls()
    except FixtureError as exc:
        return {"complete": False, "error": f"TLS fixture: {exc}"}
    args = ["--port", str(broker.port), "--cafile", str(tls.ca), "--cert-dir", str(tls.certs)]
    args += ["--prefix", TLS_ID_PREFIX, "--ids", str(tls.ids), "--concurrency", str(opts.tls_conns)]
    args += ["--procs", str(opts.tls_procs), *throughput_args(opts)]
    if not opts.tls_verify:
        args.append("--no-verify")
    limit = opts.duration + opts.warmup + 3 + 30
    cmd = [str(TLSCONNECT_BIN), *args, "--timeout", str(limit)]
    try:
        proc = subprocess.run(
            cmd, capture_output=True, text=True, timeout=limit + 15, stdin=subprocess.DEVNULL
        )
    except subprocess.TimeoutExpired:
        return {"complete": False, "error": f"tlsconnect did not finish within {limit:.0f} s"}
    return parse_loadgen_output(proc.stdout, proc.stderr, proc.returncode)


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
    # the broker set-ups (Broker.profile) it compares, each on a fresh broker; run back to
    # back per broker, in reverse order on every other repetition (A B, B A, ...)
    variants: tuple[str, ...] = ("",)
    brokers: tuple[str, ...] = ALL_BROKERS  # the brokers it has a set-up for

    def order(self, rep: int) -> tuple[str, ...]:
        return self.variants if rep % 2 == 0 else self.variants[::-1]


VARIANT_LABELS = {"open": "allow-all / no ACL", "policy": "policy / ACL file", "tls": "mutual TLS"}


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
        Scenario(
            "tls_connect",
            "mutual-TLS connection set-up",
            sc_tls_connect,
            variants=("tls",),
            brokers=("lichen", "mosquitto"),
        ),
        Scenario(
            "policy_fanin",
            "QoS 0 fan-in without and with policy checks",
            sc_fanin(0, policy=True),
            variants=("open", "policy"),
            brokers=("lichen", "mosquitto"),
        ),
    )
}


def run_one(
    broker_cls: type[Broker], scenario: Scenario, opts: Options, variant: str = ""
) -> dict[str, Any]:
    """Fresh broker, one scenario, broker stopped whatever happens."""
    workdir = Path(tempfile.mkdtemp(prefix=f"bench-{broker_cls.name}-"))
    broker = broker_cls(workdir, free_port(), profile=variant)
    t0 = time.monotonic()
    try:
        try:
            broker.start()
        except FixtureError as exc:  # the set-up failed, not the broker
            return {"complete": False, "error": f"set-up: {exc}", "variant": variant}
        except BrokerError as exc:
            return {"complete": False, "error": str(exc), "start_failed": True}
        time.sleep(opts.settle)
        rss0 = broker.rss_mb()
        cpu0, w0 = broker.cpu_s(), time.monotonic()
        result = scenario.run(broker, opts)
        cpu1, w1 = broker.cpu_s(), time.monotonic()
        result["variant"] = variant
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
        label = f"{scenario.name} [{variant}]" if variant else scenario.name
        log(f"  {broker_cls.name:<10} {label:<13} done in {result_wall:5.1f} s")
        shutil.rmtree(workdir, ignore_errors=True)


# ----------------------------------------------------------------------- summary


@dataclass
class Metric:
    scenario: str
    label: str
    get: Callable[[dict[str, Any]], float | None]
    better: str  # "higher" or "lower"
    fmt: str = "{:,.0f}"
    variant: str | None = None  # only the runs of this variant (None: every run)
    # a figure over all of a broker's runs of the scenario instead of the median of `get`
    summary: Callable[[list[dict[str, Any]]], float | None] | None = None
    ratio: bool = True  # show lichen ÷ other


def cpu_us_per_msg(r: dict[str, Any]) -> float | None:
    """Broker CPU time per message delivered, over the whole load-generator run."""
    n, cpu = r.get("total_received"), r.get("broker_cpu_s")
    return 1e6 * cpu / n if n and cpu is not None and r.get("complete") else None


def policy_cost(runs: list[dict[str, Any]], key: str = "cost_pct") -> float | None:
    """Throughput lost to policy checks, in % of the allow-all figure: the median over the
    repetitions of 1 - with/without, each pair run back to back on fresh brokers.  With
    key="cpu_cost_pct", the same for the broker CPU time per delivered message."""
    costs = [c[key] for c in policy_pairs(runs) if c.get(key) is not None]
    return statistics.median(costs) if costs else None


def policy_summary(
    results: dict[str, dict[str, list[dict[str, Any]]]], brokers: list[str], budget: float
) -> tuple[list[str], dict[str, Any]]:
    """The policy_fanin lines under the tables, and what they are made of (for --json)."""
    out: list[str] = []
    doc: dict[str, Any] = {"pairs": {}}
    open_cpu: list[float] = []
    for b in brokers:
        runs = results.get(b, {}).get("policy_fanin", [])
        pairs = policy_pairs(runs)
        doc["pairs"][b] = pairs
        if not pairs:
            continue
        each = ", ".join("n/a" if p["cost_pct"] is None else f"{p['cost_pct']:.1f}%" for p in pairs)
        cost, cpu = policy_cost(runs), policy_cost(runs, "cpu_cost_pct")
        what = "policy" if b == "lichen" else "ACL"
        line = f"{b}: {what} checks cost " + ("n/a" if cost is None else f"{cost:.1f}%")
        line += f" of QoS 0 fan-in throughput (median of {len(pairs)}: {each})"
        if b == "lichen":
            line += f"; budget {budget:.0f}%"
            open_cpu = [p["open_cpu_us_per_msg"] for p in pairs if p["open_cpu_us_per_msg"]]
        if cpu is not None:
            line += f"; broker CPU per message {cpu:+.1f}%"
        out.append(line)
        if b == "lichen" and cost is not None and cost > budget:
            out.append(f"WARNING: lichen's policy checks cost more than {budget:.0f}%")
        starved = sum(
            1
            for p in pairs
            if min(p["open_broker_cpu_pct"] or 0, p["policy_broker_cpu_pct"] or 0) < STARVED_PCT
        )
        if starved:
            out.append(
                f"  note: in {starved} of {len(pairs)} pairs {b} got less than {STARVED_PCT:.0f}% "
                "of a core in a run (a busy machine): the throughput cost is unreliable there, "
                "the CPU per message less so"
            )
    if not doc["pairs"].get("lichen"):
        return out, doc
    micro = doc["lichen_decisions"] = policy_micro()
    if "error" in micro:
        out.append(f"note: {micro['error']}")
        return out, doc
    line = (
        f"lichen's policy decisions timed in-process (bench/policy_cost.py): can_publish "
        f"{micro['can_publish_ns']:.0f} ns + can_receive {micro['can_receive_ns']:.0f} ns "
        "per message (cached)"
    )
    if open_cpu:
        per_msg = statistics.median(open_cpu)
        share = micro["per_message_ns"] / 10 / per_msg
        line += f" = {share:.0f}% of the {per_msg:.2f} µs of CPU lichen spends per message"
    out.append(line)
    if "many_can_receive_ns" in micro:
        out.append(
            f"  one subscriber receiving {micro['many_topics']:,} distinct topics in turn: "
            f"can_receive {micro['many_can_receive_ns']:,.0f} ns "
            f"({micro['many_cache_hit_pct']:.0f}% hits in the {micro['cache_size']:,}-entry "
            "decision cache); uncached evaluation "
            f"{micro['uncached_publish_ns']:,.0f} ns"
        )
    return out, doc


def policy_micro() -> dict[str, Any]:
    """bench/policy_cost.py: lichen's policy decisions timed in-process (ns per call)."""
    cmd = [sys.executable, str(BENCH_DIR / "policy_cost.py"), "--root", str(Lichen.root)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=180)
    except subprocess.TimeoutExpired:
        return {"error": "policy_cost.py did not finish in 180 s"}
    if proc.returncode != 0:
        return {"error": f"policy_cost.py failed: {proc.stderr.strip()[-300:]}"}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def policy_pairs(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Pairs the "open" and "policy" runs of policy_fanin in the order they ran."""
    open_runs = [r for r in runs if r.get("variant") == "open"]
    policy_runs = [r for r in runs if r.get("variant") == "policy"]
    pairs = []
    for a, b in zip(open_runs, policy_runs, strict=False):
        ra, rb = a.get("rate"), b.get("rate")
        ok = a.get("complete") and b.get("complete") and ra and rb is not None
        ca, cb = cpu_us_per_msg(a), cpu_us_per_msg(b)
        pairs.append(
            {
                "open": ra,
                "policy": rb,
                "cost_pct": 100.0 * (1 - rb / ra) if ok else None,
                "open_cpu_us_per_msg": ca,
                "policy_cpu_us_per_msg": cb,
                "cpu_cost_pct": 100.0 * (cb / ca - 1) if ca and cb is not None else None,
                "open_broker_cpu_pct": a.get("broker_cpu_pct"),
                "policy_broker_cpu_pct": b.get("broker_cpu_pct"),
            }
        )
    return pairs


def _lat(key: str) -> Callable[[dict[str, Any]], float | None]:
    return lambda r: (r.get("latency") or {}).get(key) if r.get("samples") else None


def metrics(opts: Options) -> list[Metric]:
    rate = int(opts.latency_rate)
    wide = f" ({opts.policy_topics:,} topics each)" if opts.policy_topics > 1 else ""
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
        Metric(
            "tls_connect",
            f"Mutual-TLS connect + CONNECT/CONNACK + DISCONNECT, {opts.tls_conns} at a time "
            "(conn/s)",
            lambda r: r.get("rate") or None,
            "higher",
        ),
        Metric(
            "tls_connect",
            "Mutual TLS: broker CPU per connection (ms)",
            lambda r: (
                1e3 * r["broker_cpu_s"] / r["completed_all"]
                if r.get("completed_all") and "broker_cpu_s" in r
                else None
            ),
            "lower",
            "{:,.2f}",
        ),
        Metric(
            "tls_connect",
            "Mutual TLS: TCP connect → CONNACK p50 (ms)",
            lambda r: (r.get("to_connack") or {}).get("p50_ms") if r.get("completed") else None,
            "lower",
            "{:,.1f}",
        ),
        Metric(
            "policy_fanin",
            f"QoS 0 fan-in {opts.fanin_pubs} → 1{wide}, allow-all / no ACL (msg/s)",
            lambda r: r.get("rate"),
            "higher",
            variant="open",
        ),
        Metric(
            "policy_fanin",
            f"QoS 0 fan-in {opts.fanin_pubs} → 1{wide}, policy / ACL file (msg/s)",
            lambda r: r.get("rate"),
            "higher",
            variant="policy",
        ),
        Metric(
            "policy_fanin",
            "Throughput lost to policy / ACL checks (%)",
            lambda r: None,
            "lower",
            "{:.1f}%",
            summary=policy_cost,
            ratio=False,
        ),
        Metric(
            "policy_fanin",
            "Broker CPU per delivered message, allow-all / no ACL (µs)",
            cpu_us_per_msg,
            "lower",
            "{:.2f}",
            variant="open",
        ),
        Metric(
            "policy_fanin",
            "Broker CPU per delivered message, policy / ACL file (µs)",
            cpu_us_per_msg,
            "lower",
            "{:.2f}",
            variant="policy",
        ),
        Metric(
            "policy_fanin",
            "Broker CPU per message added by policy / ACL checks (%)",
            lambda r: None,
            "lower",
            "{:.1f}%",
            summary=lambda runs: policy_cost(runs, "cpu_cost_pct"),
            ratio=False,
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
    if m.summary is not None:
        return m.summary(runs)
    values = []
    for r in runs:
        if r.get("start_failed") or (m.variant is not None and r.get("variant") != m.variant):
            continue
        with contextlib.suppress(TypeError, ValueError):
            v = m.get(r)
            if v is not None:
                values.append(float(v))
    return statistics.median(values) if values else None


def representative(runs: list[dict[str, Any]], m: Metric) -> dict[str, Any]:
    """The run whose value is the median (for flags)."""
    med = median_value(runs, m)
    if m.variant is not None:
        runs = [r for r in runs if r.get("variant") == m.variant]
    best = runs[0] if runs else {}
    if m.summary is not None:  # flagged when any of its runs is
        return next((r for r in runs if not r.get("complete", False)), best)
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
                applies = b in SCENARIOS[m.scenario].brokers
                row.append("–" if not applies else "n/a" if not err else "n/a†")
            else:
                row.append(m.fmt.format(v) + cell_flags(m.scenario, representative(runs, m), opts))
        if "lichen" in brokers:
            row += [
                fmt_ratio(values["lichen"], values[b]) if m.ratio else "–"
                for b in brokers
                if b != "lichen"
            ]
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
        for variant in sc.variants:
            row = [f"{name} ({VARIANT_LABELS[variant]})" if len(sc.variants) > 1 else name]
            runs = {
                b: [r for r in results.get(b, {}).get(name, []) if r.get("variant", "") == variant]
                for b in brokers
            }
            for b in brokers:
                vals = [r["broker_cpu_pct"] for r in runs[b] if "broker_cpu_pct" in r]
                row.append(f"{statistics.median(vals):.0f}" if vals else "–")
            for b in brokers:
                vals = [r[sc.cpu_key] for r in runs[b] if sc.cpu_key and sc.cpu_key in r]
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
        "--tls-conns",
        type=int,
        default=8,
        help="tls_connect: connections set up at a time, each with its own device\n"
        "certificate and client id (that many devices are enrolled)",
    )
    p.add_argument("--tls-procs", type=int, default=1, help="tls_connect: client processes")
    p.add_argument(
        "--tls-no-verify",
        action="store_true",
        help="tls_connect: the client does not verify the broker's certificate",
    )
    p.add_argument(
        "--policy-topics",
        type=int,
        default=1,
        help="policy_fanin: topics each publisher cycles over (1: one topic each, as in\n"
        "fanin_qos0; more than lichen's 1,024-entry decision cache defeats it)",
    )
    p.add_argument(
        "--policy-budget",
        type=float,
        default=10.0,
        help="policy_fanin: lichen's budget for policy checks, %% of QoS 0 throughput",
    )
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
        tls_conns=args.tls_conns,
        tls_procs=args.tls_procs,
        tls_verify=not args.tls_no_verify,
        policy_topics=args.policy_topics,
    )
    if args.tls_conns < 1 or args.tls_procs < 1:
        raise SystemExit("--tls-conns and --tls-procs must be at least 1")
    Lichen.config_mode = args.lichen_config
    Lichen.root = args.lichen_root.resolve()
    signal.signal(signal.SIGTERM, _terminate)
    build_loadgen(force=args.rebuild)
    unavailable: dict[str, str] = {}  # scenarios that cannot run here, and why
    if "tls_connect" in scenarios:
        why = build_tlsconnect(force=args.rebuild)
        if why:
            unavailable["tls_connect"] = why
            log(f"skipping tls_connect: {why}")
    fixture_dir = Path(tempfile.mkdtemp(prefix="bench-fixtures-"))
    Broker.fixtures = Fixtures(fixture_dir, tls_ids=args.tls_conns)
    try:
        return _run(args, brokers, scenarios, opts, unavailable)
    finally:
        shutil.rmtree(fixture_dir, ignore_errors=True)


def _run(
    args: argparse.Namespace,
    brokers: list[str],
    scenarios: list[str],
    opts: Options,
    unavailable: dict[str, str],
) -> int:
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
            sc = SCENARIOS[name]
            if name in unavailable:
                continue
            log(f"[{rep + 1}/{args.repeat}] {name}")
            for b in brokers:
                if b not in sc.brokers:
                    continue
                # a scenario's variants run back to back on one broker (A B, then B A)
                for variant in sc.order(rep):
                    if b in skipped:
                        break
                    res = run_one(BROKERS[b], sc, opts, variant)
                    results[b].setdefault(name, []).append(res)
                    label = f"{name} [{variant}]" if variant else name
                    if res.get("start_failed"):
                        skipped[b] = res["error"].splitlines()[0]
                        log(f"  {b} failed to start, skipping it from now on:\n{res['error']}")
                    elif res.get("error"):
                        log(f"  {b} {label}: {res['error']}")
                    elif res.get("first_error"):
                        log(f"  {b} {label}: some cycles failed, first: {res['first_error']}")
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
    policy: dict[str, Any] = {}
    if "policy_fanin" in scenarios:
        print()
        summary, policy = policy_summary(results, brokers, args.policy_budget)
        print("\n".join(summary))
    for name, why in unavailable.items():
        print(f"note: scenario {name} not run: {why}")
    for b, why in skipped.items():
        print(f"note: {b} skipped: {why}")
    applicable = {
        name: [b for b in brokers if b in SCENARIOS[name].brokers and b not in skipped]
        for name in scenarios
    }
    for name in scenarios:
        left_out = [b for b in brokers if b not in SCENARIOS[name].brokers]
        if left_out:
            print(f"note: {name} has no set-up for {', '.join(left_out)} (shown as –)")
    runs = sum(
        len(applicable[n]) * len(SCENARIOS[n].variants) for n in scenarios if n not in unavailable
    )
    print(f"\n{len(brokers)} brokers × {len(scenarios)} scenarios ({runs} runs) in {elapsed:.0f} s")

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
            "policy_fanin": policy,
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
