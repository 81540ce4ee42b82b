"""What a fresh install needs: every third-party import is a declared dependency, and the
installed `lichen` starts with the device listener, discovery and a cloud endpoint without
an import error. (CI runs the suite in a venv without system site-packages, so a package that
only this machine's Python has cannot hide a missing declaration.)"""

from __future__ import annotations

import ast
import importlib.metadata as metadata
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import ROOT, free_port, wait_for_port

OWN_PACKAGES = {"gateway", "device_sdk", "hardware"}
IMPORT_FAILURES = re.compile(r"ModuleNotFoundError|ImportError|No module named|Traceback")


def third_party_imports(package_dir: Path) -> dict[str, set[str]]:
    """Top-level module -> files importing it, for every import in the tree (including the
    ones inside functions, which only a configured path reaches)."""
    found: dict[str, set[str]] = {}
    for path in package_dir.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                top = name.split(".")[0]
                if top in sys.stdlib_module_names or top in OWN_PACKAGES | {"__future__"}:
                    continue
                found.setdefault(top, set()).add(str(path.relative_to(ROOT)))
    return found


def declared_distributions(dist: str) -> set[str]:
    """The distributions `dist` requires without extras, normalised."""
    names = set()
    for req in metadata.requires(dist) or []:
        if "extra ==" in req:
            continue
        names.add(normalise(re.split(r"[\s<>=!~;\[]", req, maxsplit=1)[0]))
    return names


def normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


@pytest.mark.parametrize("package", ["gateway", "hardware"])
def test_every_gateway_import_is_a_declared_dependency(package: str) -> None:
    declared = declared_distributions("lichen")
    providers = metadata.packages_distributions()
    missing = []
    for module, files in sorted(third_party_imports(ROOT / package).items()):
        dists = {normalise(d) for d in providers.get(module, [])}
        if not dists:
            missing.append(f"{module} (imported by {sorted(files)[0]}) is not installed")
        elif not dists & declared:
            missing.append(f"{module} (imported by {sorted(files)[0]}) comes from "
                           f"{sorted(dists)}, not in lichen's dependencies")
    assert not missing, "\n".join(missing)


def installed_script(name: str) -> Path:
    script = Path(sys.executable).parent / name
    if not script.exists():
        pytest.skip(f"{name} is not installed next to {sys.executable} (pip install -e .)")
    return script


def test_installed_lichen_starts_every_listener_and_the_cloud_link(tmp_path: Path) -> None:
    """The console script (not `python -m` with PYTHONPATH): device listener, discovery and a
    [cloud] endpoint, which between them import cryptography and awscrt."""
    from gateway.cloud.standin import Standin

    try:
        standin = Standin(tmp_path / "standin")
    except RuntimeError as exc:  # no mosquitto on this machine
        pytest.skip(f"no cloud stand-in: {exc}")
    standin.start()
    try:
        cloud = standin.cloud_config(standin.port)
        config = tmp_path / "config.toml"
        config.write_text("[cloud]\n" + "".join(
            f"{k} = {_toml(v)}\n" for k, v in cloud.items()))
        ports = [free_port() for _ in range(3)]
        log = tmp_path / "gateway.log"
        with open(log, "wb") as out:
            proc = subprocess.Popen(
                [str(installed_script("lichen")), "run", "--state-dir", str(tmp_path / "gw"),
                 "--mqtt-port", str(ports[0]), "--tls-port", str(ports[1]),
                 "--discovery-port", str(ports[2]), "--config", str(config)],
                stdout=out, stderr=subprocess.STDOUT, cwd=tmp_path)
        try:
            for port in ports:
                wait_for_port(port, proc, timeout=20)
            assert _wait_for(lambda: "cloud: connected" in log.read_text(errors="replace")
                             or _cloud_state(tmp_path / "gw") == "connected", 30), \
                log.read_text(errors="replace")[-3000:]
        finally:
            proc.terminate()
            proc.wait(timeout=15)
        text = log.read_text(errors="replace")
        assert not IMPORT_FAILURES.search(text), text[-3000:]
        assert proc.returncode == 0, text[-3000:]
    finally:
        standin.stop()


def test_installed_lichen_ca_show_prints_the_ca(tmp_path: Path) -> None:
    out = subprocess.run([str(installed_script("lichen")), "ca", "show", "--state-dir",
                          str(tmp_path / "gw")], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("-----BEGIN CERTIFICATE-----")
    assert not IMPORT_FAILURES.search(out.stderr)


def _cloud_state(state_dir: Path) -> str | None:
    import json

    try:
        return json.loads((state_dir / "status.json").read_text()).get("cloud", {}).get("state")
    except (OSError, ValueError):
        return None


def _wait_for(predicate, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.1)
    return False


def _toml(value: object) -> str:
    import json

    return str(value).lower() if isinstance(value, bool) else json.dumps(value)
