"""The server side of one TLS connection over memory BIOs, with no I/O of its own: feed it
what the socket received, send what `pending()` returns. Shared by the MQTT TLS listener and
the discovery endpoint, which drive the handshake themselves to log every refusal."""

from __future__ import annotations

import contextlib
import ssl
from typing import NamedTuple

READ_SIZE = 256 * 1024


class TLSInput(NamedTuple):
    handshake_done: bool      # the handshake completed with this input
    plaintext: list[bytes]    # application data received
    closed: bool              # the peer sent close_notify


def describe_tls_error(exc: BaseException) -> str:
    """OpenSSL's reason for a failed handshake or record, in words for a log line."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"client certificate rejected: {exc.verify_message}"
    if isinstance(exc, ssl.SSLError):
        reason = exc.reason or str(exc)
        if reason in ("PEER_DID_NOT_RETURN_A_CERTIFICATE", "TLSV13_ALERT_CERTIFICATE_REQUIRED"):
            return "no client certificate presented"
        return f"TLS error: {reason}"
    return f"connection failed during TLS handshake: {exc!r}"


class ServerTLS:
    def __init__(self, context: ssl.SSLContext) -> None:
        self.incoming = ssl.MemoryBIO()
        self.outgoing = ssl.MemoryBIO()
        self.sslobj = context.wrap_bio(self.incoming, self.outgoing, server_side=True)
        self.handshaking = True

    def receive(self, data: bytes, limit: int | None = None) -> TLSInput:
        """Take bytes from the peer. Raises ssl.SSLError (or OSError) when the handshake or
        a record fails. Stops reading plaintext past `limit` bytes."""
        self.incoming.write(data)
        done = False
        if self.handshaking:
            try:
                self.sslobj.do_handshake()
            except ssl.SSLWantReadError:
                return TLSInput(False, [], False)
            self.handshaking = False
            done = True
        chunks: list[bytes] = []
        total = 0
        while limit is None or total <= limit:
            try:
                chunk = self.sslobj.read(READ_SIZE)
            except ssl.SSLWantReadError:
                break
            except ssl.SSLZeroReturnError:
                return TLSInput(done, chunks, True)
            if not chunk:
                break
            chunks.append(chunk)
            total += len(chunk)
        return TLSInput(done, chunks, False)

    def write(self, data: bytes) -> None:
        self.sslobj.write(data)

    def pending(self) -> bytes:
        """TLS records waiting to go to the peer."""
        return self.outgoing.read()

    def unwrap(self) -> None:
        """Send close_notify (its bytes come out of `pending()`)."""
        with contextlib.suppress(ssl.SSLError):
            self.sslobj.unwrap()
