"""The examples run: the README's snippets compile, and the two example scripts do what
the README says against a real gateway."""

from __future__ import annotations

import importlib
import os
import re
import signal
import subprocess
import sys

from tests.conftest import ROOT
from tests.device_sdk.conftest import WAIT


def readme_section() -> str:
    text = (ROOT / "README.md").read_text()
    start = text.index("## Device SDK\n")
    end = text.index("\n## ", start + 1)
    return text[start:end]


def test_readme_python_snippets_compile():
    blocks = re.findall(r"```python\n(.*?)```", readme_section(), re.S)
    assert len(blocks) >= 3
    for block in blocks:
        lines = block.splitlines()
        indent = min(len(line) - len(line.lstrip()) for line in lines if line.strip())
        compile("\n".join(line[indent:] for line in lines), "README.md", "exec")


def test_examples_import_and_are_named_in_the_readme():
    section = readme_section()
    for name in ("temperature_sensor", "relay"):
        module = importlib.import_module(f"device_sdk.examples.{name}")
        assert callable(module.main)
        assert f"device_sdk/examples/{name}.py" in section


def run_example(name: str, *args: str) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.Popen([sys.executable, "-m", f"device_sdk.examples.{name}", *args],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def creds_args(gateway, creds) -> list[str]:
    return ["--thing", creds.thing, "--cert", str(creds.cert), "--key", str(creds.key),
            "--ca", str(creds.ca)]


def test_temperature_sensor(gateway, tmp_path):
    creds = gateway.enrol("sensor-ex")
    app = gateway.peer("sensor-ex-app")
    try:
        app.subscribe("things/sensor-ex/temperature")
        proc = run_example("temperature_sensor", *creds_args(gateway, creds),
                           "--discover", gateway.discovery, "--count", "3",
                           "--interval", "0.05", "--queue", str(tmp_path / "q.sqlite3"))
        out, _ = proc.communicate(timeout=30)
        assert proc.returncode == 0, out
        readings = [app.next() for _ in range(3)]
        assert {topic for topic, _ in readings} == {"things/sensor-ex/temperature"}
        assert all(isinstance(doc["celsius"], float) for _, doc in readings)
        times = [doc["time"] for _, doc in readings]
        assert times == sorted(times)
    finally:
        app.close()


def test_relay_follows_its_shadow(gateway):
    creds = gateway.enrol("relay-ex")
    app = gateway.peer("relay-ex-app")
    accepted = "$aws/things/relay-ex/shadow/update/accepted"
    proc = run_example("relay", *creds_args(gateway, creds), "--host", "127.0.0.1",
                       "--port", str(gateway.tls_port))
    try:
        app.subscribe(accepted)
        doc, _ = app.until(accepted)                 # the relay says where it starts
        assert doc["state"] == {"reported": {"on": False}}
        app.publish("$aws/things/relay-ex/shadow/update",
                    {"state": {"desired": {"on": True}}})
        for _ in range(5):                           # the app's own update, then the relay's
            doc, _ = app.until(accepted)
            if doc["state"].get("reported") == {"on": True}:
                break
        else:
            raise AssertionError("the relay never reported on")
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=WAIT + 10)
        assert proc.returncode == 0, out
        assert "relay ON" in out
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
        app.close()
