"""Lichen device SDK: how a sensor or a small Linux device talks to its gateway.

    from device_sdk import DeviceClient

    client = DeviceClient("sensor-1", "sensor-1.crt", "sensor-1.key", ca="ca.pem",
                          discover="gateway.local:8443", offline_queue="queue.sqlite3")
    client.connect()
    client.publish("things/sensor-1/temperature", {"celsius": 21.5})

Mutual TLS, discovery, reconnecting with backoff, an offline queue that survives outages
and restarts, and AWS IoT Device Shadows (`client.shadow()`); `device_sdk.aio` has the same
for asyncio. See the README's "Device SDK" section.
"""

from __future__ import annotations

import importlib
import logging
from typing import TYPE_CHECKING, Any

# Where each public name lives. Loaded on first use, so importing a pure module
# (device_sdk.names, device_sdk.topic_rules) costs neither paho nor the client: the gateway
# imports those, and a device may check a name before it has a connection.
_EXPORTS = {
    "Backoff": "backoff",
    "DeviceClient": "client",
    "Discovered": "discovery", "Endpoint": "discovery", "discover": "discovery",
    "ConnectError": "errors", "ConnectRefused": "errors", "DeviceSDKError": "errors",
    "DiscoveryError": "errors", "GatewayUnreachable": "errors", "NotConnected": "errors",
    "PublishRefused": "errors", "QueueError": "errors", "QueueFull": "errors",
    "QueueLocked": "errors", "RequestTimeout": "errors", "ShadowNotFound": "errors",
    "ShadowRejected": "errors", "ShadowTimeout": "errors", "ShadowVersionConflict": "errors",
    "SubscribeRefused": "errors", "TLSError": "errors",
    "Delivery": "handles", "Subscription": "handles",
    "Message": "message",
    "OfflineQueue": "offline_queue",
    "MQTT5": "session", "MQTT311": "session",
    "Shadow": "shadow",
    "ShadowDelta": "shadow_protocol", "ShadowDocument": "shadow_protocol",
    "ShadowUpdated": "shadow_protocol", "UpdateAccepted": "shadow_protocol",
}

if TYPE_CHECKING:  # what type checkers and IDEs see; at run time __getattr__ loads them
    from .backoff import Backoff
    from .client import DeviceClient
    from .discovery import Discovered, Endpoint, discover
    from .errors import (
        ConnectError,
        ConnectRefused,
        DeviceSDKError,
        DiscoveryError,
        GatewayUnreachable,
        NotConnected,
        PublishRefused,
        QueueError,
        QueueFull,
        QueueLocked,
        RequestTimeout,
        ShadowNotFound,
        ShadowRejected,
        ShadowTimeout,
        ShadowVersionConflict,
        SubscribeRefused,
        TLSError,
    )
    from .handles import Delivery, Subscription
    from .message import Message
    from .offline_queue import OfflineQueue
    from .session import MQTT5, MQTT311
    from .shadow import Shadow
    from .shadow_protocol import ShadowDelta, ShadowDocument, ShadowUpdated, UpdateAccepted


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value  # once loaded, a plain attribute
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))


# A library logs; the application decides where that goes (logging.basicConfig, say).
logging.getLogger("device_sdk").addHandler(logging.NullHandler())

__all__ = [
    "MQTT5", "MQTT311", "Backoff", "ConnectError", "ConnectRefused", "Delivery",
    "DeviceClient", "DeviceSDKError", "Discovered", "DiscoveryError", "Endpoint",
    "GatewayUnreachable", "Message", "NotConnected", "OfflineQueue", "PublishRefused",
    "QueueError", "QueueFull", "QueueLocked", "RequestTimeout", "Shadow", "ShadowDelta",
    "ShadowDocument", "ShadowNotFound", "ShadowRejected", "ShadowTimeout", "ShadowUpdated",
    "ShadowVersionConflict", "SubscribeRefused", "Subscription", "TLSError",
    "UpdateAccepted", "discover",
]
