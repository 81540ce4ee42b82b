"""A real Lichen gateway (mutual TLS, discovery, shadows) for the device SDK to talk to,
things enrolled on it with `lichen device add`, and a loopback peer to watch and drive it.

The gateway binds and advertises 127.0.0.1 only, so nothing leaves the host."""

from __future__ import annotations

import contextlib
import io
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from device_sdk import Backoff, DeviceClient
from gateway.cli import main as lichen_main
from tests.conftest import BrokerProcess
from tests.shadow.helpers import Peer

GATEWAY_CONFIG = """\
[listeners]
tls_host = "127.0.0.1"
[discovery]
host = "127.0.0.1"
host_addresses = ["127.0.0.1"]
"""
FAST = Backoff(initial=0.05, maximum=0.3, stable_after=0.5)   # reconnect quickly in tests
WAIT = 10.0


def lichen(*args: str) -> str:
    """A `lichen` command, in this process (a subprocess per enrolment would cost more than
    the test); its stdout."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = lichen_main(list(args))
    assert rc == 0, err.getvalue()
    return out.getvalue()


@dataclass(frozen=True)
class Creds:
    thing: str
    cert: Path
    key: Path
    ca: Path


class Gateway:
    def __init__(self, base: Path) -> None:
        self.dir = base
        self.proc = BrokerProcess(base / "state", config=GATEWAY_CONFIG)

    def start(self) -> Gateway:
        self.proc.start()
        self.ca = self.dir / "ca.pem"
        self.ca.write_text(lichen("ca", "show", "--state-dir", str(self.proc.state_dir)))
        return self

    @property
    def tls_port(self) -> int:
        return self.proc.tls_port

    @property
    def port(self) -> int:
        return self.proc.port

    @property
    def discovery(self) -> str:
        return f"127.0.0.1:{self.proc.discovery_port}"

    def enrol(self, thing: str, *extra: str) -> Creds:
        cert, key = self.dir / f"{thing}.crt", self.dir / f"{thing}.key"
        lichen("device", "add", thing, "--state-dir", str(self.proc.state_dir),
               "--cert-out", str(cert), "--key-out", str(key), *extra)
        return Creds(thing, cert, key, self.ca)

    def client(self, creds: Creds, discover: bool = False, **options) -> DeviceClient:
        where = {"discover": self.discovery} if discover else \
            {"host": "127.0.0.1", "port": self.tls_port}
        options.setdefault("backoff", FAST)
        options.setdefault("connect_timeout", 3.0)
        return DeviceClient(creds.thing, creds.cert, creds.key, ca=creds.ca,
                            **where, **options)

    def peer(self, name: str, **options) -> Peer:
        """A loopback MQTT client (allow-all policy), connected."""
        return Peer(self.port, name, **options).connect()

    def stop(self) -> None:
        self.proc.stop()

    def log(self) -> str:
        return self.proc.log()


@pytest.fixture(scope="module")
def gateway(tmp_path_factory) -> Iterator[Gateway]:
    gw = Gateway(tmp_path_factory.mktemp("sdkgw")).start()
    yield gw
    gw.stop()


@pytest.fixture
def own_gateway(tmp_path) -> Iterator[Gateway]:
    """A gateway of the test's own, for tests that stop and restart it."""
    gw = Gateway(tmp_path).start()
    yield gw
    gw.stop()


@pytest.fixture
def clients() -> Iterator[list[DeviceClient]]:
    """Clients a test makes; closed at its end whatever happens."""
    made: list[DeviceClient] = []
    yield made
    for client in made:
        client.close()
