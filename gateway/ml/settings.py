"""`[[models]]` in the gateway config: what a model is called, where it is, what it hashes to."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..config import ConfigError
from ..config_tables import check_named_table

KNOWN_PROVIDERS = ("CPUExecutionProvider", "CUDAExecutionProvider",
                   "TensorrtExecutionProvider", "OpenVINOExecutionProvider",
                   "CoreMLExecutionProvider", "DmlExecutionProvider", "ROCMExecutionProvider",
                   "XnnpackExecutionProvider", "ACLExecutionProvider", "ArmNNExecutionProvider")


class ModelConfigError(ConfigError):
    """One line naming the field, as every config error."""


@dataclass(slots=True)
class ModelSettings:
    name: str
    path: str                                  # absolute once parsed
    sha256: str | None = None                  # checked when a worker first loads the model
    intra_op_threads: int = 1                  # onnxruntime threads per worker session
    execution_providers: list[str] = field(default_factory=lambda: ["CPUExecutionProvider"])


_KEYS = {"name", "path", "sha256", "intra_op_threads", "execution_providers"}


def parse_models(items: Any, base_dir: Path | None = None) -> list[ModelSettings]:
    """Validate `[[models]]` tables; relative paths are taken from base_dir (the config
    file's directory) or the working directory."""
    if not isinstance(items, list):
        raise ModelConfigError(f"models: must be an array of tables ([[models]]), got {items!r}")
    out: list[ModelSettings] = []
    seen: set[str] = set()
    for i, item in enumerate(items):
        name = check_named_table(item, f"models[{i}]", _KEYS, ModelConfigError)
        where = f"models.{name}"
        if name in seen:
            raise ModelConfigError(f"{where}: declared twice")
        seen.add(name)
        path = item.get("path")
        if not isinstance(path, str) or not path:
            raise ModelConfigError(f"{where}.path: a file path is required")
        p = Path(path)
        if not p.is_absolute():
            p = (base_dir or Path.cwd()) / p
        p = p.resolve()  # workers run in their code directory
        if not p.is_file():
            raise ModelConfigError(f"{where}.path: no model file at {p}")
        sha = item.get("sha256")
        if sha is not None and (not isinstance(sha, str)
                                or not re.fullmatch(r"[0-9a-fA-F]{64}", sha)):
            raise ModelConfigError(f"{where}.sha256: must be 64 hex digits, got {sha!r}")
        threads = item.get("intra_op_threads", 1)
        if isinstance(threads, bool) or not isinstance(threads, int) or not 0 <= threads <= 256:
            raise ModelConfigError(f"{where}.intra_op_threads: must be an integer between 0 "
                                   f"and 256 (0 = onnxruntime's choice), got {threads!r}")
        providers = item.get("execution_providers", ["CPUExecutionProvider"])
        if (not isinstance(providers, list) or not providers
                or not all(isinstance(x, str) for x in providers)):
            raise ModelConfigError(f"{where}.execution_providers: must be a non-empty list of "
                                   f"strings, got {providers!r}")
        for prov in providers:
            if prov not in KNOWN_PROVIDERS:
                raise ModelConfigError(f"{where}.execution_providers: unknown provider "
                                       f"{prov!r} (e.g. CPUExecutionProvider)")
        out.append(ModelSettings(name, str(p), sha.lower() if sha else None, threads,
                                 list(providers)))
    return out
