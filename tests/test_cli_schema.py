"""A state directory holding a file from a newer Lichen: `lichen run` and the commands that
open the file exit non-zero with one line on stderr naming it, no traceback, and the file is
left as it was."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.shadow.store import SHADOW_DB
from gateway.state_dir import BROKER_DB, REGISTRY_DB
from tests.conftest import free_port
from tests.sqlite_files import build
from tests.test_cli import cli, listening_addresses, stderr_lines

KINDS = {REGISTRY_DB: "device registry", BROKER_DB: "broker store", SHADOW_DB: "shadow store"}


def future_file(state: Path, name: str) -> bytes:
    state.mkdir(mode=0o700, exist_ok=True)
    return build(state / name, "CREATE TABLE from_the_future (x);", version=3)


def assert_refused(result, state: Path, name: str, before: bytes) -> None:
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    lines = stderr_lines(result)
    assert lines == [f"lichen: {state / name}: this {KINDS[name]} was written by a newer "
                     "Lichen (schema 3, this one knows up to 2): upgrade Lichen or restore a "
                     "backup"], result.stderr
    assert (state / name).read_bytes() == before


@pytest.mark.parametrize("name", [REGISTRY_DB, BROKER_DB, SHADOW_DB])
def test_run_refuses_a_file_from_a_newer_lichen_with_one_line(tmp_path: Path, name: str):
    state = tmp_path / "state"
    before = future_file(state, name)
    port = free_port()
    # The registry is opened for device auth, which the TLS listener needs.
    tls = str(free_port()) if name == REGISTRY_DB else "0"
    result = cli("run", "--state-dir", str(state), "--mqtt-port", str(port),
                 "--tls-port", tls, "--discovery-port", "0")
    assert_refused(result, state, name, before)
    assert listening_addresses(port) == set()


@pytest.mark.parametrize("command", [["ca", "show"], ["device", "list"],
                                     ["device", "add", "lamp", "--cert-out", "{tmp}/c.pem",
                                      "--key-out", "{tmp}/k.pem"]])
def test_registry_commands_refuse_a_newer_registry_with_one_line(tmp_path: Path,
                                                                 command: list[str]):
    state = tmp_path / "state"
    before = future_file(state, REGISTRY_DB)
    args = [a.format(tmp=tmp_path) for a in command]
    result = cli(*args, "--state-dir", str(state))
    assert_refused(result, state, REGISTRY_DB, before)


@pytest.mark.parametrize("op", ["get", "list"])
def test_shadow_commands_refuse_a_newer_shadow_store_with_one_line(tmp_path: Path, op: str):
    state = tmp_path / "state"
    before = future_file(state, SHADOW_DB)
    result = cli("shadow", op, "lamp", "--state-dir", str(state))
    assert_refused(result, state, SHADOW_DB, before)
