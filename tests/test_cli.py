"""The `lichen` command line as a script sees it: `python -m gateway.cli ...` in a
subprocess. The contract under test (README, "The two commands"): `run --state-dir DIR
--mqtt-port N` creates DIR, never prompts, listens in plaintext on 127.0.0.1:N only and stops
cleanly on SIGTERM; every command exits 0 on success and non-zero with one line on stderr
otherwise."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import stat
import subprocess
import sys
import time
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import ROOT, free_port, wait_for_port

WAIT = 10.0


def cli_env() -> dict[str, str]:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    env.pop("LICHEN_STATE_DIR", None)
    return env


def cli(*args: str, timeout: float = WAIT) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "gateway.cli", *args], cwd=ROOT,
                          env=cli_env(), stdin=subprocess.DEVNULL, capture_output=True,
                          text=True, timeout=timeout)


def stderr_lines(result: subprocess.CompletedProcess | str) -> list[str]:
    text = result if isinstance(result, str) else result.stderr
    return [line for line in text.splitlines() if line.strip()]


class Run:
    """`lichen run` in the background, its stdin an open pipe nobody writes to (so a
    prompt would hang it rather than read end-of-file)."""

    def __init__(self, state_dir: Path, port: int, log_dir: Path, *extra: str) -> None:
        self.state_dir = state_dir
        self.port = port
        self.err_path = log_dir / f"run-{port}.stderr"
        with open(self.err_path, "wb") as err:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "gateway.cli", "run", "--state-dir", str(state_dir),
                 "--mqtt-port", str(port), *extra],
                cwd=ROOT, env=cli_env(), stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                stderr=err)

    def wait_ready(self) -> Run:
        try:
            wait_for_port(self.port, self.proc, timeout=WAIT)
        except (RuntimeError, TimeoutError) as exc:
            raise AssertionError(f"{exc}\n{self.stderr()}") from None
        return self

    def stderr(self) -> str:
        return self.err_path.read_text(errors="replace")

    def terminate(self, timeout: float = 5.0) -> int:
        """SIGTERM; the exit status, which must come within `timeout` seconds."""
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"still running {timeout}s after SIGTERM") from None

    def cleanup(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=5)
        with contextlib.suppress(OSError):
            self.proc.stdin.close()


@pytest.fixture
def runs(tmp_path: Path) -> Iterator:
    made: list[Run] = []

    def start(state_dir: Path, port: int | None = None, *extra: str) -> Run:
        r = Run(state_dir, port or free_port(), tmp_path, *extra)
        made.append(r)
        return r

    yield start
    for r in made:
        r.cleanup()


def read_packet(sock: socket.socket) -> bytes:
    """One whole MQTT packet (fixed header included) from `sock`; b"" at end of stream."""
    data = b""

    def need(n: int) -> bool:
        nonlocal data
        while len(data) < n:
            chunk = sock.recv(n - len(data))
            if not chunk:
                return False
            data += chunk
        return True

    if not need(2):
        return data
    i, length, shift = 1, 0, 0
    while True:
        length |= (data[i] & 0x7F) << shift
        shift += 7
        if not data[i] & 0x80:
            break
        i += 1
        need(i + 1)
    need(i + 1 + length)
    return data


def mqtt_connack(port: int, version: int = 4) -> bytes:
    """Send a minimal CONNECT to 127.0.0.1:port; the CONNACK's bytes."""
    body = b"\x00\x04MQTT" + bytes([version, 0x02, 0, 30])
    if version == 5:
        body += b"\x00"
    body += b"\x00\x03cli"
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(bytes([0x10, len(body)]) + body)
        return read_packet(s)


def listening_addresses(port: int) -> set[str]:
    """Local addresses of the sockets in LISTEN state on TCP `port`, from /proc/net."""
    found = set()
    for name in ("tcp", "tcp6"):
        path = Path("/proc/net") / name
        if not path.exists():
            continue
        for line in path.read_text().splitlines()[1:]:
            fields = line.split()
            address, port_hex = fields[1].rsplit(":", 1)
            if fields[3] != "0A" or int(port_hex, 16) != port:
                continue
            if len(address) == 8:
                found.add(socket.inet_ntop(socket.AF_INET, bytes.fromhex(address)[::-1]))
            else:   # four little-endian 32-bit words
                raw = b"".join(bytes.fromhex(address[i:i + 8])[::-1] for i in range(0, 32, 8))
                found.add(socket.inet_ntop(socket.AF_INET6, raw))
    return found


# ====================================================================== init


