"""Interoperability with the mosquitto command line clients (mosquitto_pub/mosquitto_sub).

Each subscriber runs with -d (and line-buffered output) so the test can see when its SUBACK
arrived before anything is published, and with -F so every message is one line with topic,
QoS, retain flag and the payload in hex.
"""

from __future__ import annotations

import queue
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from .helpers import TIMEOUT, V5, V311, unique_id

pytestmark = [
    pytest.mark.timeout(40),
    pytest.mark.skipif(not (shutil.which("mosquitto_pub") and shutil.which("mosquitto_sub")),
                       reason="mosquitto-clients not installed"),
]

CLI_VERSION = {V311: "mqttv311", V5: "mqttv5"}
FORMAT = "MSG|%t|%q|%r|%x"  # one line per message; payload as hex


@dataclass
class CliMsg:
    topic: str
    qos: int
    retain: bool
    payload: bytes


class CliSub:
    """A mosquitto_sub process whose output is read line by line on a thread."""

    def __init__(self, broker, version: int, topics: list[str], *, qos: int = 0,
                 count: int | None = None, wait: int = 8, extra: list[str] | None = None):
        # Line-buffer stdout so the SUBACK debug line is seen while the process still runs.
        cmd = (["stdbuf", "-oL"] if shutil.which("stdbuf") else []) + [
               "mosquitto_sub", "-h", broker.host, "-p", str(broker.port),
               "-V", CLI_VERSION[version], "-q", str(qos), "-d", "-F", FORMAT, "-W", str(wait)]
        for t in topics:
            cmd += ["-t", t]
        if count is not None:
            cmd += ["-C", str(count)]
        cmd += extra or []
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     text=True)
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.seen: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line.rstrip("\n"))
        self.lines.put(None)

    def _next_line(self, deadline: float) -> str | None:
        """The next output line, None at end of output."""
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"mosquitto_sub: timed out; output so far: {self.seen}")
            try:
                line = self.lines.get(timeout=remaining)
            except queue.Empty:
                continue
            if line is not None:
                self.seen.append(line)
            return line

    def wait_subscribed(self, timeout: float = TIMEOUT) -> None:
        deadline = time.monotonic() + timeout
        while True:
            line = self._next_line(deadline)
            if line is None:
                raise AssertionError(f"mosquitto_sub exited before SUBACK: {self.seen}")
            if "received SUBACK" in line:
                return

    def finish(self, timeout: float = 10) -> tuple[int, list[CliMsg]]:
        """Wait for the process to end; its exit code and every message it printed."""
        deadline = time.monotonic() + timeout
        while self._next_line(deadline) is not None:
            pass
        rc = self.proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        msgs = []
        for line in self.seen:
            if line.startswith("MSG|"):
                _, t, q, r, x = line.split("|", 4)
                msgs.append(CliMsg(t, int(q), r == "1", bytes.fromhex(x)))
        return rc, msgs

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=5)


@pytest.fixture
def cli_sub(any_broker) -> Iterator:
    made: list[CliSub] = []

    def make(*args, **kwargs) -> CliSub:
        s = CliSub(any_broker, *args, **kwargs)
        made.append(s)
        return s

    yield make
    for s in made:
        s.kill()
        if s.proc.stdout is not None:
            s.proc.stdout.close()


def cli_pub(broker, version: int, topic: str, message: bytes | None, *, qos: int = 0,
            retain: bool = False, extra: list[str] | None = None,
            stdin: bytes | None = None) -> None:
    """Run mosquitto_pub; message None means the payload comes from `extra` (-n, -f, -l)."""
    cmd = ["mosquitto_pub", "-h", broker.host, "-p", str(broker.port),
           "-V", CLI_VERSION[version], "-q", str(qos), "-t", topic]
    if retain:
        cmd.append("-r")
    if message is not None:
        cmd += ["-m", message.decode()]
    cmd += extra or []
    done = subprocess.run(cmd, input=stdin, capture_output=True, timeout=10)
    assert done.returncode == 0, (cmd, done.stdout, done.stderr)


@pytest.mark.parametrize("qos", [0, 1, 2])
def test_cli_publish_and_subscribe(any_broker, cli_sub, version, topic, qos):
    sub = cli_sub(version, [topic], qos=2, count=1)
    sub.wait_subscribed()
    cli_pub(any_broker, version, topic, b"from the command line", qos=qos)
    rc, msgs = sub.finish()
    assert rc == 0
    assert [(m.topic, m.payload, m.qos, m.retain) for m in msgs] == [
        (topic, b"from the command line", qos, False)]


def test_cli_qos_downgrade(any_broker, cli_sub, version, topic):
    sub = cli_sub(version, [topic], qos=1, count=1)
    sub.wait_subscribed()
    cli_pub(any_broker, version, topic, b"two", qos=2)
    rc, msgs = sub.finish()
    assert rc == 0 and [(m.payload, m.qos) for m in msgs] == [(b"two", 1)]


@pytest.mark.parametrize("qos", [1, 2])
def test_cli_retained_set_replace_clear(any_broker, cli_sub, version, topic, qos):
    cli_pub(any_broker, version, topic, b"first", qos=qos, retain=True)
    cli_pub(any_broker, version, topic, b"second", qos=qos, retain=True)
    rc, msgs = cli_sub(version, [topic], qos=2, count=1, wait=5).finish()
    assert rc == 0
    assert [(m.payload, m.qos, m.retain) for m in msgs] == [(b"second", qos, True)]

    # zero-length retained message (-n): clears
    cli_pub(any_broker, version, topic, None, qos=qos, retain=True, extra=["-n"])
    rc, msgs = cli_sub(version, [topic], qos=2, count=1, wait=1).finish()
    assert rc == 27, "mosquitto_sub should time out: nothing retained any more"
    assert msgs == []


