"""The asyncio API against a real gateway: connect through discovery, publish and await the
PUBACK, messages and deltas into the event loop (iterators and async callbacks)."""

from __future__ import annotations

import asyncio

import pytest

from device_sdk import ShadowNotFound
from device_sdk.aio import AsyncDeviceClient
from tests.device_sdk.conftest import FAST, WAIT


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 3 * WAIT))


def test_publish_subscribe_and_shadow(gateway):
    creds = gateway.enrol("async-1")

    async def scenario():
        async with AsyncDeviceClient(creds.thing, creds.cert, creds.key, ca=creds.ca,
                                     discover=gateway.discovery, backoff=FAST) as client:
            await client.connect(WAIT)
            assert client.connected

            # an async iterator of messages
            async with await client.subscribe("things/async-1/echo/+") as messages:
                delivery = await client.publish("things/async-1/echo/a", {"n": 1}, wait=True)
                assert delivery.delivered
                message = await asyncio.wait_for(messages.get(), WAIT)
                assert (message.topic, message.json()) == ("things/async-1/echo/a", {"n": 1})

            # an async callback, run in this loop
            loop = asyncio.get_running_loop()
            got: asyncio.Future = loop.create_future()

            async def on_command(msg):
                assert asyncio.get_running_loop() is loop
                if not got.done():
                    got.set_result(msg.text())

            await client.subscribe("things/async-1/cmd", on_command)
            await client.publish("things/async-1/cmd", "reboot")
            assert await asyncio.wait_for(got, WAIT) == "reboot"
            assert await client.flush(WAIT)

            shadow = client.shadow()
            with pytest.raises(ShadowNotFound):
                await shadow.get()
            # the iterator subscribes in the background; were it late for the live delta,
            # the catch-up it does on subscribing would hand the delta over instead
            deltas = shadow.deltas()
            first = asyncio.ensure_future(deltas.__anext__())
            assert (await shadow.report({"on": False})).version == 1
            await shadow.desire({"on": True})
            delta = await asyncio.wait_for(first, WAIT)
            assert delta.state == {"on": True} and delta.version == 2
            await deltas.aclose()
            assert (await shadow.get()).delta == {"on": True}
            accepted = await shadow.modify(lambda doc: {"reported": doc.delta})
            assert accepted.version == 3 and (await shadow.get()).delta == {}

    run(scenario())


def test_async_delta_callback(gateway):
    creds = gateway.enrol("async-2")

    async def scenario():
        client = AsyncDeviceClient(creds.thing, creds.cert, creds.key, ca=creds.ca,
                                   host="127.0.0.1", port=gateway.tls_port, backoff=FAST)
        try:
            await client.connect(WAIT)
            shadow = client.shadow("settings")
            seen: asyncio.Queue = asyncio.Queue()

            async def on_delta(delta):
                await seen.put(delta.state)

            await shadow.on_delta(on_delta)
            await shadow.desire({"interval": 5})
            assert await asyncio.wait_for(seen.get(), WAIT) == {"interval": 5}
        finally:
            await client.close()

    run(scenario())
