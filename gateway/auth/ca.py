"""The gateway's local certificate authority and its own server certificate, on disk.

Layout under STATE_DIR/pki/: ca.key (0600) and ca.crt, server.key (0600) and server.crt.
The CA is made once (by `lichen init` or the first `lichen run`); the server certificate
is re-issued when it nears expiry or when the host's names or addresses change.
"""

from __future__ import annotations

import datetime as dt
import logging
import socket
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509

from .pki import (
    CertificateError,
    PrivateKey,
    build_certificate,
    cert_pem,
    check_public_key,
    key_pem,
    load_cert_pem,
    load_key,
    new_key,
    now,
    san_names,
    write_private,
    write_public,
)

log = logging.getLogger("lichen.auth.ca")

CA_DAYS = 3650
SERVER_DAYS = 397
DEVICE_DAYS = 3650
RENEW_BEFORE = dt.timedelta(days=30)


@dataclass
class IssuedCertificate:
    certificate: x509.Certificate
    private_key: PrivateKey | None  # None when issued from a CSR

    @property
    def pem(self) -> bytes:
        return cert_pem(self.certificate)


def host_names() -> list[str]:
    """The names and addresses a device may use to reach this host."""
    names = ["localhost", "127.0.0.1", "::1"]
    hostname = socket.gethostname()
    for name in (hostname, socket.getfqdn()):
        if name and name not in names:
            names.append(name)
    try:
        for info in socket.getaddrinfo(hostname, None):
            addr = info[4][0].split("%")[0]
            if addr not in names:
                names.append(addr)
    except OSError:
        pass
    return names


class LocalCA:
    def __init__(self, pki_dir: Path) -> None:
        self.dir = Path(pki_dir)
        self.ca_key_path = self.dir / "ca.key"
        self.ca_cert_path = self.dir / "ca.crt"
        self.server_key_path = self.dir / "server.key"
        self.server_cert_path = self.dir / "server.crt"
        self._key: PrivateKey | None = None
        self._cert: x509.Certificate | None = None

    @property
    def exists(self) -> bool:
        return self.ca_cert_path.exists() and self.ca_key_path.exists()

    def ensure(self, key_type: str = "ec", name: str | None = None) -> bool:
        """Create the CA if there is none; True when it was created now."""
        if self.exists:
            self.load()
            return False
        self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        key = new_key(key_type)
        cn = name or f"Lichen local CA {socket.gethostname()}"
        cert = build_certificate(cn, key.public_key(), None, key, CA_DAYS, ca=True)
        write_private(self.ca_key_path, key_pem(key))
        write_public(self.ca_cert_path, cert_pem(cert))
        self._key, self._cert = key, cert
        log.info("created local CA %r in %s", cn, self.dir)
        return True

    def load(self) -> None:
        if not self.exists:
            raise CertificateError(f"no CA in {self.dir}: run `lichen init` first")
        self._key = load_key(self.ca_key_path)
        self._cert = load_cert_pem(self.ca_cert_path.read_bytes(), str(self.ca_cert_path))

    @property
    def certificate(self) -> x509.Certificate:
        if self._cert is None:
            self.load()
        return self._cert

    @property
    def key(self) -> PrivateKey:
        if self._key is None:
            self.load()
        return self._key

    def pem(self) -> bytes:
        return cert_pem(self.certificate)

    def issue_device(self, thing_name: str, public_key=None,
                     days: int = DEVICE_DAYS, key_type: str = "ec") -> IssuedCertificate:
        """A client certificate with CN = thing name, for a new key pair or a given key."""
        private = None
        if public_key is None:
            private = new_key(key_type)
            public_key = private.public_key()
        check_public_key(public_key)
        cert = build_certificate(thing_name, public_key, self.certificate, self.key, days,
                                 client=True)
        return IssuedCertificate(cert, private)

    def ensure_server_certificate(self, extra_names: list[str] | None = None) -> bool:
        """(Re)issue the server certificate when missing, near expiry or missing a name.
        Returns True when a new one was written."""
        names = host_names() + [n for n in (extra_names or []) if n]
        if self.server_cert_path.exists() and self.server_key_path.exists():
            try:
                current = load_cert_pem(self.server_cert_path.read_bytes())
            except CertificateError:
                current = None
            if current is not None and current.not_valid_after_utc - now() > RENEW_BEFORE \
                    and set(names) <= san_names(current) \
                    and current.issuer == self.certificate.subject:
                return False
        key = new_key("ec")
        cert = build_certificate(names[0] if names[0] != "localhost" else socket.gethostname()
                                 or "localhost", key.public_key(), self.certificate, self.key,
                                 SERVER_DAYS, server_names=names)
        write_private(self.server_key_path, key_pem(key))
        write_public(self.server_cert_path, cert_pem(cert))
        log.info("issued gateway server certificate for %s (valid to %s)", ", ".join(names),
                 cert.not_valid_after_utc.date())
        return True
