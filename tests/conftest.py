"""Shared fixtures: real brokers on 127.0.0.1, started as separate processes.

`broker` is a Lichen gateway (`lichen run --state-dir DIR --mqtt-port N`). Tests that check
behaviour a standards-conformant broker must have use `any_broker`: Lichen, and with
LICHEN_TEST_MOSQUITTO=1 (and the Debian package installed) mosquitto too, which checks the
tests themselves against the reference broker.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
MOSQUITTO = shutil.which("mosquitto") or (
    "/usr/sbin/mosquitto" if Path("/usr/sbin/mosquitto").exists() else None)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port: int, proc: subprocess.Popen | None = None, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"broker exited early with {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.02)
    raise TimeoutError(f"nothing listening on 127.0.0.1:{port} after {timeout}s")


class BrokerProcess:
    """A broker in its own process, restartable on the same port and state."""

    name = "lichen"

    def __init__(self, state_dir: Path, port: int | None = None, config: str | None = None,
                 extra_args: list[str] | None = None, tls: bool = True) -> None:
        self.host = "127.0.0.1"
        self.port = port or free_port()
        # tls=False: plaintext only, no device auth (a faster start for pure MQTT tests)
        self.tls_port = free_port() if tls else 0
        self.discovery_port = free_port() if tls else 0
        self.state_dir = state_dir
        self.config = config
        self.extra_args = extra_args or []
        self.proc: subprocess.Popen | None = None
        self.log_path = state_dir.parent / f"{state_dir.name}-broker.log"

    def command(self) -> list[str]:
        cmd = [sys.executable, "-m", "gateway.cli", "run", "--state-dir", str(self.state_dir),
               "--mqtt-port", str(self.port), "--tls-port", str(self.tls_port)]
        cmd += ["--discovery-port", str(self.discovery_port)]
        if self.config is not None:
            cfg = self.state_dir.parent / f"{self.state_dir.name}-config.toml"
            cfg.write_text(self.config)
            cmd += ["--config", str(cfg)]
        return cmd + self.extra_args

    def start(self) -> BrokerProcess:
        log = open(self.log_path, "ab")  # noqa: SIM115 - owned by the process
        env = dict(os.environ, PYTHONPATH=str(ROOT))
        self.proc = subprocess.Popen(self.command(), stdout=log, stderr=subprocess.STDOUT,
                                     cwd=ROOT, env=env)
        log.close()
        wait_for_port(self.port, self.proc)
        return self

    def stop(self) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)
        rc = self.proc.returncode
        self.proc = None
        return rc

    def kill(self) -> None:
        """kill -9: no chance to flush anything."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=5)
        self.proc = None

    def restart(self, hard: bool = False) -> BrokerProcess:
        if hard:
            self.kill()
        else:
            self.stop()
        return self.start()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


class MosquittoProcess(BrokerProcess):
    name = "mosquitto"

    def command(self) -> list[str]:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        conf = self.state_dir / "mosquitto.conf"
        conf.write_text(
            f"listener {self.port} 127.0.0.1\nallow_anonymous true\n"
            f"persistence true\npersistence_location {self.state_dir}/\n"
            "max_queued_messages 1000\n"
        )
        return [MOSQUITTO, "-c", str(conf)]


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[BrokerProcess]:
    b = BrokerProcess(tmp_path / "state", tls=False).start()
    yield b
    b.stop()


def _broker_params() -> list:
    params = ["lichen"]
    if MOSQUITTO and os.environ.get("LICHEN_TEST_MOSQUITTO") == "1":
        params.append("mosquitto")
    return params


@pytest.fixture(params=_broker_params())
def any_broker(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[BrokerProcess]:
    cls = MosquittoProcess if request.param == "mosquitto" else BrokerProcess
    b = cls(tmp_path / "state", tls=False).start()
    yield b
    b.stop()
