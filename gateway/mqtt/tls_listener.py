"""TLS for MQTT connections, driven by hand over ssl.MemoryBIO.

The handshake is ours rather than the event loop's, so every refused handshake is logged
with the peer and OpenSSL's reason (expired, unknown CA, no certificate), the SSL context can
be swapped at run time (new trust anchors, a renewed server certificate) for new connections,
and the MQTT Connection above sees an ordinary transport.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ..tls_session import ServerTLS, describe_tls_error
from .connection import Connection

if TYPE_CHECKING:
    from .broker import Broker

log = logging.getLogger("lichen.mqtt.tls")

HANDSHAKE_TIMEOUT = 10.0


class TLSProtocol(asyncio.Protocol):
    """Decrypts for, and encrypts from, one MQTT Connection."""

    def __init__(self, broker: Broker, listener: str,
                 context: Callable[[], ssl.SSLContext]) -> None:
        self.broker = broker
        self.listener = listener
        self.context = context
        self.transport: asyncio.Transport | None = None
        self.inner = Connection(broker, listener)
        self.handshaking = True
        self.closed = False
        self._timer: asyncio.TimerHandle | None = None
        self.peer: Any = None

    # ------------------------------------------------------------------ from the socket

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.peer = transport.get_extra_info("peername")
        if len(self.broker.connections) >= self.broker.limits.max_connections:
            self.broker.stats.connections_refused += 1
            self.closed = True
            transport.abort()
            return
        self.tls = ServerTLS(self.context())
        self.sslobj = self.tls.sslobj
        self._timer = self.broker.loop.call_later(HANDSHAKE_TIMEOUT, self._handshake_timeout)

    def data_received(self, data: bytes) -> None:
        if self.closed:
            return
        try:
            received = self.tls.receive(data)
        except (ssl.SSLError, OSError) as exc:
            self._send_pending()
            if self.handshaking:
                self._refuse(describe_tls_error(exc))
            else:
                log.info("TLS error from %s: %s", self.peer, describe_tls_error(exc))
                self._close()
            return
        self._send_pending()
        if received.handshake_done:
            self.handshaking = False
            self._timer.cancel()
            self.inner.connection_made(_TLSTransport(self))
        chunks = received.plaintext
        if chunks:
            self.inner.data_received(chunks[0] if len(chunks) == 1 else b"".join(chunks))
        if received.closed:
            self._close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self._timer is not None:
            self._timer.cancel()
        if not self.handshaking:
            self.inner.connection_lost(exc)

    def pause_writing(self) -> None:
        if not self.handshaking:
            self.inner.pause_writing()

    def resume_writing(self) -> None:
        if not self.handshaking:
            self.inner.resume_writing()

    # ------------------------------------------------------------------ helpers

    def _send_pending(self) -> None:
        pending = self.tls.pending()
        if pending and not self.transport.is_closing():
            self.transport.write(pending)

    def _refuse(self, why: str) -> None:
        self.broker.stats.tls_handshake_failures += 1
        log.warning("refused TLS connection from %s on %s: %s", _peer(self.peer),
                    self.listener, why)
        self.closed = True
        self.transport.close()

    def _handshake_timeout(self) -> None:
        if self.handshaking and not self.closed:
            self._refuse(f"no TLS handshake within {HANDSHAKE_TIMEOUT:.0f}s")

    def _close(self) -> None:
        if not self.closed:
            self.tls.unwrap()
            self._send_pending()
            self.closed = True
            self.transport.close()

    def encrypt(self, data: bytes) -> None:
        if self.closed:
            return
        self.tls.write(data)
        self._send_pending()


class _TLSTransport(asyncio.Transport):
    """What the MQTT Connection writes to: plaintext in, TLS records out."""

    def __init__(self, tls: TLSProtocol) -> None:
        super().__init__()
        self._tls = tls

    def write(self, data: bytes) -> None:
        self._tls.encrypt(data)

    def close(self) -> None:
        self._tls._close()

    def abort(self) -> None:
        self._tls.closed = True
        self._tls.transport.abort()

    def is_closing(self) -> bool:
        return self._tls.closed or self._tls.transport.is_closing()

    def get_write_buffer_size(self) -> int:
        return self._tls.transport.get_write_buffer_size()

    def pause_reading(self) -> None:
        self._tls.transport.pause_reading()

    def resume_reading(self) -> None:
        self._tls.transport.resume_reading()

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        sslobj = self._tls.sslobj
        if name == "ssl_object":
            return sslobj
        if name == "sslcontext":
            return sslobj.context
        if name == "peercert":
            return sslobj.getpeercert()
        if name == "cipher":
            return sslobj.cipher()
        return self._tls.transport.get_extra_info(name, default)


def _peer(peer: Any) -> str:
    if isinstance(peer, tuple) and len(peer) >= 2:
        return f"{peer[0]}:{peer[1]}"
    return str(peer)
