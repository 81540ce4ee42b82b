"""Old versions and the artifacts only they used are removed after a deployment succeeds;
what the kept versions name stays cached (real files, a real deployments.sqlite3)."""

from __future__ import annotations

import hashlib
from pathlib import Path

from gateway.deployment import versions
from gateway.deployment.cleanup import collect_garbage, kept_versions
from gateway.deployment.store import DeploymentStore


def cached(state_dir: Path, data: bytes) -> tuple[str, Path]:
    digest = hashlib.sha256(data).hexdigest()
    path = versions.root(state_dir) / "cache" / "sha256" / digest
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return digest, path


def test_old_versions_and_their_artifacts_go_the_kept_ones_stay(tmp_path: Path) -> None:
    store = DeploymentStore(tmp_path)
    shared_hash, shared = cached(tmp_path, b"a library every version ships")
    own: dict[int, Path] = {}
    try:
        for n in range(1, 7):
            digest, own[n] = cached(tmp_path, f"version {n}'s code".encode())
            doc = {"schemaVersion": 1, "config": {}, "artifacts": {
                "code": {"url": "code.zip", "sha256": digest, "size": 10},
                "lib": {"url": "lib.zip", "sha256": shared_hash, "size": 10}}}
            assert store.add("apply", doc) == n
            versions.version_dir(tmp_path, n).mkdir(parents=True)
        partial = own[1].with_name(own[1].name + ".part")
        partial.write_bytes(b"half of something no version names")

        collect_garbage(tmp_path, store, keep={2, 6})   # 6 current, 2 the one before it

        assert kept_versions(tmp_path) == [2, 4, 5, 6]   # the newest 3, and what `keep` says
        for n in (2, 4, 5, 6):
            assert own[n].exists(), n
        for n in (1, 3):
            assert not own[n].exists(), n
        assert shared.exists() and not partial.exists()
    finally:
        store.close()
