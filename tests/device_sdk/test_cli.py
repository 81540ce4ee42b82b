"""`lichen-device` as a real command (a subprocess each), against a real gateway."""

from __future__ import annotations

import json
import select
import subprocess
import sys
import tomllib

import pytest

from device_sdk import cli
from tests.conftest import ROOT, free_port
from tests.device_sdk.conftest import WAIT


def lichen_device(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "device_sdk.cli", *args], cwd=ROOT,
                          input=stdin, capture_output=True, text=True, timeout=60)


@pytest.fixture(scope="module")
def creds(gateway):
    return gateway.enrol("cli-1")


def common(gateway, creds, *, discover: bool = False, port: int | None = None) -> list[str]:
    where = ["--discover", gateway.discovery] if discover else \
        ["--host", "127.0.0.1", "--port", str(port or gateway.tls_port)]
    return ["--thing", creds.thing, "--cert", str(creds.cert), "--key", str(creds.key),
            "--ca", str(creds.ca), "--timeout", "5", *where]


def test_the_console_script_is_declared():
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["lichen-device"] == "device_sdk.cli:main"


def test_publish_and_subscribe(gateway, creds):
    app = gateway.peer("cli-app")
    try:
        app.subscribe("things/cli-1/#")
        result = lichen_device("publish", "things/cli-1/temp", "21.5", "--repeat", "2",
                               *common(gateway, creds, discover=True))
        assert result.returncode == 0, result.stderr
        assert [app.next(), app.next()] == [("things/cli-1/temp", 21.5)] * 2
        result = lichen_device("publish", "things/cli-1/stdin", "-", "--qos", "0",
                               *common(gateway, creds), stdin='{"from": "stdin"}')
        assert result.returncode == 0, result.stderr
        assert app.next() == ("things/cli-1/stdin", {"from": "stdin"})

        # a retained message is there when the subscriber subscribes: once it has printed
        # that, it is subscribed and gets the live one too
        app.client.publish("things/cli-1/cmd/mode", "auto", 1, True).wait_for_publish(WAIT)
        sub = subprocess.Popen([sys.executable, "-m", "device_sdk.cli", "subscribe",
                                "things/cli-1/cmd/#", "--count", "2", "--seconds", "20",
                                "--json", *common(gateway, creds)],
                               cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True)
        try:
            ready, _, _ = select.select([sub.stdout], [], [], 20)
            first = json.loads(sub.stdout.readline()) if ready else None
            assert first == {"topic": "things/cli-1/cmd/mode", "payload": "auto", "qos": 1,
                             "retain": True}, sub.stderr.read() if not ready else first
            app.publish("things/cli-1/cmd/led", "on")
            out, err = sub.communicate(timeout=30)
        finally:
            if sub.poll() is None:
                sub.kill()
                sub.communicate()
            app.client.publish("things/cli-1/cmd/mode", b"", 1, True).wait_for_publish(WAIT)
        assert sub.returncode == 0, err
        assert json.loads(out) == {"topic": "things/cli-1/cmd/led", "payload": "on", "qos": 1,
                                   "retain": False}
    finally:
        app.close()


def test_shadow_update_get_delete(gateway, creds):
    named = ["--name", "cfg"]
    result = lichen_device("shadow", "update", '{"state": {"reported": {"interval": 5}}}',
                           *named, *common(gateway, creds))
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["version"] == 1
    result = lichen_device("shadow", "update", "-", *named, *common(gateway, creds),
                           stdin='{"state": {"desired": {"interval": 10}}, "version": 1}')
    assert result.returncode == 0, result.stderr
    result = lichen_device("shadow", "get", *named, *common(gateway, creds, discover=True))
    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout)
    assert doc["state"] == {"desired": {"interval": 10}, "reported": {"interval": 5},
                            "delta": {"interval": 10}}
    assert doc["version"] == 2
    result = lichen_device("shadow", "delete", *named, *common(gateway, creds))
    assert result.returncode == 0 and json.loads(result.stdout) == {"version": 2}


def test_shadow_rejections_exit_1_with_one_line(gateway, creds):
    result = lichen_device("shadow", "get", "--name", "never", *common(gateway, creds))
    assert result.returncode == 1
    assert result.stderr.startswith("lichen-device: shadow get of thing 'cli-1'")
    assert "404" in result.stderr and len(result.stderr.splitlines()) == 1
    result = lichen_device("shadow", "update", '{"state": {"reported": {"x": 1}}, "version": 9}',
                           "--name", "v", *common(gateway, creds))
    assert result.returncode == 1 and "409 Version conflict" in result.stderr


def test_discover_prints_the_document(gateway, creds):
    result = lichen_device("discover", *common(gateway, creds, discover=True))
    assert result.returncode == 0, result.stderr
    group = json.loads(result.stdout)["GGGroups"][0]
    assert group["CAs"] == [creds.ca.read_text()]
    assert group["Cores"][0]["Connectivity"][0]["PortNumber"] == gateway.tls_port


def test_unreachable_gateway_keeps_queued_messages_for_flush(gateway, creds, tmp_path):
    queue_file = tmp_path / "cli.sqlite3"
    result = lichen_device("publish", "things/cli-1/late", "1", "--queue", str(queue_file),
                           *common(gateway, creds, port=free_port()), "--timeout", "1")
    assert result.returncode == 1
    assert "connection refused" in result.stderr and "stay in" in result.stderr
    assert len(result.stderr.splitlines()) == 1
    app = gateway.peer("cli-flush-app")
    try:
        app.subscribe("things/cli-1/late")
        result = lichen_device("flush", "--queue", str(queue_file), *common(gateway, creds))
        assert result.returncode == 0, result.stderr
        assert result.stdout.strip() == "sent 1 message(s)"
        assert app.next() == ("things/cli-1/late", 1)
    finally:
        app.close()


@pytest.mark.parametrize("args, message", [
    (["publish", "t", "m", "--host", "h"], "--thing"),
    (["publish", "t", "m", "--thing", "x", "--cert", "c", "--key", "k"], "--host HOST"),
    (["discover", "--thing", "x", "--cert", "c", "--key", "k"], "--discover is required"),
    (["shadow", "update", '{"reported": {}}', "--thing", "x"], '"state" object'),
    (["shadow", "update", "{nope", "--thing", "x"], "not JSON"),
])
def test_usage_errors_are_one_line(args, message, capsys):
    assert cli.main(args) == 1   # in this process: no gateway needed
    err = capsys.readouterr().err
    assert message in err and len(err.splitlines()) == 1 and err.startswith("lichen-device: ")
