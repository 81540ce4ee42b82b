"""Shadow sync between a gateway and a stand-in IoT Core (a second Lichen gateway, reached
over mutual TLS through a cuttable link): offline edits on both sides merged on reconnect
as the rules say, deletes carried both ways, and no update loops."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.shadow.sync_helpers import ShadowClient, SyncRig, wait_until


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[SyncRig]:
    r = SyncRig(tmp_path, {"things": ["dev-*"], "shadows": ["$classic", "conf"]})
    yield r
    r.close()


@pytest.fixture
def sides(rig: SyncRig) -> Iterator[tuple[ShadowClient, ShadowClient]]:
    local = ShadowClient(rig.gw.port, "local-app")
    cloud = ShadowClient(rig.cloud.port, "cloud-app")
    yield local, cloud
    local.close()
    cloud.close()


def settled(rig: SyncRig) -> bool:
    s = rig.sync_status()
    return s["pending"] == 0 and s.get("live", {}).get("queued") == 0


def test_offline_edits_on_both_sides_merge_on_reconnect(rig: SyncRig, sides) -> None:
    local, cloud = sides
    rig.wait_connected()
    local.update("dev-1", {"desired": {"mode": "eco"}, "reported": {"temp": 1, "fw": "1.0"}})
    first = {"desired": {"mode": "eco"}, "reported": {"temp": 1, "fw": "1.0"}}
    wait_until(lambda: cloud.state("dev-1") == first, "the shadow reached the cloud", rig.gw)

    rig.link.cut()
    rig.wait_connected(False)
    # local: temp changed (both sides change it: local wins reported), fw deleted, mode
    # changed (both sides change it: cloud wins desired)
    local.update("dev-1", {"desired": {"mode": "local"},
                           "reported": {"temp": 2, "fw": None}})
    # cloud: mode and temp changed, fan added
    cloud.update("dev-1", {"desired": {"mode": "cloud", "fan": 3}, "reported": {"temp": 5}})
    rig.link.restore()

    merged = {"desired": {"mode": "cloud", "fan": 3}, "reported": {"temp": 2}}
    wait_until(lambda: local.state("dev-1") == merged and cloud.state("dev-1") == merged,
               "both sides hold the merged document", rig.gw)
    wait_until(lambda: settled(rig), "nothing pending", rig.gw)
    # one update each way for the reconnect, nothing echoed: local 1 (app) + 1 (app,
    # offline) + 1 (sync); cloud 1 (sync) + 1 (app, offline) + 1 (sync)
    assert local.version("dev-1") == 3
    assert cloud.version("dev-1") == 3

    # and a later change goes up once, without coming back
    local.update("dev-1", {"reported": {"temp": 7}})
    merged["reported"]["temp"] = 7
    wait_until(lambda: cloud.state("dev-1") == merged, "the change reached the cloud")
    wait_until(lambda: settled(rig), "nothing pending", rig.gw)
    assert (local.version("dev-1"), cloud.version("dev-1")) == (4, 4)
    row = next(r for r in rig.sync_status()["shadows"] if r["thing"] == "dev-1")
    assert (row["local_version"], row["cloud_version"], row["pending"]) == (4, 4, False)


def test_deletes_propagate_both_ways(rig: SyncRig, sides) -> None:
    local, cloud = sides
    rig.wait_connected()
    local.update("dev-a", {"reported": {"x": 1}})
    cloud.update("dev-b", {"desired": {"y": 2}}, name="conf")
    wait_until(lambda: cloud.state("dev-a") == {"reported": {"x": 1}}
               and local.state("dev-b", "conf") == {"desired": {"y": 2}},
               "each shadow reached the other side", rig.gw)
    # a field deleted in the cloud goes locally too
    cloud.update("dev-b", {"desired": {"y": None, "z": 1}}, name="conf")
    wait_until(lambda: local.state("dev-b", "conf") == {"desired": {"z": 1}},
               "the field delete came down", rig.gw)
    # a shadow deleted on one side, offline, goes on the other on reconnect
    rig.link.cut()
    rig.wait_connected(False)
    assert local.request("dev-a", "delete")["topic"].endswith("/accepted")
    assert cloud.request("dev-b", "delete", name="conf")["topic"].endswith("/accepted")
    rig.link.restore()
    wait_until(lambda: cloud.state("dev-a") is None and local.state("dev-b", "conf") is None,
               "both deletes carried over", rig.gw)
    wait_until(lambda: settled(rig), "nothing pending", rig.gw)


def test_a_document_too_big_for_aws_is_named_and_not_sent(tmp_path: Path) -> None:
    rig = SyncRig(tmp_path, {"things": ["dev-*"], "max_document_bytes": 200})
    try:
        local = ShadowClient(rig.gw.port, "local-app")
        rig.wait_connected()
        local.update("dev-big", {"reported": {"blob": "x" * 300}})

        def error() -> str | None:
            rows = [r for r in rig.sync_status()["shadows"] if r["thing"] == "dev-big"]
            return rows[0]["last_error"] if rows else None

        wait_until(lambda: error() is not None, "an error for dev-big", rig.gw)
        assert "thing dev-big shadow $classic" in error()
        assert "limit of 200" in error()
        cloud = ShadowClient(rig.cloud.port, "cloud-app")
        assert cloud.state("dev-big") is None
        local.close()
        cloud.close()
    finally:
        rig.close()