def test_init_creates_state_dir_and_private_config(tmp_path: Path) -> None:
    state = tmp_path / "deep" / "er" / "state"
    result = cli("init", "--state-dir", str(state))
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    config = state / "config.toml"
    assert state.is_dir() and config.is_file()
    assert stat.S_IMODE(config.stat().st_mode) == 0o600
    data = tomllib.loads(config.read_text())
    assert "mqtt" in data and "listeners" in data


def test_init_keeps_an_existing_config_unless_forced(tmp_path: Path) -> None:
    state = tmp_path / "state"
    assert cli("init", "--state-dir", str(state)).returncode == 0
    config = state / "config.toml"
    config.write_text("# mine\n")
    result = cli("init", "--state-dir", str(state))
    assert result.returncode == 0, result.stderr
    assert config.read_text() == "# mine\n"
    result = cli("init", "--state-dir", str(state), "--force")
    assert result.returncode == 0, result.stderr
    assert "[mqtt]" in config.read_text()
    assert stat.S_IMODE(config.stat().st_mode) == 0o600


def test_config_written_by_init_is_accepted_by_run(tmp_path: Path, runs) -> None:
    state = tmp_path / "state"
    assert cli("init", "--state-dir", str(state)).returncode == 0
    r = runs(state).wait_ready()
    assert mqtt_connack(r.port) == b"\x20\x02\x00\x00"
    assert r.terminate() == 0


# ====================================================================== run


def test_run_creates_dir_listens_on_loopback_only_and_stops_on_sigterm(tmp_path: Path,
                                                                       runs) -> None:
    state = tmp_path / "not" / "yet" / "there"
    r = runs(state).wait_ready()   # no input was ever given: no prompt
    assert state.is_dir()
    assert mqtt_connack(r.port) == b"\x20\x02\x00\x00"
    assert listening_addresses(r.port) == {"127.0.0.1"}
    assert r.terminate() == 0
    assert listening_addresses(r.port) == set()


def test_run_uses_embedded_defaults_with_no_config(tmp_path: Path, runs) -> None:
    """No config.toml anywhere: the embedded defaults apply (e.g. the 1 MiB packet limit
    a v5 CONNACK advertises as Maximum Packet Size)."""
    state = tmp_path / "state"
    r = runs(state).wait_ready()
    connack = mqtt_connack(r.port, version=5)
    assert connack[0] == 0x20 and connack[3] == 0
    assert b"\x27" + (1_048_576).to_bytes(4, "big") in connack
    assert r.terminate() == 0


def test_sigterm_with_clients_connected_exits_0(tmp_path: Path, runs) -> None:
    r = runs(tmp_path / "state").wait_ready()
    socks = []
    try:
        for version in (4, 5):
            body = b"\x00\x04MQTT" + bytes([version, 0x02, 0, 30])
            body += (b"\x00" if version == 5 else b"") + b"\x00\x02c" + str(version).encode()
            s = socket.create_connection(("127.0.0.1", r.port), timeout=5)
            s.sendall(bytes([0x10, len(body)]) + body)
            socks.append(s)
            assert read_packet(s)[:1] == b"\x20"
        start = time.monotonic()
        assert r.terminate() == 0
        assert time.monotonic() - start < 5
        # The v5 client was told why: DISCONNECT, Server shutting down (0x8B).
        data = read_packet(socks[1])
        assert data[:1] == b"\xe0" and data[2] == 0x8B, data
    finally:
        for s in socks:
            s.close()


BAD_CONFIGS = {
    "out-of-range": ("[mqtt]\nmax_inflight = 0\n", "mqtt.max_inflight"),
    "unknown-key": ("[mqtt]\nmax_inflite = 10\n", "mqtt.max_inflite"),
    "unknown-table": ("[mqttt]\nmax_inflight = 10\n", "mqttt"),
    "wrong-type": ('[mqtt]\nmax_connections = "many"\n', "mqtt.max_connections"),
    "bad-choice": ('[persistence]\nsync = "sometimes"\n', "persistence.sync"),
    "invalid-toml": ("[mqtt\nmax_inflight = \n", None),   # names the file instead
}


@pytest.mark.parametrize("where", ["--config", "state-dir"])
@pytest.mark.parametrize("case", list(BAD_CONFIGS))
def test_bad_config_stops_start_up_with_one_line(tmp_path: Path, case: str,
                                                 where: str) -> None:
    text, field = BAD_CONFIGS[case]
    state = tmp_path / "state"
    port = free_port()
    args = ["run", "--state-dir", str(state), "--mqtt-port", str(port)]
    if where == "--config":
        config = tmp_path / "bad.toml"
        args += ["--config", str(config)]
    else:
        state.mkdir()
        config = state / "config.toml"
    config.write_text(text)
    result = cli(*args)
    assert result.returncode != 0
    lines = stderr_lines(result)
    assert len(lines) == 1, result.stderr
    assert (field or str(config)) in lines[0], lines[0]
    assert "Traceback" not in result.stderr
    assert listening_addresses(port) == set()


