"""A local stand-in for AWS IoT Core: mosquitto on 127.0.0.1 with mutual TLS.

It gives the gateway an endpoint that it reaches exactly as it would reach IoT Core (the
awsiotsdk client, MQTT 5, client certificate, server certificate checked against a CA), for
tests, benchmarks and demos. `python -m gateway.cloud.standin --dir DIR` makes a CA, a
server certificate, a certificate for the gateway and one for an observer, prints the
cloud settings to put in the gateway's [cloud] table (and writes a complete config with them,
DIR/gateway.toml), and runs mosquitto until SIGTERM/SIGINT, which it passes on to mosquitto
(deploy/cloud-standin.sh).
"""

from __future__ import annotations

import argparse
import getpass
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from ..auth.pki import build_certificate, cert_pem, key_pem, new_key, write_private, write_public
from ..config import DEFAULT_CONFIG_TOML
from .standin_config import key_lines, set_table_keys

CA_DAYS = 3650
CERT_DAYS = 825


@dataclass(frozen=True)
class StandinFiles:
    dir: Path

    def path(self, name: str) -> Path:
        return self.dir / name

    @property
    def ca(self) -> Path:
        return self.dir / "ca.pem"

    def cert(self, who: str) -> Path:
        return self.dir / f"{who}.crt"

    def key(self, who: str) -> Path:
        return self.dir / f"{who}.key"


def make_pki(directory: Path, clients: tuple[str, ...] = ("gateway", "observer"),
             thing_name: str = "lichen-gateway") -> StandinFiles:
    """CA, server certificate for 127.0.0.1/localhost, and client certificates; existing
    files are kept, so a restarted stand-in keeps its identity."""
    files = StandinFiles(Path(directory))
    files.dir.mkdir(parents=True, exist_ok=True)
    if files.ca.exists():
        return files
    ca_key = new_key()
    ca = build_certificate("lichen cloud stand-in CA", ca_key.public_key(), None, ca_key,
                           CA_DAYS, ca=True)
    write_public(files.ca, cert_pem(ca))
    server_key = new_key()
    server = build_certificate("localhost", server_key.public_key(), ca, ca_key, CERT_DAYS,
                               server_names=["localhost", "127.0.0.1"])
    write_public(files.cert("server"), cert_pem(server))
    write_private(files.key("server"), key_pem(server_key))
    for who in clients:
        key = new_key()
        cn = thing_name if who == "gateway" else who
        cert = build_certificate(cn, key.public_key(), ca, ca_key, CERT_DAYS, client=True)
        write_public(files.cert(who), cert_pem(cert))
        write_private(files.key(who), key_pem(key))
    return files


def mosquitto_config(files: StandinFiles, port: int, persistence: bool = False) -> str:
    lines = [
        f"listener {port} 127.0.0.1",
        f"cafile {files.ca}",
        f"certfile {files.cert('server')}",
        f"keyfile {files.key('server')}",
        "require_certificate true",
        "use_identity_as_username true",
        "tls_version tlsv1.2",
        "max_queued_messages 1000000",
        "max_inflight_messages 100",
        "log_dest stderr",
        "log_type error",
        "log_type warning",
        # run as whoever started it (as root, mosquitto would switch to a user that cannot
        # read the keys, which are private to their owner)
        f"user {getpass.getuser()}",
    ]
    if persistence:
        lines += ["persistence true", f"persistence_location {files.dir}/"]
    return "\n".join(lines) + "\n"


def mosquitto_binary() -> str:
    """mosquitto from PATH, or where Debian puts it (/usr/sbin, not on every user's PATH)."""
    found = shutil.which("mosquitto")
    if found:
        return found
    if Path("/usr/sbin/mosquitto").exists():
        return "/usr/sbin/mosquitto"
    raise RuntimeError("the cloud stand-in needs mosquitto: apt-get install -y mosquitto")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port} after {timeout:g} s")


class Standin:
    """mosquitto with mutual TLS on 127.0.0.1:port, started and stopped as a subprocess."""

    def __init__(self, directory: Path, port: int | None = None,
                 thing_name: str = "lichen-gateway") -> None:
        self.binary = mosquitto_binary()
        self.files = make_pki(directory, thing_name=thing_name)
        self.port = port or free_port()
        self.thing_name = thing_name
        self.conf = self.files.path("mosquitto.conf")
        self.conf.write_text(mosquitto_config(self.files, self.port))
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        log = open(self.files.path("mosquitto.log"), "ab")  # noqa: SIM115 - for the child
        self.proc = subprocess.Popen([self.binary, "-c", str(self.conf)], stdout=log,
                                     stderr=subprocess.STDOUT)
        log.close()
        wait_port(self.port)

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
            self.proc = None

    def cloud_config(self, port: int | None = None) -> dict:
        """The gateway's [cloud] table for this stand-in (port: e.g. a proxy's)."""
        return {"endpoint": "127.0.0.1", "port": port or self.port,
                "thing_name": self.thing_name, "cert_file": str(self.files.cert("gateway")),
                "key_file": str(self.files.key("gateway")), "ca_file": str(self.files.ca),
                "aws_iot_limits": False, "min_reconnect_s": 0.2, "max_reconnect_s": 1.0}


def print_settings(standin: Standin, config_file: Path) -> None:
    """What the gateway needs to reach the stand-in, as lines that merge into the [cloud]
    table `lichen init` wrote (a second [cloud] header would be invalid TOML)."""
    print("# The gateway's settings for this stand-in. Set these keys in the [cloud] table "
          "of its\n# config.toml: replace the line with the same key (or uncomment it), else "
          "add the\n# line under [cloud]. Do not add a second [cloud] header.")
    for line in key_lines(standin.cloud_config()):
        print(line)
    print(f"# Or run the gateway with a complete config that has them:\n"
          f"#   lichen run --config {config_file} --state-dir DIR")
    print(f"# observer: mosquitto_sub -p {standin.port} --cafile {standin.files.ca} "
          f"--cert {standin.files.cert('observer')} --key {standin.files.key('observer')} "
          "-t '#' -v", flush=True)


def run_mosquitto(standin: Standin) -> int:
    """mosquitto in the foreground until it exits, or until SIGTERM/SIGINT/SIGHUP here,
    which stop it too (a stand-in killed on its own would leave mosquitto on the port)."""
    proc: subprocess.Popen | None = None
    stopping = False

    def on_signal(_signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True
        if proc is not None:
            proc.terminate()

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, on_signal)
    try:
        proc = subprocess.Popen([standin.binary, "-c", str(standin.conf)])
        if stopping:  # a signal came before there was a child to pass it to
            proc.terminate()
        rc = proc.wait()
        return 0 if stopping else rc
    finally:
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m gateway.cloud.standin",
                                     description="a local AWS IoT Core stand-in (mosquitto, "
                                     "mutual TLS) for the gateway's cloud connection")
    parser.add_argument("--dir", required=True, help="where certificates and config go")
    parser.add_argument("--port", type=int, default=8884)
    parser.add_argument("--thing", default="lichen-gateway", help="the gateway's thing name")
    args = parser.parse_args(argv)
    standin = Standin(Path(args.dir).resolve(), args.port, args.thing)
    config_file = standin.files.path("gateway.toml")
    config_file.write_text(set_table_keys(DEFAULT_CONFIG_TOML, "cloud",
                                          standin.cloud_config()))
    print_settings(standin, config_file)
    return run_mosquitto(standin)


if __name__ == "__main__":
    sys.exit(main())