def test_cli_retained_live_delivery_not_flagged(any_broker, cli_sub, version, topic):
    sub = cli_sub(version, [topic], qos=1, count=1)
    sub.wait_subscribed()
    cli_pub(any_broker, version, topic, b"live", qos=1, retain=True)
    rc, msgs = sub.finish()
    assert rc == 0 and [(m.payload, m.retain) for m in msgs] == [(b"live", False)]


def test_cli_many_lines_in_order(any_broker, cli_sub, version, topic):
    sub = cli_sub(version, [topic], qos=1, count=20)
    sub.wait_subscribed()
    lines = b"".join(f"line {i}\n".encode() for i in range(20))
    cli_pub(any_broker, version, topic, None, qos=1, extra=["-l"], stdin=lines)
    rc, msgs = sub.finish()
    assert rc == 0
    assert [m.payload for m in msgs] == [f"line {i}".encode() for i in range(20)]


def test_cli_binary_file_payload(any_broker, cli_sub, version, topic, tmp_path):
    data = bytes(range(256)) * 200
    path = tmp_path / "blob.bin"
    path.write_bytes(data)
    sub = cli_sub(version, [topic], qos=2, count=1)
    sub.wait_subscribed()
    cli_pub(any_broker, version, topic, None, qos=2, extra=["-f", str(path)])
    rc, msgs = sub.finish()
    assert rc == 0 and msgs[0].payload == data


def test_cli_wildcards(any_broker, cli_sub, version, topic):
    sub = cli_sub(version, [f"{topic}/+/temp", f"{topic}/alarms/#"], qos=1, count=3)
    sub.wait_subscribed()
    for t in ("kitchen/temp", "kitchen/humidity", "alarms/fire/zone1", "alarms", "x/y/temp"):
        cli_pub(any_broker, version, f"{topic}/{t}", t.encode(), qos=1)
    rc, msgs = sub.finish()
    assert rc == 0
    assert sorted(m.topic for m in msgs) == sorted(
        f"{topic}/{t}" for t in ("kitchen/temp", "alarms/fire/zone1", "alarms"))


def test_cli_persistent_session_queues_offline(any_broker, cli_sub, version, topic):
    cid = unique_id("cli")
    persistent = ["-c", "-i", cid] + (["-x", "300"] if version == V5 else [])
    rc, _ = cli_sub(version, [topic], qos=2, extra=persistent + ["-E"]).finish()
    assert rc == 0
    cli_pub(any_broker, version, topic, b"queued 1", qos=1)
    cli_pub(any_broker, version, topic, b"queued 2", qos=2)
    rc, msgs = cli_sub(version, [topic], qos=2, count=2, extra=persistent).finish()
    assert rc == 0
    assert [(m.payload, m.qos) for m in msgs] == [(b"queued 1", 1), (b"queued 2", 2)]


def test_cli_to_paho_and_back(any_broker, cli_sub, mqtt, version, topic):
    paho_sub = mqtt(version)
    paho_sub.subscribe(f"{topic}/to-paho", 2)
    cli_pub(any_broker, version, f"{topic}/to-paho", b"hi paho", qos=2)
    m = paho_sub.message()
    assert (m.payload, m.qos) == (b"hi paho", 2)

    sub = cli_sub(version, [f"{topic}/to-cli"], qos=2, count=1)
    sub.wait_subscribed()
    mqtt(version).publish(f"{topic}/to-cli", b"hi cli", 1)
    rc, msgs = sub.finish()
    assert rc == 0 and [(m.payload, m.qos) for m in msgs] == [(b"hi cli", 1)]


def test_cli_v5_properties_reach_paho(any_broker, mqtt, topic):
    sub = mqtt(V5)
    sub.subscribe(topic, 1)
    cli_pub(any_broker, V5, topic, b"{}", qos=1, extra=[
        "-D", "publish", "user-property", "site", "north",
        "-D", "publish", "content-type", "application/json",
        "-D", "publish", "response-topic", f"{topic}/reply",
        "-D", "publish", "correlation-data", "abc123",
        "-D", "publish", "message-expiry-interval", "300",
    ])
    m = sub.message()
    assert m.props.get("UserProperty") == [("site", "north")]
    assert m.props.get("ContentType") == "application/json"
    assert m.props.get("ResponseTopic") == f"{topic}/reply"
    assert m.props.get("CorrelationData") == b"abc123"
    assert 290 <= m.props.get("MessageExpiryInterval", 0) <= 300


def test_cli_will_on_killed_subscriber(any_broker, cli_sub, mqtt, version, topic):
    watcher = mqtt(version)
    watcher.subscribe(f"{topic}/will", 1)
    sub = cli_sub(version, [f"{topic}/ignored"], qos=0, wait=30, extra=[
        "--will-topic", f"{topic}/will", "--will-payload", "cli died", "--will-qos", "1"])
    sub.wait_subscribed()
    sub.proc.send_signal(signal.SIGKILL)  # no DISCONNECT
    sub.proc.wait(timeout=5)
    assert watcher.message().payload == b"cli died"


def test_cli_subscriber_exits_cleanly_without_will(any_broker, cli_sub, mqtt, version, topic):
    watcher = mqtt(version)
    watcher.subscribe(f"{topic}/will", 1)
    sub = cli_sub(version, [topic], qos=0, count=1, extra=[
        "--will-topic", f"{topic}/will", "--will-payload", "should not appear"])
    sub.wait_subscribed()
    cli_pub(any_broker, version, topic, b"bye", qos=0)
    rc, _ = sub.finish()
    assert rc == 0
    watcher.no_message(1.0)
