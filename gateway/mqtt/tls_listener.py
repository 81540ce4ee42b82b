"""TLS listener: accept TCP, run the handshake ourselves, then hand the connection to MQTT.

Doing the handshake explicitly (instead of create_server(ssl=...)) lets every refused
handshake be logged with the peer and OpenSSL's reason (expired, unknown CA, no certificate),
and lets the SSL context be swapped at run time (new trust anchors, renewed server
certificate) for new connections.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Callable
from typing import TYPE_CHECKING

from .connection import Connection

if TYPE_CHECKING:
    from .broker import Broker

log = logging.getLogger("lichen.mqtt.tls")

HANDSHAKE_TIMEOUT = 10.0


def describe_tls_error(exc: BaseException) -> str:
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"client certificate rejected: {exc.verify_message}"
    if isinstance(exc, ssl.SSLError):
        reason = exc.reason or str(exc)
        if reason in ("PEER_DID_NOT_RETURN_A_CERTIFICATE", "TLSV13_ALERT_CERTIFICATE_REQUIRED"):
            return "no client certificate presented"
        return f"TLS error: {reason}"
    if isinstance(exc, TimeoutError | asyncio.TimeoutError):
        return "TLS handshake timed out"
    return f"connection failed during TLS handshake: {exc}"


class TLSAcceptor(asyncio.Protocol):
    """Owns a freshly accepted TCP connection until its TLS handshake is done."""

    def __init__(self, broker: Broker, listener: str,
                 context: Callable[[], ssl.SSLContext]) -> None:
        self.broker = broker
        self.listener = listener
        self.context = context
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        if len(self.broker.connections) >= self.broker.limits.max_connections:
            self.broker.stats.connections_refused += 1
            transport.abort()
            return
        self.broker.loop.create_task(self._handshake())

    def data_received(self, data: bytes) -> None:  # pragma: no cover - start_tls owns reads
        pass

    def connection_lost(self, exc: Exception | None) -> None:
        pass

    async def _handshake(self) -> None:
        transport = self.transport
        peer = transport.get_extra_info("peername")
        conn = Connection(self.broker, self.listener)
        try:
            tls_transport = await self.broker.loop.start_tls(
                transport, conn, self.context(), server_side=True,
                ssl_handshake_timeout=HANDSHAKE_TIMEOUT)
        except (ssl.SSLError, OSError, ConnectionError, TimeoutError) as exc:
            self.broker.stats.tls_handshake_failures += 1
            log.warning("refused TLS connection from %s on %s: %s", _peer(peer), self.listener,
                        describe_tls_error(exc))
            transport.abort()
            return
        if tls_transport is None:
            transport.abort()
            return
        conn.connection_made(tls_transport)


def _peer(peer) -> str:
    if isinstance(peer, tuple) and len(peer) >= 2:
        return f"{peer[0]}:{peer[1]}"
    return str(peer)
