"""Many shadows with changes waiting after an outage: they sync within the configured rate
with progress visible in `lichen shadow sync-status`, each with one update, and a kill -9 in
the middle of it loses nothing and applies nothing twice.

1,000 things: the same path, at the configured rate (20 requests/s by default: a GET and an
update per changed shadow, so about 100 s); bench/ has no figure for it yet."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from tests.shadow.sync_helpers import ShadowClient, SyncRig, wait_until

THINGS = 200
pytestmark = pytest.mark.timeout(300)
RATE = {"things": ["fleet-*"], "rate": 50.0, "burst": 10, "thing_rate": 5.0}


def publish_all(client: ShadowClient, state_of) -> None:
    """One update per thing, one at a time (a client may have 10 requests pending)."""
    for i in range(THINGS):
        client.update(f"fleet-{i}", state_of(i))


def cloud_updates_by_sync(cloud: ShadowClient) -> int:
    with cloud.lock:
        return sum(1 for _, doc in cloud.accepted
                   if str(doc.get("clientToken", "")).startswith("lsync-"))


def outage_with_changes(rig: SyncRig, local: ShadowClient, cloud: ShadowClient) -> None:
    rig.wait_connected()
    publish_all(local, lambda i: {"reported": {"n": i, "phase": 1}})
    wait_until(lambda: cloud_updates_by_sync(cloud) >= THINGS, "first sync of every thing",
               rig.gw, timeout=120)
    wait_until(lambda: rig.sync_status()["pending"] == 0, "nothing pending", rig.gw)
    rig.link.cut()
    rig.wait_connected(False)
    publish_all(local, lambda i: {"reported": {"phase": 2}})
    wait_until(lambda: rig.sync_status()["pending"] == THINGS, "every change pending", rig.gw)


def test_a_fleet_of_pending_changes_syncs_within_the_rate(tmp_path: Path) -> None:
    rig = SyncRig(tmp_path, RATE)
    local = ShadowClient(rig.gw.port, "local-app")
    cloud = ShadowClient(rig.cloud.port, "cloud-app")
    try:
        outage_with_changes(rig, local, cloud)
        before = cloud_updates_by_sync(cloud)
        rig.link.restore()
        seen = set()
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            pending = rig.sync_status()["pending"]
            seen.add(pending)
            if pending == 0:
                break
            time.sleep(0.2)
        assert 0 in seen, rig.gw.log()[-3000:]
        # progress shows between "all" and "none" (400 requests at 50/s take seconds)
        assert any(0 < p < THINGS for p in seen), seen
        assert cloud_updates_by_sync(cloud) - before == THINGS   # one each, no echoes
        for i in (0, 99, THINGS - 1):
            assert cloud.state(f"fleet-{i}") == {"reported": {"n": i, "phase": 2}}
    finally:
        local.close()
        cloud.close()
        rig.close()


def test_kill_9_during_sync_loses_nothing_and_applies_nothing_twice(tmp_path: Path) -> None:
    rig = SyncRig(tmp_path, RATE)
    local = ShadowClient(rig.gw.port, "local-app")
    cloud = ShadowClient(rig.cloud.port, "cloud-app")
    try:
        outage_with_changes(rig, local, cloud)
        before = cloud_updates_by_sync(cloud)
        rig.link.restore()
        wait_until(lambda: cloud_updates_by_sync(cloud) - before >= THINGS // 4,
                   "a quarter synced", rig.gw)
        rig.gw.kill()
        assert 0 < cloud_updates_by_sync(cloud) - before < THINGS   # killed mid-way
        assert rig.sync_status()["pending"] > 0                    # and it knows
        rig.gw.start()
        wait_until(lambda: rig.sync_status()["pending"] == 0, "everything synced", rig.gw,
                   timeout=120)
        local2 = ShadowClient(rig.gw.port, "local-app-2")
        for i in range(THINGS):
            want = {"reported": {"n": i, "phase": 2}}
            assert cloud.state(f"fleet-{i}") == want
            assert local2.state(f"fleet-{i}") == want
            # created by the first sync, updated once: never applied twice
            assert cloud.version(f"fleet-{i}") == 2, i
            assert local2.version(f"fleet-{i}") == 2, i
        local2.close()
    finally:
        local.close()
        cloud.close()
        rig.close()
