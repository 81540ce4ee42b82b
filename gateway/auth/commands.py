"""What `lichen ca|device|policy ...` do: the local CA, the device registry and policies.

Imported only when such a command runs, so `lichen run` does not load `cryptography`
unless the gateway needs it."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ..state_dir import PKI_DIR, REGISTRY_DB, default_state_dir, ensure_state_dir
from .ca import LocalCA
from .default_policies import DEVICE_POLICY, DEVICE_POLICY_NAME
from .pki import (
    common_name,
    fingerprint,
    key_pem,
    load_cert_pem,
    load_csr_pem,
    write_private,
    write_public,
)
from .registry import Registry, RegistryError


def open_auth(state_dir: Path) -> tuple[LocalCA, Registry]:
    """The CA and registry of a state directory, created on first use (no prompt)."""
    ensure_state_dir(state_dir)
    ca = LocalCA(state_dir / PKI_DIR)
    ca.ensure()
    registry = Registry(state_dir / REGISTRY_DB)
    ensure_default_policy(registry)
    return ca, registry


def ensure_default_policy(registry: Registry) -> None:
    if DEVICE_POLICY_NAME not in registry.policies():
        registry.put_policy(DEVICE_POLICY_NAME, DEVICE_POLICY)


def validate_policy_document(text: str, name: str) -> None:
    from .policy import Policy

    Policy.parse(text, name=name)


def _state(args: argparse.Namespace) -> Path:
    return Path(args.state_dir) if args.state_dir else default_state_dir()


def _read_input(path: str, what: str) -> bytes:
    try:
        return sys.stdin.buffer.read() if path == "-" else Path(path).read_bytes()
    except OSError as exc:
        raise RegistryError(f"cannot read {what} {path}: {exc.strerror}") from None


def _attrs(pairs: list[str] | None) -> dict[str, str]:
    out = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise RegistryError(f"--attr wants NAME=VALUE, got {pair!r}")
        out[key] = value
    return out


# ---------------------------------------------------------------------------- ca


def cmd_ca_show(args: argparse.Namespace) -> int:
    ca, _ = open_auth(_state(args))
    sys.stdout.write(ca.pem().decode())
    return 0


def cmd_ca_register(args: argparse.Namespace) -> int:
    _, registry = open_auth(_state(args))
    cid = registry.add_ca(_read_input(args.file, "CA certificate"), args.name)
    print(cid)
    return 0


def cmd_ca_list(args: argparse.Namespace) -> int:
    ca, registry = open_auth(_state(args))
    print(f"{fingerprint(ca.certificate)}  {common_name(ca.certificate)}  (local CA)")
    for cid, name, _pem in registry.cas():
        print(f"{cid}  {name}")
    return 0


def cmd_ca_remove(args: argparse.Namespace) -> int:
    _, registry = open_auth(_state(args))
    registry.remove_ca(args.id)
    return 0


# ---------------------------------------------------------------------------- device


def _ensure_thing(registry: Registry, args: argparse.Namespace) -> None:
    policies = args.policy or [DEVICE_POLICY_NAME]
    if registry.get_thing(args.thing) is None:
        registry.add_thing(args.thing, _attrs(args.attr), policies)
        return
    if args.attr:
        thing = registry.require_thing(args.thing)
        registry.set_attributes(args.thing, {**thing.attributes, **_attrs(args.attr)})
    for policy in args.policy or []:
        registry.attach_policy(args.thing, policy)


def cmd_device_add(args: argparse.Namespace) -> int:
    ca, registry = open_auth(_state(args))
    from .registry import check_thing_name

    check_thing_name(args.thing)
    public_key = None
    if args.csr:
        public_key = load_csr_pem(_read_input(args.csr, "CSR"), args.csr).public_key()
    elif not args.key_out:
        raise RegistryError("give --key-out for a new key pair, or --csr to certify your own key")
    issued = ca.issue_device(args.thing, public_key, days=args.days, key_type=args.key_type)
    _ensure_thing(registry, args)
    rec = registry.add_certificate(args.thing, issued.certificate, "issued")
    if issued.private_key is not None:
        write_private(Path(args.key_out), key_pem(issued.private_key))
    write_public(Path(args.cert_out), issued.pem)
    print(rec.id)
    return 0


def cmd_device_register(args: argparse.Namespace) -> int:
    _, registry = open_auth(_state(args))
    cert = load_cert_pem(_read_input(args.cert, "certificate"), args.cert)
    _ensure_thing(registry, args)
    rec = registry.add_certificate(args.thing, cert, "registered")
    print(rec.id)
    return 0


def _thing_json(registry: Registry, name: str) -> dict:
    thing = registry.require_thing(name)
    return {
        "thing": thing.name, "attributes": thing.attributes, "policies": thing.policies,
        "certificates": [{"id": c.id, "status": c.status, "source": c.source,
                          "serial": c.serial, "not_after": c.not_after}
                         for c in registry.certificates(name)],
    }


def cmd_device_list(args: argparse.Namespace) -> int:
    _, registry = open_auth(_state(args))
    things = [_thing_json(registry, t.name) for t in registry.list_things()]
    if args.json:
        print(json.dumps(things, indent=2))
        return 0
    for t in things:
        active = sum(1 for c in t["certificates"] if c["status"] == "active")
        print(f"{t['thing']}  certificates: {active} active/{len(t['certificates'])}  "
              f"policies: {', '.join(t['policies']) or '-'}")
    return 0


def cmd_device_show(args: argparse.Namespace) -> int:
    _, registry = open_auth(_state(args))
    print(json.dumps(_thing_json(registry, args.thing), indent=2))
    return 0


def cmd_device_revoke(args: argparse.Namespace) -> int:
    _, registry = open_auth(_state(args))
    n = registry.revoke(args.thing, args.cert)
    if n == 0:
        raise RegistryError(f"{args.thing!r} has no active certificate"
                            + (f" matching {args.cert!r}" if args.cert else ""))
    print(f"revoked {n} certificate(s) of {args.thing}")
    return 0


def cmd_device_remove(args: argparse.Namespace) -> int:
    _, registry = open_auth(_state(args))
    registry.remove_thing(args.thing)
    return 0


# ---------------------------------------------------------------------------- policy


def cmd_policy_put(args: argparse.Namespace) -> int:
    _, registry = open_auth(_state(args))
    text = _read_input(args.file, "policy").decode("utf-8", errors="replace")
    validate_policy_document(text, args.name)
    registry.put_policy(args.name, text)
    return 0


def cmd_policy_list(args: argparse.Namespace) -> int:
    _, registry = open_auth(_state(args))
    for name in registry.policies():
        print(name)
    return 0


def cmd_policy_show(args: argparse.Namespace) -> int:
    _, registry = open_auth(_state(args))
    print(registry.get_policy(args.name))
    return 0


def cmd_policy_delete(args: argparse.Namespace) -> int:
    _, registry = open_auth(_state(args))
    registry.delete_policy(args.name)
    return 0


def cmd_policy_attach(args: argparse.Namespace) -> int:
    _, registry = open_auth(_state(args))
    registry.attach_policy(args.thing, args.name)
    return 0


def cmd_policy_detach(args: argparse.Namespace) -> int:
    _, registry = open_auth(_state(args))
    registry.detach_policy(args.thing, args.name)
    return 0
