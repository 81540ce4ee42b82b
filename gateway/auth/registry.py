"""The device registry: things, their certificates, trusted CAs and policies (SQLite).

The CLI writes it while the gateway runs; the gateway notices changes through SQLite's
data_version and reloads, so a revocation takes effect without a restart.
"""

from __future__ import annotations

import json
import re
import sqlite3
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import UserError
from ..names import THING_NAME
from ..sqlite_schema import Schema, ensure_schema

if TYPE_CHECKING:
    from cryptography import x509
    from sqlite_utils import Database


def _create(db: Database) -> None:
    """The current schema (version 2), on a new file."""
    db.table("things").create(
        {"name": str, "attributes": str, "policies": str, "created": float}, pk="name",
        not_null={"attributes", "policies", "created"},
        defaults={"attributes": "{}", "policies": "[]"})
    db.table("certificates").create(
        {"id": str, "thing": str, "serial": str, "pem": str, "status": str, "source": str,
         "not_after": float, "created": float, "revoked_at": float}, pk="id",
        not_null={"thing", "serial", "pem", "status", "source", "not_after", "created"})
    db.table("certificates").create_index(["thing", "created"],
                                          index_name="certificates_thing_created")
    db.table("cas").create({"id": str, "name": str, "pem": str, "created": float}, pk="id",
                           not_null={"name", "pem", "created"})
    db.table("policies").create({"name": str, "document": str, "created": float},
                                pk="name", not_null={"document", "created"})


def _v2_certificates_by_thing_and_age(db: Database) -> None:
    """Version 1 indexed certificates on thing alone; (thing, created) also gives
    `certificates(thing)` its ORDER BY created without a sort, and covers the rest."""
    db.table("certificates").create_index(["thing", "created"],
                                          index_name="certificates_thing_created")
    db.execute("DROP INDEX IF EXISTS certificates_thing")


SCHEMA = Schema("device registry", _create, (_v2_certificates_by_thing_and_age,))

POLICY_NAME = re.compile(r"^[\w+=,.@-]{1,128}$")
ATTRIBUTE_NAME = re.compile(r"^[a-zA-Z0-9_.,@/:#-]{1,128}$")
ATTRIBUTE_VALUE = re.compile(r"^[a-zA-Z0-9_.,@/:#=\[\]-]{0,800}$")
MAX_ATTRIBUTES = 50


class RegistryError(UserError, ValueError):
    """A registry request that cannot be done; the message says what and why."""


def check_thing_name(name: str) -> None:
    if not THING_NAME.fullmatch(name or ""):
        raise RegistryError(f"invalid thing name {name!r}: 1-128 characters of a-z, A-Z, 0-9, "
                            "':', '_' and '-'")


def check_attributes(attrs: dict[str, str]) -> None:
    if len(attrs) > MAX_ATTRIBUTES:
        raise RegistryError(f"at most {MAX_ATTRIBUTES} attributes per thing")
    for k, v in attrs.items():
        if not ATTRIBUTE_NAME.fullmatch(k):
            raise RegistryError(f"invalid attribute name {k!r}")
        if not isinstance(v, str) or not ATTRIBUTE_VALUE.fullmatch(v):
            raise RegistryError(f"invalid value for attribute {k!r}: {v!r}")


@dataclass
class Thing:
    name: str
    attributes: dict[str, str] = field(default_factory=dict)
    policies: list[str] = field(default_factory=list)
    created: float = 0.0


@dataclass
class CertificateRecord:
    id: str
    thing: str
    serial: str
    status: str             # "active" or "revoked"
    source: str             # "issued" (by the local CA) or "registered"
    not_after: float
    created: float
    revoked_at: float | None
    pem: str

    @property
    def active(self) -> bool:
        return self.status == "active"


