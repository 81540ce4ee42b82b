"""The in-process API (`ShadowService.get/update/delete/list`) that local functions and cloud
sync use, on a real in-process broker and a real SQLite store."""

from __future__ import annotations

import asyncio
import json

import pytest

from gateway.mqtt.broker import Broker
from gateway.shadow.document import ShadowError
from gateway.shadow.service import ShadowService
from gateway.shadow.store import ShadowStore


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 20))


async def started(tmp_path):
    broker = Broker()
    await broker.start()
    store = ShadowStore(tmp_path / "shadows.sqlite3").open()
    service = ShadowService(broker, store)
    await service.start()
    seen: list[tuple[str, dict]] = []
    broker.subscribe_callback("$aws/things/#", lambda m: seen.append(
        (m.topic, json.loads(m.payload) if m.payload else None)))
    return broker, service, seen


def test_update_get_delete_list_and_what_they_announce(tmp_path):
    async def scenario():
        broker, svc, seen = await started(tmp_path)
        accepted = await svc.update("lamp", {"state": {"desired": {"on": True}}})
        assert accepted["version"] == 1 and accepted["state"] == {"desired": {"on": True}}
        assert [t for t, _ in seen] == ["$aws/things/lamp/shadow/update/accepted",
                                        "$aws/things/lamp/shadow/update/delta",
                                        "$aws/things/lamp/shadow/update/documents"]
        assert seen[1][1]["state"] == {"on": True}
        seen.clear()
        await svc.update("lamp", '{"state": {"reported": {"level": 3}}}', name="dimmer")
        assert [t for t, _ in seen] == [
            "$aws/things/lamp/shadow/name/dimmer/update/accepted",
            "$aws/things/lamp/shadow/name/dimmer/update/documents"]
        doc = await svc.get("lamp")
        assert doc["state"]["delta"] == {"on": True} and doc["version"] == 1
        assert await svc.list("lamp") == ["dimmer"]
        seen.clear()
        assert (await svc.delete("lamp", "dimmer"))["version"] == 1
        assert seen[0][0] == "$aws/things/lamp/shadow/name/dimmer/delete/accepted"
        assert await svc.list("lamp") == []
        history = await svc.history("lamp")
        assert [h["version"] for h in history] == [1]
        assert history[0]["state"] == {"desired": {"on": True}}
        await svc.stop()
        await broker.stop()

    run(scenario())


def test_errors_raise_and_publish_nothing(tmp_path):
    async def scenario():
        broker, svc, seen = await started(tmp_path)
        with pytest.raises(ShadowError) as info:
            await svc.get("nobody")
        assert info.value.code == 404
        with pytest.raises(ShadowError) as info:
            await svc.update("lamp", {"desired": {"on": True}})  # no "state"
        assert (info.value.code, info.value.message) == (400, "Missing required node: state")
        with pytest.raises(ShadowError) as info:
            await svc.update("bad name", {"state": {}})
        assert info.value.code == 400
        await svc.update("lamp", {"state": {"reported": {"a": 1}}})
        with pytest.raises(ShadowError) as info:
            await svc.update("lamp", {"state": {"reported": {"a": 2}}, "version": 7})
        assert info.value.code == 409
        assert not [t for t, _ in seen if t.endswith("/rejected")]
        await svc.stop()
        await broker.stop()

    run(scenario())


def test_stop_answers_requests_already_taken(tmp_path):
    async def scenario():
        broker, svc, _ = await started(tmp_path)
        pending = [asyncio.ensure_future(svc.update("t", {"state": {"reported": {"n": i}}}))
                   for i in range(50)]
        await asyncio.sleep(0)
        await svc.stop()
        versions = sorted([(await p)["version"] for p in pending])
        assert versions == list(range(1, 51))
        await broker.stop()

    run(scenario())
