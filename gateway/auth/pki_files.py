"""The local CA's files, read without `cryptography`.

The gateway process only needs the CA's and server's PEM files (for its TLS context and
discovery) and a few facts about the server certificate (when it expires, which names it
holds). `cryptography` costs about 11 MB of RSS for the life of the process, so those facts
live in a sidecar, pki/server.json, written whenever the server certificate is (re)issued and
tied to the exact bytes of server.crt and ca.crt by their SHA-256. Anything that makes or
signs keys (ca.py, pki.py) runs in the CLI or in a short-lived `python -m
gateway.auth.prepare` child, not in the daemon.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import socket
import ssl
from dataclasses import dataclass
from pathlib import Path

from ..errors import UserError

RENEW_BEFORE = dt.timedelta(days=30)
SIDECAR = "server.json"


class CertificateError(UserError, ValueError):
    """A certificate, key or CSR that cannot be used; the message says why."""


class IncompleteCAError(CertificateError):
    """ca.crt or ca.key is missing while the other is there."""


def fingerprint_der(der: bytes) -> str:
    """SHA-256 of a DER certificate, lower-case hex (AWS IoT's certificate id)."""
    return hashlib.sha256(der).hexdigest()


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


@dataclass(frozen=True)
class ServerCertInfo:
    """What the daemon needs to know of pki/server.crt."""

    not_after: dt.datetime
    names: frozenset[str]


def _sha256_file(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


class PKIFiles:
    """Paths under STATE_DIR/pki/ and what can be read from them with the standard library."""

    def __init__(self, pki_dir: Path) -> None:
        self.dir = Path(pki_dir)
        self.ca_key_path = self.dir / "ca.key"
        self.ca_cert_path = self.dir / "ca.crt"
        self.server_key_path = self.dir / "server.key"
        self.server_cert_path = self.dir / "server.crt"
        self.sidecar_path = self.dir / SIDECAR

    @property
    def exists(self) -> bool:
        return self.ca_cert_path.exists() and self.ca_key_path.exists()

    def check(self) -> bool:
        """True when the CA is there, False when there is none at all; IncompleteCAError
        when one of its two files is missing (a new CA would lock out enrolled devices)."""
        has_key, has_cert = self.ca_key_path.exists(), self.ca_cert_path.exists()
        if has_key == has_cert:
            return has_key
        reset = f"`lichen ca reset --state-dir {self.dir.parent} --yes`"
        if has_cert:
            raise IncompleteCAError(
                f"{self.ca_key_path} is missing but {self.ca_cert_path} is there; a new CA "
                f"would lock out every enrolled device, so nothing was changed: restore "
                f"{self.ca_key_path.name} from a backup, or start over with {reset} (every "
                "device must then be enrolled again)")
        raise IncompleteCAError(
            f"{self.ca_cert_path} is missing but {self.ca_key_path} is there; nothing was "
            f"changed: restore {self.ca_cert_path.name} (every enrolled device holds a copy: "
            f"its ca.pem), or start over with {reset} (every device must then be enrolled "
            "again)")

    def ca_pem_text(self) -> str:
        return self.ca_cert_path.read_text()

    def pem(self) -> bytes:
        """The CA certificate as devices get it (ca.pem)."""
        return self.ca_cert_path.read_bytes()

    def ca_fingerprint(self) -> str:
        return fingerprint_der(ssl.PEM_cert_to_DER_cert(self.ca_pem_text()))

    # ------------------------------------------------------------------ the sidecar

    def write_server_info(self, not_after: dt.datetime, names: set[str]) -> None:
        """Record the server certificate's facts for the daemon (called where it is issued,
        or found current, by code that has `cryptography` loaded anyway)."""
        info = {"not_after": not_after.isoformat(), "names": sorted(names),
                "server_sha256": _sha256_file(self.server_cert_path),
                "ca_sha256": _sha256_file(self.ca_cert_path)}
        tmp = self.sidecar_path.with_name(SIDECAR + ".tmp")
        tmp.write_text(json.dumps(info, indent=1))
        os.replace(tmp, self.sidecar_path)

    def server_info(self) -> ServerCertInfo | None:
        """The sidecar's facts if they still describe today's server.crt and ca.crt."""
        try:
            info = json.loads(self.sidecar_path.read_text())
            if info["server_sha256"] != _sha256_file(self.server_cert_path) \
                    or info["ca_sha256"] != _sha256_file(self.ca_cert_path) \
                    or not self.server_key_path.exists():
                return None
            return ServerCertInfo(dt.datetime.fromisoformat(info["not_after"]),
                                  frozenset(info["names"]))
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def needs_preparing(self, extra_names: list[str] | None = None,
                        now: dt.datetime | None = None) -> bool:
        """Whether the CA or the server certificate must be made or renewed (the work that
        needs `cryptography`). Half a CA raises IncompleteCAError."""
        if not self.check():
            return True
        info = self.server_info()
        if info is None:
            return True
        now = now or dt.datetime.now(dt.UTC)
        names = set(host_names()) | {n for n in (extra_names or []) if n}
        return info.not_after - now <= RENEW_BEFORE or not names <= info.names
