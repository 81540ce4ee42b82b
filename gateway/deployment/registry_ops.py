"""The document's `registry` section: policies to put, things to register (with a
certificate), policies to attach, things to revoke. Checked when the document is staged;
applied in one registry transaction once the version passed its health check, so a version
that is rolled back never touched the registry. Every operation is idempotent: a restart
that applies them again changes nothing more. The running gateway picks the change up as it
does any registry write (gateway/auth/service.py watches the file)."""

from __future__ import annotations

import json
from pathlib import Path

from ..auth.registry import check_attributes, check_thing_name
from ..errors import UserError
from ..state_dir import REGISTRY_DB
from .document import DocumentRejected


def check(doc: dict) -> None:
    """DocumentRejected naming the field, for what can be checked without the registry."""
    reg = doc.get("registry")
    if not reg:
        return
    from ..auth.commands import validate_policy_document
    from ..auth.pki import load_cert_pem

    for name, policy in reg.get("policies", {}).items():
        try:
            validate_policy_document(json.dumps(policy), name)
        except (UserError, ValueError) as exc:
            raise DocumentRejected(f"$.registry.policies.{name}: {exc}") from None
    for i, thing in enumerate(reg.get("things", [])):
        where = f"$.registry.things[{i}]"
        try:
            check_thing_name(thing["name"])
            check_attributes(thing.get("attributes", {}))
        except (UserError, ValueError) as exc:
            raise DocumentRejected(f"{where}: {exc}") from None
        if "certificatePem" in thing:
            try:
                load_cert_pem(thing["certificatePem"].encode(), f"{where}.certificatePem")
            except (UserError, ValueError) as exc:
                raise DocumentRejected(f"{where}.certificatePem: {exc}") from None
    for i, name in enumerate(reg.get("revoke", [])):
        try:
            check_thing_name(name)
        except (UserError, ValueError) as exc:
            raise DocumentRejected(f"$.registry.revoke[{i}]: {exc}") from None


def apply(state_dir: Path, doc: dict) -> list[str]:
    """Apply the section in one transaction; returns what changed, one line each."""
    reg = doc.get("registry")
    if not reg:
        return []
    from ..auth.commands import ensure_default_policy
    from ..auth.pki import fingerprint, load_cert_pem
    from ..auth.registry import Registry

    registry = Registry(state_dir / REGISTRY_DB)
    done: list[str] = []
    try:
        ensure_default_policy(registry)
        registry.db.execute("BEGIN IMMEDIATE")
        for name, policy in reg.get("policies", {}).items():
            registry.put_policy(name, json.dumps(policy))
            done.append(f"policy {name} put")
        for thing in reg.get("things", []):
            name = thing["name"]
            attrs = thing.get("attributes", {})
            if registry.get_thing(name) is None:
                registry.add_thing(name, attrs, [])
                done.append(f"thing {name} registered")
            elif attrs:
                registry.set_attributes(name, attrs)
            if "certificatePem" in thing:
                cert = load_cert_pem(thing["certificatePem"].encode(), name)
                if registry.certificate(fingerprint(cert)) is None:
                    registry.add_certificate(name, cert, "registered")
                    done.append(f"certificate of {name} registered")
        for item in reg.get("attach", []):
            registry.attach_policy(item["thing"], item["policy"])
            done.append(f"policy {item['policy']} attached to {item['thing']}")
        for name in reg.get("revoke", []):
            if registry.get_thing(name) is not None and registry.revoke(name):
                done.append(f"{name} revoked")
        registry.db.execute("COMMIT")
    except BaseException:
        if registry.db.in_transaction:
            registry.db.execute("ROLLBACK")
        raise
    finally:
        registry.close()
    return done
