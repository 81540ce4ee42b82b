"""The SDK installs and runs alone, with paho-mqtt as its only dependency: device_sdk/ is
pip-installed into a fresh virtual environment (no system site-packages, no gateway), and
its command and an example talk to a real gateway from there.

pip may need the package index (paho-mqtt, and setuptools for the build); the test is
skipped, saying so, only when pip cannot reach one."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import venv
from pathlib import Path

import pytest

from tests.conftest import ROOT
from tests.device_sdk.conftest import WAIT

PIP_TIMEOUT = 300
# Creating the venv and installing into it runs in the first test's setup: allow for it.
pytestmark = pytest.mark.timeout(PIP_TIMEOUT + 120)
# What pip says when it cannot get packages at all, as opposed to a build that fails.
OFFLINE = ("No matching distribution found", "Could not find a version that satisfies",
           "Failed to establish a new connection", "Temporary failure in name resolution",
           "Network is unreachable", "ConnectTimeoutError", "ProxyError")
# The fresh environment must not see this checkout, whatever the caller's environment says.
CLEAN_ENV = {k: v for k, v in os.environ.items()
             if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "PYTHONSTARTUP")}


def run(*cmd: str | Path, cwd: Path, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([str(c) for c in cmd], cwd=cwd, env=CLEAN_ENV, capture_output=True,
                          text=True, timeout=timeout)


@pytest.fixture(scope="module")
def sdk_venv(tmp_path_factory) -> Path:
    """A fresh venv with `pip install ./device_sdk` done; its bin directory."""
    base = tmp_path_factory.mktemp("standalone")
    # Built from a copy, so the build's own files (build/, *.egg-info) stay out of the
    # checkout, which other work shares.
    source = base / "device_sdk"
    shutil.copytree(ROOT / "device_sdk", source,
                    ignore=shutil.ignore_patterns("__pycache__", "build", "*.egg-info"))
    env_dir = base / "venv"
    venv.EnvBuilder(with_pip=True, system_site_packages=False, clear=True).create(env_dir)
    bin_dir = env_dir / "bin"
    result = run(bin_dir / "python", "-m", "pip", "install", "--disable-pip-version-check",
                 "-q", str(source), cwd=base, timeout=PIP_TIMEOUT)
    if result.returncode != 0:
        output = result.stdout + result.stderr
        offline = [line.strip() for line in output.splitlines()
                   if any(sign in line for sign in OFFLINE)]
        if offline:
            pytest.skip(f"pip cannot reach a package index: {offline[0]}")
        raise AssertionError(f"pip install ./device_sdk failed:\n{output}")
    return bin_dir


def test_only_paho_comes_with_it(sdk_venv):
    probe = ("import importlib.metadata as m, json; print(json.dumps({"
             "'installed': sorted(d.metadata['Name'].lower() for d in m.distributions()),"
             "'requires': m.requires('lichen-device')}))")
    result = run(sdk_venv / "python", "-c", probe, cwd=sdk_venv)
    assert result.returncode == 0, result.stderr
    found = json.loads(result.stdout)
    assert set(found["installed"]) - {"pip", "setuptools", "wheel"} == \
        {"lichen-device", "paho-mqtt"}
    assert found["requires"] == ["paho-mqtt>=2.0"]


def test_the_gateway_is_not_there(sdk_venv):
    probe = ("import importlib.util, device_sdk, device_sdk.client, device_sdk.examples.relay;"
             "print(device_sdk.__file__, importlib.util.find_spec('gateway'))")
    result = run(sdk_venv / "python", "-c", probe, cwd=sdk_venv)
    assert result.returncode == 0, result.stderr
    where, gateway = result.stdout.split()
    assert Path(where).is_relative_to(sdk_venv.parent) and gateway == "None"


def test_console_script_help(sdk_venv):
    result = run(sdk_venv / "lichen-device", "--help", cwd=sdk_venv)
    assert result.returncode == 0, result.stderr
    assert "publish" in result.stdout and "subscribe" in result.stdout


def test_publish_and_an_example_against_a_real_gateway(sdk_venv, gateway, tmp_path):
    creds = gateway.enrol("standalone-1")
    device = ["--thing", creds.thing, "--cert", creds.cert, "--key", creds.key,
              "--ca", creds.ca]
    app = gateway.peer("standalone-app")
    try:
        app.subscribe("things/standalone-1/#")
        result = run(sdk_venv / "lichen-device", "publish", "things/standalone-1/hello",
                     '{"from": "venv"}', *device, "--host", "127.0.0.1",
                     "--port", str(gateway.tls_port), "--timeout", str(WAIT), cwd=tmp_path)
        assert result.returncode == 0, result.stderr
        assert app.next() == ("things/standalone-1/hello", {"from": "venv"})

        result = run(sdk_venv / "python", "-m", "device_sdk.examples.temperature_sensor",
                     *device, "--discover", gateway.discovery, "--count", "2",
                     "--interval", "0.05", "--queue", tmp_path / "q.sqlite3", cwd=tmp_path)
        assert result.returncode == 0, result.stderr
        readings = [app.next(), app.next()]
        assert [topic for topic, _ in readings] == ["things/standalone-1/temperature"] * 2
        assert all(isinstance(doc["celsius"], float) for _, doc in readings)
    finally:
        app.close()
