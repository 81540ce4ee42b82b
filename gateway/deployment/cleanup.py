"""What old deployments leave on disk, removed once a new version has proven itself.

Version directories: all but the current one, the one before it and the newest few go
(versions.prune). The download cache (deployments/cache, content-addressed by sha256) keeps
exactly the artifacts that the remaining versions name, so a rollback to any version still
on disk, or a redeploy of it, needs no download; everything else is deleted.
"""

from __future__ import annotations

import logging
from pathlib import Path

from . import versions
from .artifacts import gc
from .store import DeploymentStore

log = logging.getLogger("lichen.deployment")

KEEP_NEWEST = 3


def kept_versions(state_dir: Path) -> list[int]:
    folder = versions.root(state_dir) / "versions"
    if not folder.is_dir():
        return []
    return sorted(int(p.name) for p in folder.iterdir() if p.name.isdigit())


def artifact_hashes(store: DeploymentStore, version_numbers: list[int]) -> set[str]:
    """The sha256 of every artifact the documents of these versions name (a version's number
    is the id of the deployment that built it)."""
    hashes: set[str] = set()
    for number in version_numbers:
        dep = store.get(number)
        artifacts = (dep.document or {}).get("artifacts") if dep is not None else None
        if isinstance(artifacts, dict):
            hashes |= {str(a["sha256"]).lower() for a in artifacts.values()
                       if isinstance(a, dict) and "sha256" in a}
    return hashes


def collect_garbage(state_dir: Path, store: DeploymentStore, keep: set[int]) -> None:
    """Prune old versions (never those in `keep`), then the cache down to what is left."""
    versions.prune(state_dir, keep=keep, newest=KEEP_NEWEST)
    wanted = artifact_hashes(store, kept_versions(state_dir))
    removed = gc(versions.root(state_dir) / "cache", wanted)
    if removed:
        log.info("deployment cache: removed %d artifacts no kept version uses", len(removed))
