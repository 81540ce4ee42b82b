"""`python -m gateway.cloud.standin` (deploy/cloud-standin.sh) as a user runs it: the settings
it prints merge into the config `lichen init` wrote, and SIGTERM stops its mosquitto too."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from gateway.config import load_config
from tests.conftest import MOSQUITTO, ROOT, free_port, wait_for_port
from tests.test_cli import cli

pytestmark = pytest.mark.skipif(MOSQUITTO is None,
                                reason="the cloud stand-in needs mosquitto (apt-get install "
                                       "mosquitto)")
WAIT = 10.0


def children(pid: int) -> list[int]:
    """Processes whose parent is `pid` (from /proc)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry.name))
    return found


def alive(pid: int) -> bool:
    """Running (a zombie has exited; it only waits for its parent to reap it)."""
    try:
        return (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[0] \
            != "Z"
    except OSError:
        return False


@dataclass
class StandinRun:
    proc: subprocess.Popen
    port: int
    dir: Path
    out: Path
    mosquitto: int

    def output(self) -> str:
        return self.out.read_text()


@pytest.fixture
def standin_run(tmp_path: Path) -> Iterator[StandinRun]:
    port = free_port()
    out = tmp_path / "standin.out"
    with open(out, "wb") as f, open(tmp_path / "standin.err", "wb") as err:
        # stdout: what the user copies; mosquitto's log goes to stderr
        proc = subprocess.Popen([sys.executable, "-m", "gateway.cloud.standin", "--dir",
                                 str(tmp_path / "standin"), "--port", str(port)],
                                cwd=ROOT, stdout=f, stderr=err)
    mosquitto = None
    try:
        wait_for_port(port, proc, timeout=WAIT)
        deadline = time.monotonic() + WAIT
        while "# observer" not in out.read_text() or not children(proc.pid):
            assert time.monotonic() < deadline, out.read_text()
            time.sleep(0.05)
        mosquitto = children(proc.pid)[0]
        yield StandinRun(proc, port, tmp_path / "standin", out, mosquitto)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=5)
        if mosquitto is not None and alive(mosquitto):   # left behind by a failed test
            os.kill(mosquitto, signal.SIGKILL)


def apply_as_instructed(config: str, printed: str) -> str:
    """What the printed comment asks: each `key = value` line replaces the line with the same
    key in the [cloud] table (or its commented-out `# key = ...`), else goes under it."""
    lines = config.splitlines()
    start = lines.index("[cloud]")
    end = next(i for i in range(start + 1, len(lines)) if lines[i].startswith("["))
    for setting in (line for line in printed.splitlines()
                    if line.strip() and not line.startswith("#")):
        key = setting.split("=", 1)[0].strip()
        same = [i for i in range(start + 1, end)
                if re.match(rf"#?\s*{re.escape(key)}\s*=", lines[i])]
        if same:
            lines[same[0]] = setting
        else:
            lines.insert(start + 1, setting)
            end += 1
    return "\n".join(lines) + "\n"


def test_printed_settings_merge_into_the_init_config(tmp_path: Path, standin_run) -> None:
    printed = standin_run.output()
    assert not re.search(r"^\s*\[", printed, re.M), printed   # no table header to duplicate
    state = tmp_path / "state"
    assert cli("init", "--state-dir", str(state)).returncode == 0
    config = (state / "config.toml").read_text()
    with pytest.raises(tomllib.TOMLDecodeError):  # what pasting a [cloud] table gave
        tomllib.loads(config + "\n[cloud]\nendpoint = \"127.0.0.1\"\n")

    merged = tmp_path / "merged.toml"
    merged.write_text(apply_as_instructed(config, printed))
    complete = standin_run.dir / "gateway.toml"
    assert f"--config {complete}" in printed
    for path in (merged, complete):
        tomllib.loads(path.read_text())
        cloud = load_config(path).cloud
        assert (cloud.endpoint, cloud.port) == ("127.0.0.1", standin_run.port), path
        assert cloud.cert_file == str(standin_run.dir / "gateway.crt")
        assert cloud.aws_iot_limits is False and cloud.min_reconnect_s == 0.2


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_stops_mosquitto_too(standin_run, sig: int) -> None:
    assert alive(standin_run.mosquitto)
    standin_run.proc.send_signal(sig)
    assert standin_run.proc.wait(timeout=WAIT) == 0
    deadline = time.monotonic() + WAIT
    while alive(standin_run.mosquitto):
        assert time.monotonic() < deadline, "mosquitto outlived the stand-in"
        time.sleep(0.05)
