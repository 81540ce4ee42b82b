"""Rough edges a new user hits (issue #12 item 5), each through the real `lichen` command in a
subprocess: a half-missing local CA, state directories this user may not read or write,
bad --days, existing output files, a closed stdout pipe, `fn invoke` of a function the
gateway lacks, --version and a bare `lichen`."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from importlib.metadata import version
from pathlib import Path

import pytest
from cryptography import x509

from tests.conftest import ROOT, free_port
from tests.test_cli import WAIT, Run, cli, cli_env, stderr_lines

AS_NOBODY = ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups"]
CAN_SWITCH_USER = os.geteuid() == 0 and shutil.which("setpriv") is not None


def one_line(result: subprocess.CompletedProcess) -> str:
    """The failure's single stderr line (and that there is no traceback)."""
    assert result.returncode != 0, result.stdout
    assert "Traceback" not in result.stderr, result.stderr
    lines = stderr_lines(result)
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("lichen"), lines[0]
    return lines[0]


@pytest.fixture
def gateways(tmp_path: Path) -> Iterator[Callable[..., Run]]:
    made: list[Run] = []

    def start(state_dir: Path, *extra: str) -> Run:
        r = Run(state_dir, free_port(), tmp_path, *extra)
        made.append(r)
        return r

    yield start
    for r in made:
        r.cleanup()


def init(state: Path) -> None:
    result = cli("init", "--state-dir", str(state))
    assert result.returncode == 0, result.stderr


def add_device(state: Path, thing: str, out: Path, *extra: str) -> subprocess.CompletedProcess:
    return cli("device", "add", thing, "--state-dir", str(state), "--cert-out",
               str(out / f"{thing}.crt"), "--key-out", str(out / f"{thing}.key"), *extra)


# ====================================================================== half a local CA


def test_missing_ca_key_is_refused_not_replaced(tmp_path: Path) -> None:
    state = tmp_path / "state"
    init(state)
    assert add_device(state, "sensor-1", tmp_path).returncode == 0
    pki = state / "pki"
    ca_crt = (pki / "ca.crt").read_bytes()
    (pki / "ca.key").unlink()

    run = cli("run", "--state-dir", str(state), "--mqtt-port", str(free_port()),
              "--tls-port", str(free_port()), "--discovery-port", "0")
    line = one_line(run)
    assert str(pki / "ca.key") in line and "restore" in line, line
    assert f"lichen ca reset --state-dir {state} --yes" in line, line
    for command in (["ca", "show"], ["device", "list"]):
        assert "ca.key" in one_line(cli(*command, "--state-dir", str(state)))
    assert "ca.key" in one_line(add_device(state, "sensor-2", tmp_path))
    assert (pki / "ca.crt").read_bytes() == ca_crt
    assert not (pki / "ca.key").exists()


def test_missing_ca_certificate_is_refused_and_no_new_key_made(tmp_path: Path) -> None:
    state = tmp_path / "state"
    init(state)
    pki = state / "pki"
    ca_key = (pki / "ca.key").read_bytes()
    ca_crt = (pki / "ca.crt").read_bytes()
    (pki / "ca.crt").unlink()

    run = cli("run", "--state-dir", str(state), "--mqtt-port", str(free_port()),
              "--tls-port", str(free_port()), "--discovery-port", "0")
    line = one_line(run)
    assert str(pki / "ca.crt") in line and "ca reset" in line, line
    assert "ca.crt" in one_line(cli("ca", "show", "--state-dir", str(state)))
    assert (pki / "ca.key").read_bytes() == ca_key
    assert not (pki / "ca.crt").exists()
    # the way out it names: the certificate put back (devices hold copies) works again
    (pki / "ca.crt").write_bytes(ca_crt)
    shown = cli("ca", "show", "--state-dir", str(state))
    assert shown.returncode == 0 and shown.stdout.encode() == ca_crt, shown.stderr


