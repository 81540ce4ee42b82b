"""The deployment document: JSON, checked against deployment.schema.json (jsonschema), then
its artifact references against its artifacts. Pure: no files are read but the schema."""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

from ..errors import UserError

SCHEMA_PATH = Path(__file__).with_name("deployment.schema.json")
SCHEMA_VERSION = 1
# the config sections a deployment owns; the rest stay the gateway's own (config.toml)
DEPLOYABLE = ("log_level", "routes", "functions", "models", "spool", "shadow")
DEFAULT_HEALTH_WINDOW_S = 30.0


class DocumentRejected(UserError):
    """A document that cannot be deployed; str() is `PATH: reason`."""


@dataclass(frozen=True, slots=True)
class Artifact:
    name: str
    url: str
    sha256: str
    size: int
    format: str = "file"          # "file", or "zip" / "tar.gz": unpacked into a directory


@cache
def schema() -> dict:
    return json.loads(SCHEMA_PATH.read_text())


def _short(value: Any, limit: int = 80) -> str:
    text = json.dumps(value) if not isinstance(value, str) else repr(value)
    return text if len(text) <= limit else text[:limit - 3] + "..."


def check_schema(doc: Any) -> None:
    """DocumentRejected naming the JSON path of the most relevant schema violation."""
    import jsonschema
    from jsonschema.exceptions import best_match

    validator = jsonschema.Draft202012Validator(schema())
    error = best_match(validator.iter_errors(doc))
    if error is None:
        return
    if error.validator == "additionalProperties" and isinstance(error.instance, dict):
        allowed = set(error.schema.get("properties", {}))
        extra = sorted(k for k in error.instance if k not in allowed)
        if extra and allowed:
            raise DocumentRejected(f"{error.json_path}.{extra[0]}: unknown field (known: "
                                   f"{', '.join(sorted(allowed))})")
    if error.validator == "const" and error.json_path == "$.schemaVersion":
        raise DocumentRejected(f"$.schemaVersion: this Lichen reads schema version "
                               f"{SCHEMA_VERSION}, got {_short(error.instance)}")
    message = error.message
    if len(message) > 200:  # jsonschema quotes the whole instance; the path says where
        message = f"{_short(error.instance)} is not valid ({error.validator})"
    raise DocumentRejected(f"{error.json_path}: {message}")


def parse(text: str | bytes) -> dict:
    try:
        doc = json.loads(text)
    except ValueError as exc:
        raise DocumentRejected(f"$: not valid JSON: {exc}") from None
    validate(doc)
    return doc


def validate(doc: Any) -> None:
    """Schema, then every artifact reference names a declared artifact of the right kind."""
    check_schema(doc)
    arts = artifacts(doc)
    for kind, key, wants_dir in (("functions", "code", True), ("models", "path", False)):
        for i, item in enumerate(doc["config"].get(kind, [])):
            ref = item[key]["artifact"]
            where = f"$.config.{kind}[{i}].{key}.artifact"
            if ref not in arts:
                raise DocumentRejected(f"{where}: no artifact named {ref!r} in $.artifacts")
            is_bundle = arts[ref].format != "file"
            if wants_dir and not is_bundle:
                raise DocumentRejected(f"{where}: {ref!r} must be a code bundle "
                                       '(format "zip" or "tar.gz")')
            if not wants_dir and is_bundle:
                raise DocumentRejected(f"{where}: {ref!r} must be a file (format \"file\")")


def artifacts(doc: dict) -> dict[str, Artifact]:
    return {name: Artifact(name, a["url"], a["sha256"].lower(), a["size"],
                           a.get("format", "file"))
            for name, a in doc.get("artifacts", {}).items()}


def health_window(doc: dict | None) -> float:
    if not doc:
        return DEFAULT_HEALTH_WINDOW_S
    return float(doc.get("health", {}).get("window_s", DEFAULT_HEALTH_WINDOW_S))
