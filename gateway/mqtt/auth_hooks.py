"""The broker's authorisation interface.

`AuthHooks.authenticate` runs once per CONNECT; it may refuse the client, and it sets
`info.permissions` to an object that answers publish/subscribe/receive checks for that one
connection (None means unrestricted). The broker calls those checks on the hot path, so an
implementation should cache its decisions. The default hooks accept everyone, unrestricted:
the gateway uses them only on loopback listeners.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

from . import reason_codes as rc


class Permissions(Protocol):
    def can_publish(self, topic: str) -> bool: ...

    def can_subscribe(self, topic_filter: str) -> bool: ...

    def can_receive(self, topic: str) -> bool: ...


@dataclass(slots=True)
class ClientInfo:
    """Who is on a connection, as known after CONNECT."""

    client_id: str
    username: str | None = None
    protocol_level: int = 4
    listener: str = "tcp"
    peer_address: Any = None
    peer_certificate: dict | None = None       # ssl.SSLSocket.getpeercert() form
    peer_certificate_der: bytes | None = None
    thing_name: str | None = None
    attributes: dict = field(default_factory=dict)
    permissions: Permissions | None = None     # None: everything allowed
    certificate_id: str | None = None


class AuthHooks:
    """Accept every client with no restrictions."""

    def authenticate(self, info: ClientInfo, password: bytes | None) -> int:
        """Return 0 to accept the CONNECT or an MQTT 5 CONNACK reason code to refuse it;
        set `info.permissions` to restrict what the client may do."""
        return rc.SUCCESS
