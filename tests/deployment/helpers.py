"""Deployment test helpers: documents with real code bundles and models, the `lichen`
command as a subprocess, and waits that are always bounded."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DIGITS = ROOT / "deploy" / "examples" / "digits"


def artifact(path: Path, fmt: str = "file", url: str | None = None) -> dict:
    data = path.read_bytes()
    return {"url": url or path.name, "sha256": hashlib.sha256(data).hexdigest(),
            "size": len(data), "format": fmt}


def bundle(dir_: Path, name: str, files: dict[str, str]) -> Path:
    """A zip code bundle in dir_."""
    path = dir_ / f"{name}.zip"
    with zipfile.ZipFile(path, "w") as z:
        for fname, text in files.items():
            z.writestr(fname, text)
    return path


def handler_source(answer: str) -> str:
    return f"def handler(event, context):\n    return {{'fn': {answer!r}}}\n"


def document(dir_: Path, functions: dict[str, str], *, model: bool = False,
             routes: list | None = None, name: str = "doc") -> Path:
    """A document in dir_ with one on-demand function per entry (name -> module source)."""
    doc: dict = {"schemaVersion": 1, "config": {"functions": []}, "artifacts": {}}
    for fn, source in functions.items():
        art = f"{fn}-code"
        bundle(dir_, art, {"main.py": source})
        doc["artifacts"][art] = artifact(dir_ / f"{art}.zip", "zip")
        doc["config"]["functions"].append({"name": fn, "code": {"artifact": art},
                                           "handler": "main.handler",
                                           "triggers": [f"in/{fn}"],
                                           "result_topic": f"out/{fn}"})
    if model:
        (dir_ / "digits.onnx").write_bytes((DIGITS / "digits.onnx").read_bytes())
        doc["artifacts"]["digits-model"] = artifact(dir_ / "digits.onnx")
        doc["config"]["models"] = [{"name": "digits", "path": {"artifact": "digits-model"}}]
    if routes is not None:
        doc["config"]["routes"] = routes
    path = dir_ / f"{name}.json"
    path.write_text(json.dumps(doc))
    return path


def lichen(*args: str, timeout: float = 120, env: dict | None = None
           ) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "gateway.cli", *args], capture_output=True,
                          text=True, timeout=timeout, cwd=ROOT,
                          env=dict(os.environ, PYTHONPATH=str(ROOT), **(env or {})))


def status(state_dir: Path) -> dict:
    r = lichen("deploy", "status", "--state-dir", str(state_dir), "--json")
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def wait_for(predicate, what: str, timeout: float = 60.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"{what}: not within {timeout}s")


def invoke(state_dir: Path, fn: str) -> dict | None:
    r = lichen("fn", "invoke", fn, "{}", "--state-dir", str(state_dir), "--timeout", "30")
    return json.loads(r.stdout) if r.returncode == 0 else None
