"""Mutual-TLS contexts for the device, and TLS failures explained.

paho-mqtt swallows the TLS error that matters most: with TLS 1.3 the client finishes its
handshake before the gateway has checked the client certificate, so a refused certificate
arrives as an alert on the first read, which paho reports only as "connection lost". The
context made here uses a socket class that keeps that error (`ObservedContext.tls_error`)
so it can be reported for what it is.
"""

from __future__ import annotations

import os
import ssl
from typing import Any

from .errors import TLSError

_SOCKET_ERRORS_IGNORED = (ssl.SSLWantReadError, ssl.SSLWantWriteError, ssl.SSLZeroReturnError)

# Alerts a server sends when it refuses the client's certificate.
_CERT_REFUSED = {
    "TLSV1_ALERT_UNKNOWN_CA": "issued by a CA the gateway does not trust",
    "SSLV3_ALERT_BAD_CERTIFICATE": "bad certificate",
    "SSLV3_ALERT_CERTIFICATE_REVOKED": "revoked",
    "SSLV3_ALERT_CERTIFICATE_EXPIRED": "expired",
    "SSLV3_ALERT_CERTIFICATE_UNKNOWN": "unknown to the gateway",
    "SSLV3_ALERT_UNSUPPORTED_CERTIFICATE": "unsupported certificate",
    "TLSV13_ALERT_CERTIFICATE_REQUIRED": "no certificate was sent",
    "TLSV1_ALERT_ACCESS_DENIED": "access denied",
}


class _ObservedSocket(ssl.SSLSocket):
    def recv(self, buflen: int = 1024, flags: int = 0) -> bytes:
        try:
            return super().recv(buflen, flags)
        except _SOCKET_ERRORS_IGNORED:
            raise
        except ssl.SSLError as exc:
            _remember(self.context, exc)
            raise

    def send(self, data: Any, flags: int = 0) -> int:
        try:
            return super().send(data, flags)
        except _SOCKET_ERRORS_IGNORED:
            raise
        except ssl.SSLError as exc:
            _remember(self.context, exc)
            raise


def _remember(context: ssl.SSLContext, exc: ssl.SSLError) -> None:
    if isinstance(context, ObservedContext) and context.tls_error is None:
        context.tls_error = exc


class ObservedContext(ssl.SSLContext):
    """An SSLContext whose sockets remember the first TLS error after the handshake. It
    also keeps the socket it wrapped last, which paho leaves open when the handshake fails,
    so the owner can close it."""

    sslsocket_class = _ObservedSocket
    tls_error: ssl.SSLError | None = None
    last_socket: ssl.SSLSocket | None = None

    def wrap_socket(self, sock: Any, *args: Any, **kwargs: Any) -> ssl.SSLSocket:
        wrapped = super().wrap_socket(sock, *args, **kwargs)
        self.last_socket = wrapped
        return wrapped

    def close_socket(self) -> None:
        """Close the last wrapped socket (a no-op if paho already closed it)."""
        if self.last_socket is not None:
            try:
                self.last_socket.close()
            except OSError:
                pass


def client_context(cert: str | os.PathLike[str], key: str | os.PathLike[str], *,
                   ca: str | os.PathLike[str] | None = None,
                   cadata: str | None = None) -> ObservedContext:
    """A TLS 1.2+ client context presenting this device's certificate, trusting `ca` (a
    PEM file) and/or `cadata` (PEM text), else the system's trust store; host names are
    checked. Raises TLSError when a file does not load."""
    ctx = ObservedContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.check_hostname = True
    ctx.verify_mode = ssl.CERT_REQUIRED
    try:
        if ca is None and cadata is None:
            ctx.load_default_certs(ssl.Purpose.SERVER_AUTH)
        if ca is not None:
            ctx.load_verify_locations(cafile=os.fspath(ca))
        if cadata is not None:
            ctx.load_verify_locations(cadata=cadata)
    except FileNotFoundError:
        raise TLSError(f"CA file {os.fspath(ca)} does not exist (on the gateway, "
                       "`lichen ca show > ca.pem` writes it)") from None
    except (ssl.SSLError, ValueError) as exc:
        which = f"CA file {os.fspath(ca)}" if ca is not None else "the discovered CA"
        raise TLSError(f"{which} is not a PEM certificate: {_reason(exc)}") from None
    for label, path in (("certificate", cert), ("key", key)):
        if not os.path.exists(path):
            raise TLSError(f"device {label} file {os.fspath(path)} does not exist (on the "
                           "gateway, `lichen device add THING --cert-out CRT --key-out KEY` "
                           "writes both)")
    try:
        ctx.load_cert_chain(os.fspath(cert), os.fspath(key))
    except PermissionError as exc:
        raise TLSError(f"cannot read the device certificate or key: {exc}") from None
    except ssl.SSLError as exc:
        if "KEY_VALUES_MISMATCH" in str(exc):
            raise TLSError(f"the key {os.fspath(key)} does not belong to the certificate "
                           f"{os.fspath(cert)}") from None
        raise TLSError(f"cannot load the device certificate {os.fspath(cert)} and key "
                       f"{os.fspath(key)}: {_reason(exc)} (PEM files expected)") from None
    return ctx


def _reason(exc: BaseException) -> str:
    reason = getattr(exc, "reason", None)
    return str(reason) if reason else str(exc)


def refused_certificate(exc: BaseException) -> str | None:
    """Why the gateway refused our certificate, if `exc` is that alert; else None."""
    if isinstance(exc, ssl.SSLError):
        return _CERT_REFUSED.get(getattr(exc, "reason", None) or "")
    return None


def explain(exc: BaseException, where: str) -> TLSError:
    """A TLSError that says what a TLS failure talking to `where` means, and what to do."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        message = exc.verify_message or _reason(exc)
        if "hostname" in message.lower() or "ip address mismatch" in message.lower():
            return TLSError(f"the gateway's certificate at {where} does not name that host "
                            f"({message}): connect by a name or address the certificate "
                            "has (the gateway adds more with auth.server_names)")
        return TLSError(f"the gateway's certificate at {where} is not trusted ({message}): "
                        "pass the CA that signed it as ca= / --ca (`lichen ca show` on the "
                        "gateway), or use discovery, which supplies it")
    why = refused_certificate(exc)
    if why is not None:
        return TLSError(f"the gateway at {where} refused this device's certificate ({why}): "
                        "is the thing enrolled on this gateway (`lichen device add` or "
                        "`lichen device register`), its certificate active, and the key the "
                        "one that goes with it?")
    reason = _reason(exc)
    if reason in ("WRONG_VERSION_NUMBER", "RECORD_LAYER_FAILURE", "PACKET_LENGTH_TOO_LONG",
                  "UNEXPECTED_EOF_WHILE_READING"):
        return TLSError(f"no TLS at {where} ({reason}): is this the gateway's mutual-TLS "
                        "port (8883 by default), not its plaintext one?")
    return TLSError(f"TLS with {where} failed: {reason}")
