"""A small fleet for the IoT Jobs tests: the mosquitto cloud stand-in, the Jobs stand-in
beside it (in this process, so tests can create jobs and read executions), gateways that
are real `lichen run` processes each with its own thing name and certificate, a paho device
connected to each, and an HTTP server on 127.0.0.1 for artifacts."""

from __future__ import annotations

import functools
import http.server
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from deploy.jobs_standin import JobsStandin
from gateway.cloud.standin import Standin, make_pki
from tests.cloud.conftest import toml_value
from tests.conftest import BrokerProcess
from tests.deployment.test_live import Device

THINGS = ("gw-1", "gw-2", "gw-3")


class ArtifactServer:
    """Serves a directory over HTTP on 127.0.0.1 (what a presigned S3 URL is to a device)."""

    def __init__(self, root: Path) -> None:
        handler = functools.partial(_QuietHandler, directory=str(root))
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass


class Fleet:
    def __init__(self, root: Path, cloud: Standin, jobs: JobsStandin) -> None:
        self.root = root
        self.cloud = cloud
        self.jobs = jobs
        self.changes: list[tuple[str, str, str]] = []
        self.gateways: dict[str, BrokerProcess] = {}
        self.devices: dict[str, Device] = {}

    def config(self, thing: str) -> str:
        f = self.cloud.files
        cloud = {"endpoint": "127.0.0.1", "port": self.cloud.port, "thing_name": thing,
                 "cert_file": str(f.cert(thing)), "key_file": str(f.key(thing)),
                 "ca_file": str(f.ca), "aws_iot_limits": False, "min_reconnect_s": 0.2,
                 "max_reconnect_s": 1.0}
        return "[cloud]\n" + "".join(f"{k} = {toml_value(v)}\n" for k, v in cloud.items())

    def state(self, thing: str) -> Path:
        return self.root / thing

    def start(self, thing: str) -> BrokerProcess:
        """The gateway of `thing` on its own config.toml (no --config: it takes deployments),
        with a device connected once it is up."""
        state = self.state(thing)
        if thing not in self.gateways:
            state.mkdir(mode=0o700, parents=True)
            (state / "config.toml").write_text(self.config(thing))
            self.gateways[thing] = BrokerProcess(state, tls=False)
        gw = self.gateways[thing].start()
        self.devices[thing] = Device(gw.port)
        return gw

    def executions(self, job_id: str) -> dict[str, str]:
        return self.jobs.job(job_id)["executions"]

    def wait_executions(self, job_id: str, want: dict[str, str], timeout: float = 120.0
                        ) -> dict:
        deadline = time.monotonic() + timeout
        job = self.jobs.job(job_id)
        while time.monotonic() < deadline:
            job = self.jobs.job(job_id)
            if all(job["executions"].get(t) == s for t, s in want.items()):
                return job
            time.sleep(0.1)
        logs = "\n".join(f"--- {t}\n{gw.log()[-2500:]}" for t, gw in self.gateways.items())
        raise AssertionError(f"job {job_id}: executions {job['executions']}, wanted {want}"
                             f"\n{logs}")

    def reports(self, job_id: str, thing: str) -> list[tuple[str, bool]]:
        """Every update the thing sent for the job: (status, accepted?)."""
        return [(s, ok) for j, t, s, ok in self.jobs.updates if j == job_id and t == thing]

    def close(self) -> None:
        for device in self.devices.values():
            device.close()
        for gw in self.gateways.values():
            gw.stop()


@pytest.fixture
def fleet_clock() -> list[float]:
    """The Jobs stand-in's clock, held still unless a test moves it (rollout minutes)."""
    return [1_700_000_000.0]


@pytest.fixture
def fleet(tmp_path: Path, fleet_clock: list[float]) -> Iterator[Fleet]:
    directory = tmp_path / "standin"
    make_pki(directory, clients=("gateway", "observer") + THINGS)  # one certificate a thing
    try:
        cloud = Standin(directory)
    except RuntimeError as exc:  # no mosquitto here
        pytest.skip(str(exc))
    cloud.start()
    fleet: Fleet | None = None
    jobs = JobsStandin(cloud.port, cloud.files.ca, cloud.files.cert("observer"),
                       cloud.files.key("observer"), clock=lambda: fleet_clock[0])
    try:
        jobs.start()
        fleet = Fleet(tmp_path, cloud, jobs)
        jobs.on_change = lambda *c: fleet.changes.append(c)
        yield fleet
    finally:
        if fleet is not None:
            fleet.close()
        jobs.stop()
        cloud.stop()


@pytest.fixture
def artifact_server(tmp_path: Path) -> Iterator[ArtifactServer]:
    root = tmp_path / "www"
    root.mkdir()
    server = ArtifactServer(root)
    yield server
    server.close()
