"""`lichen fn list|invoke|logs` against a running gateway."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from tests.conftest import ROOT, BrokerProcess

from .conftest import write_code

CODE = {"calc": """
    def add(event, context):
        print("adding", event)
        if "a" not in event:
            raise KeyError("a")
        return {"sum": event["a"] + event["b"]}
"""}


def lichen(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, "-m", "gateway.cli", *args], capture_output=True,
                          text=True, timeout=timeout, cwd=ROOT, env=env)


def test_fn_list_invoke_logs(tmp_path: Path) -> None:
    code = write_code(tmp_path / "code", CODE)
    state = tmp_path / "state"
    config = (f'[[functions]]\nname = "add"\ncode = "{code}"\nhandler = "calc.add"\n'
              'triggers = ["calc/add"]\n')
    gw = BrokerProcess(state, config=config, tls=False).start()
    cfg = str(tmp_path / "state-config.toml")
    try:
        sd = ["--state-dir", str(state)]
        r = lichen("fn", "invoke", "add", '{"a": 2, "b": 3}', *sd)
        assert r.returncode == 0, r.stderr
        assert json.loads(r.stdout) == {"sum": 5}
        r = lichen("fn", "invoke", "add", '{"b": 3}', *sd)
        assert r.returncode == 1 and r.stderr.strip() == "lichen: add failed: KeyError: 'a'"
        r = lichen("fn", "invoke", "nope", *sd)
        assert r.returncode == 1 and "ResourceNotFound" in r.stderr
        r = lichen("fn", "invoke", "add", "not json", *sd)
        assert r.returncode == 1 and "event: not valid JSON" in r.stderr
        r = lichen("fn", "list", "--config", cfg, *sd)
        assert r.returncode == 0, r.stderr
        assert r.stdout == "add: calc.add [on-demand] on calc/add\n"
        deadline = time.monotonic() + 10  # status.json is rewritten every 2 s
        while "invocations 2" not in r.stdout and time.monotonic() < deadline:
            r = lichen("fn", "list", *sd)
            assert r.returncode == 0, r.stderr
        assert r.stdout.startswith("add: calc.add [on-demand] on calc/add  workers 1, "
                                   "invocations 2 (ok 1, failed 1,"), r.stdout
        r = lichen("fn", "logs", "add", *sd)
        assert r.returncode == 0 and "adding {'a': 2, 'b': 3}" in r.stdout
        assert "KeyError" in r.stdout
    finally:
        assert gw.stop() == 0
    r = lichen("fn", "invoke", "add", "--state-dir", str(state))
    assert r.returncode == 1 and "no gateway is running" in r.stderr
