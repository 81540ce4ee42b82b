"""The daemon serves mutual TLS without loading `cryptography` (about 11 MB of RSS for its
whole life): the CA and the server certificate are made in a short-lived child, and the
daemon reads what it needs of them from pki/ and the pki/server.json sidecar."""

from __future__ import annotations

import datetime as dt
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from gateway.auth.pki_files import IncompleteCAError, PKIFiles
from gateway.auth.prepare import PrepareError, prepare_pki
from tests.conftest import BrokerProcess


def loaded_cryptography(pid: int) -> list[str]:
    maps = Path(f"/proc/{pid}/maps").read_text()
    return sorted({line.split()[-1] for line in maps.splitlines()
                   if "cryptography" in line and ".so" in line})


def wait_for_log(gw: BrokerProcess, text: str, times: int = 1, timeout: float = 10.0) -> bool:
    """The log is written by a handler thread: a line may land just after the port opens."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if gw.log().count(text) >= times:
            return True
        time.sleep(0.05)
    return False


def test_gateway_with_device_listener_does_not_load_cryptography(tmp_path: Path) -> None:
    # TLS listener and discovery on (tests/auth/test_device_auth.py connects devices to it)
    gw = BrokerProcess(tmp_path / "state").start()
    try:
        assert gw.proc is not None
        assert loaded_cryptography(gw.proc.pid) == []
        assert wait_for_log(gw, "issued gateway server certificate")
    finally:
        gw.stop()
    gw.start()   # a second start finds everything current: no child, nothing new issued
    try:
        assert loaded_cryptography(gw.proc.pid) == []
        assert wait_for_log(gw, "gateway ready", times=2)
        assert gw.log().count("issued gateway server certificate") == 1
    finally:
        gw.stop()


def test_sidecar_ties_facts_to_the_exact_files(tmp_path: Path) -> None:
    assert prepare_pki(tmp_path, []) is True
    files = PKIFiles(tmp_path / "pki")
    info = files.server_info()
    assert info is not None and "127.0.0.1" in info.names
    assert info.not_after > dt.datetime.now(dt.UTC) + dt.timedelta(days=300)
    assert prepare_pki(tmp_path, []) is False            # current: no child
    assert prepare_pki(tmp_path, ["gw.example"]) is True  # a new name: re-issued
    assert "gw.example" in files.server_info().names
    # a server.crt replaced behind the sidecar's back is not trusted
    files.server_cert_path.write_bytes(files.ca_cert_path.read_bytes())
    assert files.server_info() is None
    assert files.needs_preparing([])
    prepare_pki(tmp_path, [])
    assert files.server_info() is not None


def test_near_expiry_is_renewed(tmp_path: Path) -> None:
    prepare_pki(tmp_path, [])
    files = PKIFiles(tmp_path / "pki")
    soon = dt.datetime.now(dt.UTC) + dt.timedelta(days=400)
    assert files.needs_preparing([], now=soon)
    sidecar = json.loads(files.sidecar_path.read_text())
    sidecar["not_after"] = (dt.datetime.now(dt.UTC) + dt.timedelta(days=2)).isoformat()
    files.sidecar_path.write_text(json.dumps(sidecar))
    assert files.needs_preparing([])


def test_half_a_ca_is_refused_before_any_child(tmp_path: Path) -> None:
    prepare_pki(tmp_path, [])
    (tmp_path / "pki" / "ca.key").unlink()
    before = (tmp_path / "pki" / "ca.crt").read_bytes()
    with pytest.raises(IncompleteCAError, match="ca.key is missing"):
        prepare_pki(tmp_path, [])
    assert (tmp_path / "pki" / "ca.crt").read_bytes() == before


def test_child_failure_is_one_line(tmp_path: Path) -> None:
    prepare_pki(tmp_path, [])
    pki = tmp_path / "pki"
    (pki / "ca.key").write_text("not a key\n")
    (pki / "server.json").unlink()
    with pytest.raises(PrepareError) as caught:
        prepare_pki(tmp_path, [])
    assert "\n" not in str(caught.value) and "Traceback" not in str(caught.value)


def test_child_runs_alone() -> None:
    out = subprocess.run([sys.executable, "-m", "gateway.auth.prepare", "--help"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and "state_dir" in out.stdout
