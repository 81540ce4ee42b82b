"""The broker's authorisation interface. The certificate-auth component fills it in;
the default allows everything, which the gateway uses only on loopback listeners."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from . import reason_codes as rc


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


class AuthHooks:
    """Allow-all hooks. Subclass and set `allow_all = False` to have the broker call them."""

    allow_all = True

    def authenticate(self, info: ClientInfo, password: bytes | None) -> int:
        """Return 0 to accept the CONNECT or an MQTT 5 CONNACK reason code to refuse it."""
        return rc.SUCCESS

    def can_publish(self, info: ClientInfo, topic: str) -> bool:
        return True

    def can_subscribe(self, info: ClientInfo, topic_filter: str) -> bool:
        return True

    def can_receive(self, info: ClientInfo, topic: str) -> bool:
        return True
