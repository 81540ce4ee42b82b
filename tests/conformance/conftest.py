"""Fixtures for the conformance suite: client factories bound to `any_broker`.

Every test here runs against Lichen and (when installed) mosquitto, through the
`any_broker` fixture of tests/conftest.py. Clients made by the factories below are closed
at teardown, before the broker is stopped.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from .helpers import V5, V311, RawClient, SyncClient, unique_topic


@pytest.fixture(params=[V311, V5], ids=["v311", "v5"])
def version(request: pytest.FixtureRequest) -> int:
    """The MQTT protocol version a test is run with, for tests meaningful in both."""
    return request.param


@pytest.fixture
def topic() -> str:
    """A topic prefix unique to this test."""
    return unique_topic()


@pytest.fixture
def mqtt(any_broker) -> Iterator[Callable[..., SyncClient]]:
    """Factory: mqtt(version, **SyncClient options) -> a connected SyncClient.

    Pass connect=False to get it unconnected (to call .connect() yourself and look at the
    CONNACK, e.g. for a rejection).
    """
    made: list[SyncClient] = []

    def make(version: int = V5, *, connect: bool = True, **kwargs: Any) -> SyncClient:
        client = SyncClient(any_broker.host, any_broker.port, version=version, **kwargs)
        made.append(client)
        if connect:
            ack = client.connect()
            assert ack.reason_code == 0, f"CONNACK refused: {ack}"
        return client

    yield make
    for client in made:
        client.close()


@pytest.fixture
def raw(any_broker) -> Iterator[Callable[..., RawClient]]:
    """Factory: raw(version) -> an unconnected RawClient socket to the broker."""
    made: list[RawClient] = []

    def make(version: int = V5) -> RawClient:
        client = RawClient(any_broker.host, any_broker.port, version)
        made.append(client)
        return client

    yield make
    for client in made:
        client.close()


@pytest.fixture
def mosquitto_deviates(request: pytest.FixtureRequest, any_broker) -> Callable[[str], None]:
    """Call with a reason to mark this case xfail when it runs against mosquitto.

    For points where mosquitto 2.0 departs from the specification; the Lichen case of the
    same test is left alone.
    """

    def mark(reason: str) -> None:
        if any_broker.name == "mosquitto":
            request.applymarker(pytest.mark.xfail(reason=f"mosquitto: {reason}", strict=True))

    return mark