def test_unusable_state_dir_fails_with_one_line(tmp_path: Path) -> None:
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("x")
    result = cli("run", "--state-dir", str(not_a_dir), "--mqtt-port", str(free_port()))
    assert result.returncode != 0
    lines = stderr_lines(result)
    assert len(lines) == 1 and str(not_a_dir) in lines[0], result.stderr


def test_second_run_on_the_same_state_dir_fails_and_the_first_carries_on(tmp_path: Path,
                                                                         runs) -> None:
    state = tmp_path / "state"
    first = runs(state).wait_ready()
    second = cli("run", "--state-dir", str(state), "--mqtt-port", str(free_port()))
    assert second.returncode != 0
    lines = stderr_lines(second)
    assert lines and str(state) in lines[-1] and "running" in lines[-1], second.stderr
    assert "Traceback" not in second.stderr
    assert first.proc.poll() is None
    assert mqtt_connack(first.port) == b"\x20\x02\x00\x00"
    assert cli("status", "--state-dir", str(state)).returncode == 0
    assert first.terminate() == 0


def test_port_in_use_fails_with_an_error_naming_it(tmp_path: Path) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        result = cli("run", "--state-dir", str(tmp_path / "state"), "--mqtt-port", str(port))
    assert result.returncode != 0
    lines = stderr_lines(result)
    assert lines and str(port) in lines[-1] and lines[-1].startswith("lichen:"), result.stderr
    assert "Traceback" not in result.stderr



@pytest.mark.parametrize("failure", ["second-run", "port-in-use"])
def test_failed_start_prints_exactly_one_line(tmp_path: Path, runs, failure: str) -> None:
    state = tmp_path / "state"
    with socket.socket() as holder:
        if failure == "second-run":
            runs(state).wait_ready()
            port = free_port()
        else:
            holder.bind(("127.0.0.1", 0))
            holder.listen()
            port = holder.getsockname()[1]
        result = cli("run", "--state-dir", str(state), "--mqtt-port", str(port))
    assert result.returncode != 0
    assert len(stderr_lines(result)) == 1, result.stderr


# ====================================================================== status


def test_status_while_running_and_after_stop(tmp_path: Path, runs) -> None:
    state = tmp_path / "state"
    r = runs(state).wait_ready()

    plain = cli("status", "--state-dir", str(state))
    assert plain.returncode == 0, plain.stderr
    assert "state: running" in plain.stdout

    deadline = time.monotonic() + WAIT
    while True:
        result = cli("status", "--state-dir", str(state), "--json")
        assert result.returncode == 0, result.stderr
        status = json.loads(result.stdout)
        assert status["state"] == "running"
        listeners = status.get("mqtt", {}).get("listeners", [])
        if status.get("pid") == r.proc.pid and any(f"127.0.0.1:{r.port}" in x
                                                    for x in listeners):
            break
        assert time.monotonic() < deadline, f"status never described this gateway: {status}"
        time.sleep(0.2)

    assert r.terminate() == 0
    after = cli("status", "--state-dir", str(state))
    assert after.returncode != 0
    assert len(stderr_lines(after)) == 1, after.stderr
    after_json = cli("status", "--state-dir", str(state), "--json")
    assert after_json.returncode != 0
    if after_json.stdout.strip():
        assert json.loads(after_json.stdout)["state"] != "running"


def test_status_after_kill_9_is_not_running(tmp_path: Path, runs) -> None:
    """The lock dies with the process: a stale status file does not claim it runs."""
    state = tmp_path / "state"
    r = runs(state).wait_ready()
    assert cli("status", "--state-dir", str(state)).returncode == 0
    r.proc.kill()
    r.proc.wait(timeout=5)
    result = cli("status", "--state-dir", str(state), "--json")
    assert result.returncode != 0
    if result.stdout.strip():
        assert json.loads(result.stdout)["state"] != "running"


def test_status_of_a_missing_state_dir_fails_with_one_line(tmp_path: Path) -> None:
    result = cli("status", "--state-dir", str(tmp_path / "nothing"))
    assert result.returncode != 0
    assert len(stderr_lines(result)) == 1, result.stderr
