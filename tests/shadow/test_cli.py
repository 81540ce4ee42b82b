"""`lichen shadow get|update|delete|list`: against the store when no gateway runs, through
the running gateway's MQTT listener when one does."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.conftest import ROOT, BrokerProcess
from tests.shadow.helpers import Peer


def lichen(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "gateway.cli", *args], cwd=ROOT, input=stdin,
                          capture_output=True, text=True, timeout=60)


def shadow(state, *args: str, stdin: str | None = None) -> tuple[int, dict | None, str]:
    r = lichen("shadow", *args, "--state-dir", str(state), stdin=stdin)
    return r.returncode, json.loads(r.stdout) if r.stdout.strip() else None, r.stderr


@pytest.fixture
def state(tmp_path_factory):
    s = tmp_path_factory.mktemp("c") / "s"  # short: the Unix socket path has a length limit
    s.mkdir()
    return s


def test_without_a_gateway_the_store_is_used(state):
    code, doc, err = shadow(state, "get", "lamp")
    assert code == 1 and doc["code"] == 404
    assert err.strip() == "lichen: shadow get rejected: 404 No shadow exists with name: lamp"

    code, doc, err = shadow(state, "update", "lamp", '{"state": {"desired": {"on": true}}}')
    assert (code, err) == (0, "")
    assert doc["version"] == 1 and doc["state"] == {"desired": {"on": True}}
    assert "clientToken" not in doc

    code, doc, _ = shadow(state, "update", "lamp", "-", "--name", "cfg",
                          stdin='{"state": {"reported": {"level": 2}}, "clientToken": "cli"}')
    assert code == 0 and doc["clientToken"] == "cli"
    code, doc, _ = shadow(state, "get", "lamp")
    assert code == 0 and doc["state"]["delta"] == {"on": True}
    code, doc, _ = shadow(state, "list", "lamp")
    assert code == 0 and doc["results"] == ["cfg"]

    code, doc, err = shadow(state, "update", "lamp", '{"state": {}, "version": 9}')
    assert code == 1 and doc["code"] == 409
    assert len(err.strip().splitlines()) == 1 and "409 Version conflict" in err
    code, doc, _ = shadow(state, "delete", "lamp", "--name", "cfg")
    assert code == 0 and doc["version"] == 1
    assert shadow(state, "list", "lamp")[1]["results"] == []


@pytest.mark.parametrize("document,message", [
    ("{oops", "not valid JSON"),
    ("[1, 2]", "must be a JSON object"),
    ('{"state": {}, "clientToken": 5}', "clientToken"),
])
def test_a_bad_document_is_one_line_on_stderr(state, document, message):
    r = lichen("shadow", "update", "t", document, "--state-dir", str(state))
    assert r.returncode == 1 and r.stdout == ""
    assert len(r.stderr.strip().splitlines()) == 1 and message in r.stderr


def test_aws_errors_come_back_as_documents(state):
    code, doc, err = shadow(state, "update", "t", '{"nostate": 1}')
    assert code == 1 and doc["message"] == "Missing required node: state"
    code, doc, err = shadow(state, "get", "bad.thing")
    assert code == 1 and doc["code"] == 400


def test_no_state_directory(tmp_path):
    r = lichen("shadow", "get", "t", "--state-dir", str(tmp_path / "nowhere"))
    assert r.returncode == 1 and "no state directory" in r.stderr


def test_with_a_gateway_requests_go_through_it(state):
    assert shadow(state, "update", "lamp", '{"state": {"reported": {"on": false}}}')[0] == 0
    gw = BrokerProcess(state, tls=False).start()
    watcher = Peer(gw.port, "watcher").connect()
    try:
        watcher.subscribe("$aws/things/lamp/shadow/update/delta")
        # written before the gateway started, read through it
        code, doc, _ = shadow(state, "get", "lamp")
        assert code == 0 and doc["state"] == {"reported": {"on": False}}
        assert "clientToken" not in doc
        code, doc, _ = shadow(state, "update", "lamp", '{"state": {"desired": {"on": true}}}')
        assert code == 0 and doc["version"] == 2
        # the service announced it to devices, as for any MQTT client
        assert watcher.until("$aws/things/lamp/shadow/update/delta")[0]["state"] == {"on": True}
        code, doc, _ = shadow(state, "update", "lamp", '{"state": {}, "version": 1}')
        assert code == 1 and doc["code"] == 409
        assert shadow(state, "update", "lamp", '{"state": {"desired": {"x": 1}}}',
                      "--name", "n")[0] == 0
        assert shadow(state, "list", "lamp")[1]["results"] == ["n"]
        assert shadow(state, "delete", "lamp")[1]["version"] == 2
    finally:
        watcher.close()
        gw.stop()


def test_over_the_plaintext_listener_without_a_unix_socket(state):
    gw = BrokerProcess(state, tls=False, config='[listeners]\nunix_socket = ""\n').start()
    try:
        code, doc, _ = shadow(state, "update", "t", '{"state": {"reported": {"a": 1}}}')
        assert code == 0 and doc["version"] == 1
    finally:
        gw.stop()
