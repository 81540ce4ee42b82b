"""The gateway's local certificate authority and its own server certificate, on disk.

Layout under STATE_DIR/pki/: ca.key (0600) and ca.crt, server.key (0600) and server.crt.
The CA is made once (by `lichen init` or the first `lichen run`); the server certificate
is re-issued when it nears expiry or when the host's names or addresses change.

Half a CA (ca.crt without ca.key, or the reverse) is refused, never replaced: a new CA
would silently lock out every device enrolled with the old one. `lichen ca reset` is the
explicit way to start over.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509

from .pki import (
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
from .pki_files import (  # noqa: F401 - RENEW_BEFORE, host_names re-exported
    RENEW_BEFORE,
    CertificateError,
    IncompleteCAError,
    PKIFiles,
    host_names,
)

log = logging.getLogger("lichen.auth.ca")

CA_DAYS = 3650
SERVER_DAYS = 397
DEVICE_DAYS = 3650
MAX_DEVICE_DAYS = 36500   # 100 years: far past any device's life, well inside X.509's 9999


def check_validity_days(days: int, what: str = "days") -> None:
    """1..MAX_DEVICE_DAYS: 0 would issue an expired certificate, and a huge number overflows
    the certificate's date."""
    if isinstance(days, bool) or not isinstance(days, int) \
            or not 1 <= days <= MAX_DEVICE_DAYS:
        raise CertificateError(f"{what}: must be a whole number of days from 1 to "
                               f"{MAX_DEVICE_DAYS}, got {days!r}")


@dataclass
class IssuedCertificate:
    certificate: x509.Certificate
    private_key: PrivateKey | None  # None when issued from a CSR

    @property
    def pem(self) -> bytes:
        return cert_pem(self.certificate)


class LocalCA(PKIFiles):
    """The CA's key and certificate, loaded with `cryptography`, and what is made with them."""

    def __init__(self, pki_dir: Path) -> None:
        super().__init__(pki_dir)
        self._key: PrivateKey | None = None
        self._cert: x509.Certificate | None = None

    def ensure(self, key_type: str = "ec", name: str | None = None) -> bool:
        """Create the CA if there is none; True when it was created now. Half a CA is
        refused (IncompleteCAError), never replaced."""
        if self.check():
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
        """Read the key and certificate, and check that they belong together."""
        if not self.check():
            raise CertificateError(f"no CA in {self.dir}: run `lichen init` first")
        key = load_key(self.ca_key_path)
        cert = self._read_certificate()
        if key.public_key().public_numbers() != cert.public_key().public_numbers():
            raise CertificateError(f"{self.ca_cert_path} is not the certificate of "
                                   f"{self.ca_key_path} (restore the pair that belongs "
                                   "together)")
        self._key, self._cert = key, cert

    def _read_certificate(self) -> x509.Certificate:
        return load_cert_pem(self.ca_cert_path.read_bytes(), str(self.ca_cert_path))

    @property
    def certificate(self) -> x509.Certificate:
        """The CA certificate. Read on its own (not the key): showing it needs no access to
        the key, nor write access to anything."""
        if self._cert is None:
            if not self.check():
                raise CertificateError(f"no CA in {self.dir}: run `lichen init` first")
            self._cert = self._read_certificate()
        return self._cert

    @property
    def key(self) -> PrivateKey:
        if self._key is None:
            self.load()
        return self._key

    def set_aside(self) -> Path | None:
        """Move the CA's and server's files (whatever of them is there) into
        pki/replaced-TIMESTAMP/, so that ensure() makes a new CA; that folder, or None when
        there was nothing to move."""
        files = [p for p in (self.ca_key_path, self.ca_cert_path, self.server_key_path,
                             self.server_cert_path, self.sidecar_path) if p.exists()]
        if not files:
            return None
        stamp = time.strftime("%Y%m%dT%H%M%S")
        aside = self.dir / f"replaced-{stamp}"
        n = 1
        while aside.exists():
            n += 1
            aside = self.dir / f"replaced-{stamp}-{n}"
        aside.mkdir(mode=0o700)
        for path in files:
            os.replace(path, aside / path.name)
        self._key = self._cert = None
        return aside

    def pem(self) -> bytes:
        return cert_pem(self.certificate)

    def issue_device(self, thing_name: str, public_key=None,
                     days: int = DEVICE_DAYS, key_type: str = "ec") -> IssuedCertificate:
        """A client certificate with CN = thing name, for a new key pair or a given key."""
        check_validity_days(days)
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
                if self.server_info() is None:  # e.g. a state dir from before the sidecar
                    self.write_server_info(current.not_valid_after_utc, san_names(current))
                return False
        key = new_key("ec")
        cert = build_certificate(names[0] if names[0] != "localhost" else socket.gethostname()
                                 or "localhost", key.public_key(), self.certificate, self.key,
                                 SERVER_DAYS, server_names=names)
        write_private(self.server_key_path, key_pem(key))
        write_public(self.server_cert_path, cert_pem(cert))
        self.write_server_info(cert.not_valid_after_utc, san_names(cert))
        log.info("issued gateway server certificate for %s (valid to %s)", ", ".join(names),
                 cert.not_valid_after_utc.date())
        return True