def test_ca_reset_says_what_it_invalidates_and_starts_over(tmp_path: Path,
                                                           gateways) -> None:
    state = tmp_path / "state"
    init(state)
    assert add_device(state, "sensor-1", tmp_path).returncode == 0
    old_crt = (state / "pki" / "ca.crt").read_bytes()
    (state / "pki" / "ca.key").unlink()

    refused = one_line(cli("ca", "reset", "--state-dir", str(state)))
    assert "1 active device certificate" in refused and "sensor-1" in refused, refused
    assert "--yes" in refused
    assert (state / "pki" / "ca.crt").read_bytes() == old_crt

    done = cli("ca", "reset", "--state-dir", str(state), "--yes")
    assert done.returncode == 0, done.stderr
    assert "revoked 1 certificate" in done.stdout and "sensor-1" in done.stdout, done.stdout
    new_crt = (state / "pki" / "ca.crt").read_bytes()
    assert new_crt != old_crt
    aside = [p for p in (state / "pki").iterdir() if p.name.startswith("replaced-")]
    assert len(aside) == 1 and (aside[0] / "ca.crt").read_bytes() == old_crt
    shown = json.loads(cli("device", "show", "sensor-1", "--state-dir", str(state)).stdout)
    assert [c["status"] for c in shown["certificates"]] == ["revoked"]

    # the gateway starts on the new CA, and a certificate issued now chains to it
    gw = gateways(state, "--tls-port", str(free_port()), "--discovery-port", "0").wait_ready()
    assert add_device(state, "sensor-2", tmp_path).returncode == 0
    issued = x509.load_pem_x509_certificate((tmp_path / "sensor-2.crt").read_bytes())
    assert issued.issuer == x509.load_pem_x509_certificate(new_crt).subject
    # and no reset under a running gateway
    line = one_line(cli("ca", "reset", "--state-dir", str(state), "--yes"))
    assert "running" in line, line
    assert (state / "pki" / "ca.crt").read_bytes() == new_crt
    assert gw.terminate() == 0


# ====================================================================== permissions


@pytest.fixture
def open_tmp() -> Iterator[Path]:
    """A temporary folder every user may enter (pytest's tmp_path is private to root)."""
    path = Path(tempfile.mkdtemp(prefix="lichen-edges-"))
    path.chmod(0o755)
    yield path
    for p in [path, *path.rglob("*")]:   # read-only folders would stop rmtree
        with contextlib.suppress(OSError):
            if p.is_dir() and not p.is_symlink():
                p.chmod(0o700)
    shutil.rmtree(path, ignore_errors=True)


def cli_as(user: str | None, *args: str) -> subprocess.CompletedProcess:
    """A `lichen` command as `user` (None: as this process's own user)."""
    prefix = AS_NOBODY if user == "nobody" else []
    return subprocess.run([*prefix, sys.executable, "-m", "gateway.cli", *args], cwd=ROOT,
                          env=cli_env(), stdin=subprocess.DEVNULL, capture_output=True,
                          text=True, timeout=WAIT)


@pytest.mark.parametrize("command", [["status"], ["status", "--json"], ["shadow", "get", "t1"],
                                     ["fn", "list"], ["fn", "logs", "f1"]])
def test_a_state_dir_this_user_cannot_read_gives_one_line(open_tmp: Path,
                                                          command: list[str]) -> None:
    state = open_tmp / "state"
    init(state)
    if CAN_SWITCH_USER:      # root reads everything: ask as nobody
        user = "nobody"
    else:
        state.chmod(0)
        user = None
    line = one_line(cli_as(user, *command, "--state-dir", str(state)))
    assert "permission denied" in line and str(state) in line, line


def test_ca_show_needs_no_write_access(open_tmp: Path) -> None:
    state = open_tmp / "state"
    init(state)
    expected = cli("ca", "show", "--state-dir", str(state)).stdout
    user = None
    if CAN_SWITCH_USER:      # root may write anywhere: make it nobody's, read-only
        subprocess.run(["chown", "-R", "nobody:nogroup", str(state)], check=True)
        user = "nobody"
    for folder in (state / "pki", state):
        folder.chmod(0o500)
    before = sorted(p.name for p in state.rglob("*"))
    shown = cli_as(user, "ca", "show", "--state-dir", str(state))
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout == expected and shown.stdout.startswith("-----BEGIN CERTIFICATE")
    assert sorted(p.name for p in state.rglob("*")) == before


# ====================================================================== device add


