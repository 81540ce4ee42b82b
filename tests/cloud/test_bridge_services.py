"""What other components (deployment Jobs, shadow sync) use on the cloud connection: state
listeners, cloud subscriptions of their own, and publishes outside the spool, with the real
awsiotsdk client against the mosquitto stand-in."""

from __future__ import annotations

import asyncio
from pathlib import Path

from gateway.cloud.bridge import CloudBridge
from gateway.cloud.standin import Standin
from gateway.config import config_from_dict
from gateway.mqtt.broker import Broker
from tests.cloud.conftest import Observer

WAIT = 20.0


async def wait_until(predicate, timeout: float = WAIT) -> bool:
    deadline = asyncio.get_running_loop().time() + timeout
    while asyncio.get_running_loop().time() < deadline:
        if predicate():
            return True
        await asyncio.sleep(0.05)
    return False


def test_components_attach_to_the_cloud_connection(tmp_path: Path, standin: Standin) -> None:
    cfg = config_from_dict({"cloud": standin.cloud_config()})
    observer = Observer(standin, "svc/+/out")

    async def scenario() -> None:
        broker = Broker(cfg.mqtt)
        await broker.start()
        bridge = CloudBridge(broker, cfg, tmp_path)
        states: list[str] = []
        received: list[tuple[str, bytes]] = []
        bridge.add_state_listener(states.append)
        bridge.subscribe_cloud("svc/+/in", 1, lambda m: received.append((m.topic, m.payload)))
        # before the connection: refused at once, nothing queued
        assert await bridge.publish_direct("svc/a/out", b"early") == (False, "not connected")
        await bridge.start()
        try:
            assert await wait_until(lambda: "connected" in states), states
            ok, why = await asyncio.wait_for(bridge.publish_direct("svc/a/out", b"hi"), WAIT)
            assert ok, why
            assert await wait_until(lambda: ("svc/a/out", b"hi") in observer.messages)
            await asyncio.get_running_loop().run_in_executor(
                None, observer.publish, "svc/a/in", b"to the component")
            assert await wait_until(lambda: received == [("svc/a/in", b"to the component")])
            assert bridge.spool.count == 0   # nothing of this went through the spool
        finally:
            await bridge.stop()
            await broker.stop()
        assert states[-1] == "stopped"

    try:
        asyncio.run(scenario())
    finally:
        observer.close()
