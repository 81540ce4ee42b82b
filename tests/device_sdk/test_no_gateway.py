"""The device SDK stands alone: nothing in device_sdk/ imports the gateway, and it imports
(all of it) in a Python where `gateway` cannot be imported at all."""

from __future__ import annotations

import ast
import subprocess
import sys
import textwrap

import pytest

from tests.conftest import ROOT

SDK = ROOT / "device_sdk"
HEAVY = ("gateway", "numpy", "onnxruntime", "uvloop", "cryptography", "awsiot")


def sdk_modules() -> list[str]:
    return sorted(str(p.relative_to(ROOT)) for p in SDK.rglob("*.py")
                  if "build" not in p.relative_to(SDK).parts)


def imported_roots(tree: ast.AST) -> set[str]:
    roots = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            roots.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            roots.add(node.module.split(".")[0])
    return roots


@pytest.mark.parametrize("path", sdk_modules())
def test_no_module_imports_the_gateway(path):
    tree = ast.parse((ROOT / path).read_text(), path)
    assert not imported_roots(tree) & set(HEAVY), f"{path} imports {imported_roots(tree)}"


# Runs with -I (no PYTHONPATH, no script directory) and a finder that refuses `gateway`,
# so an import of it anywhere, however indirect, fails the run.
ISOLATED = textwrap.dedent("""
    import importlib, pkgutil, sys

    class NoGateway:
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] == "gateway":
                raise ImportError(f"the device SDK imported {name}")
            return None

    sys.meta_path.insert(0, NoGateway())
    sys.path.insert(0, sys.argv[1])

    import device_sdk.names, device_sdk.topic_rules
    light = sorted(m for m in sys.modules if m.split(".")[0] in ("paho", "device_sdk"))
    assert light == ["device_sdk", "device_sdk.names", "device_sdk.topic_rules"], light

    import device_sdk, device_sdk.client
    for info in pkgutil.walk_packages(device_sdk.__path__, "device_sdk."):
        importlib.import_module(info.name)
    for name in device_sdk.__all__:
        getattr(device_sdk, name)
    heavy = sorted({m.split(".")[0] for m in sys.modules} & set(sys.argv[2:]))
    assert not heavy, heavy
    print("ok")
""")


def test_the_sdk_imports_where_the_gateway_cannot():
    result = subprocess.run([sys.executable, "-I", "-c", ISOLATED, str(ROOT), *HEAVY],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"
