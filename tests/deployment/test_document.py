"""Bad documents are refused with the JSON path of the field and the reason, and change
nothing: no version, no switch, the running version stays."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path

import pytest

from gateway.deployment.document import DocumentRejected, parse
from gateway.deployment.toml_out import dumps
from tests.deployment.helpers import document, handler_source, lichen, status


def _doc(tmp_path: Path) -> dict:
    return json.loads(document(tmp_path, {"echo": handler_source("a")}).read_text())


@pytest.mark.parametrize("change, expected", [
    (lambda d: d.update(schemaVersion=2), "$.schemaVersion: this Lichen reads schema version 1"),
    (lambda d: d.update(extra=1), "$.extra: unknown field"),
    (lambda d: d["config"].update(listeners={}), "$.config.listeners: unknown field"),
    (lambda d: d["config"].update(log_level="loud"), "$.config.log_level:"),
    (lambda d: d["artifacts"]["echo-code"].update(sha256="xyz"),
     "$.artifacts['echo-code'].sha256: 'xyz' does not match"),
    (lambda d: d["artifacts"]["echo-code"].pop("size"),
     "$.artifacts['echo-code']: 'size' is a required property"),
    (lambda d: d["config"]["functions"][0].update(code="/tmp"),
     "$.config.functions[0].code:"),
    (lambda d: d["config"]["functions"][0].update(code={"artifact": "nope"}),
     "$.config.functions[0].code.artifact: no artifact named 'nope'"),
])
def test_schema_errors_name_the_field(tmp_path: Path, change, expected: str) -> None:
    doc = _doc(tmp_path)
    change(doc)
    with pytest.raises(DocumentRejected) as err:
        parse(json.dumps(doc))
    assert str(err.value).startswith(expected), str(err.value)


def test_not_json() -> None:
    with pytest.raises(DocumentRejected, match=r"^\$: not valid JSON"):
        parse("{")


@pytest.mark.parametrize("change, expected", [
    (lambda d: d["config"]["functions"][0].update(timeout_s=0),
     "$.config.functions[0].timeout_s: must be between 0.01 and 900, got 0"),
    (lambda d: d["config"]["functions"][0].update(handler="main.nothing"),
     "$.config.functions[0].handler:"),
    (lambda d: d["config"].update(spool={"when_full": "explode"}),
     "$.config.spool.when_full: must be one of refuse, drop-oldest"),
    (lambda d: d["config"].update(routes=[{"name": "r", "direction": "sideways"}]),
     "$.config.routes[0]"),
    (lambda d: d["artifacts"]["echo-code"].update(sha256="0" * 64),
     "artifacts.echo-code.sha256:"),
    (lambda d: d["artifacts"]["echo-code"].update(size=3), "artifacts.echo-code.size:"),
])
def test_bad_documents_change_nothing(tmp_path: Path, change, expected: str) -> None:
    """Offline: the good document becomes version 1; each bad one is refused with its
    field, and version 1 stays current."""
    state = tmp_path / "state"
    good = document(tmp_path, {"echo": handler_source("a")})
    assert lichen("deploy", "apply", str(good), "--state-dir", str(state)).returncode == 0
    doc = json.loads(good.read_text())
    change(doc)
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(doc))
    r = lichen("deploy", "apply", str(bad), "--state-dir", str(state))
    assert r.returncode == 1
    line = r.stderr.strip()
    assert "\n" not in line and expected in line, line
    assert status(state)["version"] == 1
    versions = sorted(p.name for p in (state / "deployments" / "versions").iterdir())
    assert versions == ["1"]
    assert not any((state / "deployments" / "staging").iterdir())


def test_toml_writer_round_trips() -> None:
    data = {"a": "quote \" and \\ and \n and é and \U0001f600", "b": [1, 2.5, True],
            "c": {"x y": {"z": []}}, "d": None}
    text = dumps(data)
    del data["d"]  # TOML has no null: left out
    assert tomllib.loads(text) == data
