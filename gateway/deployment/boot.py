"""What `lichen run` runs on: an explicit --config FILE as it is (deployments are then
refused), else the current deployed version over the gateway's own config.toml, after
putting any deployment a crash interrupted back on its feet."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ..config import GatewayConfig, load_config
from ..state_dir import StateLock
from . import pipeline, versions
from .store import DB_NAME, DeploymentStore


@dataclass(slots=True)
class Boot:
    version: int                                     # the version the gateway starts on
    notes: list[str] = field(default_factory=list)   # what recovery did, to log


def run_config(state_dir: Path, config_file: str | None) -> tuple[GatewayConfig, Boot | None]:
    if config_file:
        return load_config(config_file), None
    lock = StateLock(state_dir)
    lock.acquire()  # no `lichen deploy` half-way through meanwhile; a running gateway: refused
    try:
        notes: list[str] = []
        if (state_dir / DB_NAME).exists():
            store = DeploymentStore(state_dir)
            try:
                notes = pipeline.recover(state_dir, store)
            finally:
                store.close()
        version = versions.current_version(state_dir)
        return versions.version_config(state_dir, version), Boot(version, notes)
    finally:
        lock.release()
