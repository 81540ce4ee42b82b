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

import logging

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