class Registry:
    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(self.path, isolation_level=None, timeout=10,
                                  check_same_thread=False)
        try:
            ensure_schema(self.db, self.path, SCHEMA)
            self.db.execute("PRAGMA journal_mode=WAL")
        except BaseException:
            self.db.close()
            raise

    def close(self) -> None:
        self.db.close()

    def data_version(self) -> int:
        """Changes whenever another connection commits to the file."""
        return self.db.execute("PRAGMA data_version").fetchone()[0]

    # ------------------------------------------------------------------ things

    def add_thing(self, name: str, attributes: dict[str, str] | None = None,
                  policies: list[str] | None = None) -> Thing:
        check_thing_name(name)
        attrs = attributes or {}
        check_attributes(attrs)
        pols = policies or []
        for p in pols:
            self.get_policy(p)  # must exist
        try:
            self.db.execute("INSERT INTO things VALUES (?, ?, ?, ?)",
                            (name, json.dumps(attrs), json.dumps(pols), time.time()))
        except sqlite3.IntegrityError:
            raise RegistryError(f"thing {name!r} already exists") from None
        return Thing(name, attrs, pols)

    def get_thing(self, name: str) -> Thing | None:
        row = self.db.execute("SELECT name, attributes, policies, created FROM things "
                              "WHERE name = ?", (name,)).fetchone()
        if row is None:
            return None
        return Thing(row[0], json.loads(row[1]), json.loads(row[2]), row[3])

    def require_thing(self, name: str) -> Thing:
        thing = self.get_thing(name)
        if thing is None:
            raise RegistryError(f"no thing named {name!r} (see `lichen device list`)")
        return thing

    def list_things(self) -> list[Thing]:
        return [Thing(r[0], json.loads(r[1]), json.loads(r[2]), r[3]) for r in self.db.execute(
            "SELECT name, attributes, policies, created FROM things ORDER BY name")]

    def set_attributes(self, name: str, attributes: dict[str, str]) -> None:
        self.require_thing(name)
        check_attributes(attributes)
        self.db.execute("UPDATE things SET attributes = ? WHERE name = ?",
                        (json.dumps(attributes), name))

    def remove_thing(self, name: str) -> None:
        self.require_thing(name)
        with self._tx():
            self.db.execute("DELETE FROM certificates WHERE thing = ?", (name,))
            self.db.execute("DELETE FROM things WHERE name = ?", (name,))

    # ------------------------------------------------------------------ certificates

    def add_certificate(self, thing: str, cert: x509.Certificate,
                        source: str = "issued") -> CertificateRecord:
        from .pki import cert_pem, fingerprint  # the CLI's path; the daemon only reads

        self.require_thing(thing)
        rec = CertificateRecord(fingerprint(cert), thing, format(cert.serial_number, "x"),
                                "active", source, cert.not_valid_after_utc.timestamp(),
                                time.time(), None, cert_pem(cert).decode())
        try:
            self.db.execute("INSERT INTO certificates VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                            (rec.id, rec.thing, rec.serial, rec.pem, rec.status, rec.source,
                             rec.not_after, rec.created, None))
        except sqlite3.IntegrityError:
            raise RegistryError(f"certificate {rec.id[:16]}... is already registered") from None
        return rec

    def certificates(self, thing: str | None = None) -> list[CertificateRecord]:
        sql = "SELECT id, thing, serial, status, source, not_after, created, revoked_at, pem " \
              "FROM certificates"
        rows = self.db.execute(sql + " WHERE thing = ? ORDER BY created", (thing,)) \
            if thing is not None else self.db.execute(sql + " ORDER BY created")
        return [CertificateRecord(*r) for r in rows]

    def certificate(self, cert_id: str) -> CertificateRecord | None:
        for rec in self.db.execute(
                "SELECT id, thing, serial, status, source, not_after, created, revoked_at, pem "
                "FROM certificates WHERE id = ?", (cert_id,)):
            return CertificateRecord(*rec)
        return None

    def revoke(self, thing: str, cert_id: str | None = None) -> int:
        """Revoke one certificate of a thing, or all of them; returns how many changed."""
        self.require_thing(thing)
        if cert_id is not None:
            cur = self.db.execute("UPDATE certificates SET status = 'revoked', revoked_at = ? "
                                  "WHERE thing = ? AND id LIKE ? AND status = 'active'",
                                  (time.time(), thing, cert_id + "%"))
        else:
            cur = self.db.execute("UPDATE certificates SET status = 'revoked', revoked_at = ? "
                                  "WHERE thing = ? AND status = 'active'", (time.time(), thing))
        return cur.rowcount

    # ------------------------------------------------------------------ CAs

    def add_ca(self, pem: bytes, name: str | None = None) -> str:
        from cryptography import x509  # the CLI's path; the daemon only reads

        from .pki import cert_pem, common_name, fingerprint, load_cert_pem

        cert = load_cert_pem(pem, "CA certificate")
        try:
            bc = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
            is_ca = bc.ca
        except x509.ExtensionNotFound:
            is_ca = False
        if not is_ca:
            raise RegistryError("that certificate is not a CA (BasicConstraints CA:TRUE "
                                "missing); register device certificates with "
                                "`lichen device register`")
        cid = fingerprint(cert)
        try:
            self.db.execute("INSERT INTO cas VALUES (?, ?, ?, ?)",
                            (cid, name or common_name(cert) or cid[:16],
                             cert_pem(cert).decode(), time.time()))
        except sqlite3.IntegrityError:
            raise RegistryError(f"CA {cid[:16]}... is already registered") from None
        return cid

    def cas(self) -> list[tuple[str, str, str]]:
        return list(self.db.execute("SELECT id, name, pem FROM cas ORDER BY created"))

    def remove_ca(self, cid: str) -> None:
        if self.db.execute("DELETE FROM cas WHERE id LIKE ?", (cid + "%",)).rowcount == 0:
            raise RegistryError(f"no registered CA {cid!r}")

    # ------------------------------------------------------------------ policies

    def put_policy(self, name: str, document: str) -> None:
        if not POLICY_NAME.fullmatch(name):
            raise RegistryError(f"invalid policy name {name!r}")
        self.db.execute("INSERT OR REPLACE INTO policies VALUES (?, ?, ?)",
                        (name, document, time.time()))

    def get_policy(self, name: str) -> str:
        row = self.db.execute("SELECT document FROM policies WHERE name = ?", (name,)).fetchone()
        if row is None:
            raise RegistryError(f"no policy named {name!r} (see `lichen policy list`)")
        return row[0]

    def policies(self) -> dict[str, str]:
        return dict(self.db.execute("SELECT name, document FROM policies ORDER BY name"))

    def delete_policy(self, name: str) -> None:
        for thing in self.list_things():
            if name in thing.policies:
                raise RegistryError(f"policy {name!r} is attached to {thing.name!r}; detach it "
                                    "first")
        if self.db.execute("DELETE FROM policies WHERE name = ?", (name,)).rowcount == 0:
            raise RegistryError(f"no policy named {name!r}")

    def attach_policy(self, thing: str, policy: str) -> None:
        t = self.require_thing(thing)
        self.get_policy(policy)
        if policy not in t.policies:
            t.policies.append(policy)
            self.db.execute("UPDATE things SET policies = ? WHERE name = ?",
                            (json.dumps(t.policies), thing))

    def detach_policy(self, thing: str, policy: str) -> None:
        t = self.require_thing(thing)
        if policy not in t.policies:
            raise RegistryError(f"policy {policy!r} is not attached to {thing!r}")
        t.policies.remove(policy)
        self.db.execute("UPDATE things SET policies = ? WHERE name = ?",
                        (json.dumps(t.policies), thing))

    def _tx(self):
        db = self.db

        class _Tx:
            def __enter__(self_inner):
                db.execute("BEGIN IMMEDIATE")

            def __exit__(self_inner, exc_type, *_):
                db.execute("ROLLBACK" if exc_type else "COMMIT")

        return _Tx()