@pytest.mark.parametrize("days", ["-5", "0", "9999999"])
def test_device_add_refuses_days_out_of_range(tmp_path: Path, days: str) -> None:
    state = tmp_path / "state"
    line = one_line(add_device(state, "sensor-1", tmp_path, "--days", days))
    assert "--days" in line and days in line and "36500" in line, line
    assert not (tmp_path / "sensor-1.crt").exists()
    assert not (tmp_path / "sensor-1.key").exists()


def test_device_add_keeps_existing_files_unless_forced(tmp_path: Path) -> None:
    state = tmp_path / "state"
    init(state)
    out = tmp_path / "new" / "folder"            # made when missing
    assert add_device(state, "sensor-1", out, "--days", "1").returncode == 0
    cert = x509.load_pem_x509_certificate((out / "sensor-1.crt").read_bytes())
    assert cert.not_valid_after_utc > cert.not_valid_before_utc
    files = {p: p.read_bytes() for p in (out / "sensor-1.crt", out / "sensor-1.key")}

    line = one_line(add_device(state, "sensor-1", out))
    assert "--cert-out" in line and str(out / "sensor-1.crt") in line and "--force" in line
    assert {p: p.read_bytes() for p in files} == files
    (out / "sensor-1.crt").unlink()
    line = one_line(add_device(state, "sensor-1", out))
    assert "--key-out" in line and "--force" in line, line
    shown = json.loads(cli("device", "show", "sensor-1", "--state-dir", str(state)).stdout)
    assert len(shown["certificates"]) == 1      # the refused requests issued nothing

    forced = add_device(state, "sensor-1", out, "--force")
    assert forced.returncode == 0, forced.stderr
    assert (out / "sensor-1.key").read_bytes() != files[out / "sensor-1.key"]
    assert (out / "sensor-1.crt").exists()


# ====================================================================== closed stdout


def test_output_into_a_closed_pipe_exits_quietly(tmp_path: Path) -> None:
    """`lichen shadow update ... | head -3`: the reader is gone before the document is out."""
    state = tmp_path / "state"
    init(state)
    desired = {f"k{i}": i for i in range(200)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "gateway.cli", "shadow", "update", "t1",
         json.dumps({"state": {"desired": desired}}), "--state-dir", str(state)],
        cwd=ROOT, env=cli_env(), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE)
    proc.stdout.close()                    # as `head` does once it has its lines
    try:
        err = proc.stderr.read().decode()
        rc = proc.wait(timeout=WAIT)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=5)
        proc.stderr.close()
    assert err == "" and rc == 141, (rc, err)
    got = cli("shadow", "get", "t1", "--state-dir", str(state))   # the update was done
    assert json.loads(got.stdout)["state"]["desired"] == desired


# ====================================================================== fn invoke


def test_fn_invoke_of_a_missing_function_answers_at_once(tmp_path: Path, gateways) -> None:
    state = tmp_path / "state"
    gw = gateways(state, "--tls-port", "0", "--discovery-port", "0").wait_ready()
    deadline = time.monotonic() + WAIT
    while (json.loads(cli("status", "--state-dir", str(state), "--json").stdout or "{}")
           .get("pid") != gw.proc.pid):
        assert time.monotonic() < deadline, "the gateway never wrote its status"
        time.sleep(0.1)
    # default --timeout is 30 s, longer than cli() waits: an answer means it did not wait
    line = one_line(cli("fn", "invoke", "nope", "--state-dir", str(state)))
    assert "no function named 'nope'" in line and "runs no functions" in line, line
    assert gw.terminate() == 0


# ====================================================================== --version, help


def test_version() -> None:
    result = cli("--version")
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"lichen {version('lichen')}\n"


@pytest.mark.parametrize("command", [[], ["ca"], ["device"], ["fn"]])
def test_a_bare_command_prints_its_help(command: list[str]) -> None:
    result = cli(*command)
    assert result.returncode == 0 and result.stderr == "", result.stderr
    assert result.stdout.startswith(f"usage: {' '.join(['lichen', *command])} ")


def test_usage_errors_are_one_line() -> None:
    result = cli("status", "--no-such-option")
    assert result.returncode == 2
    line = one_line(result)
    assert "--no-such-option" in line and "--help" in line, line
