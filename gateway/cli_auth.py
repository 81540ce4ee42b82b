"""`lichen ca|device|policy ...`: the local CA, the device registry and policies."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path

from .auth.ca import LocalCA
from .auth.default_policies import DEVICE_POLICY, DEVICE_POLICY_NAME
from .auth.pki import (
    cert_pem,
    common_name,
    fingerprint,
    key_pem,
    load_cert_pem,
    load_csr_pem,
    write_private,
    write_public,
)
from .auth.registry import Registry, RegistryError
from .state_dir import default_state_dir, ensure_state_dir

PKI_DIR = "pki"
REGISTRY_DB = "registry.sqlite3"


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
    from .auth.policy import Policy

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
    from .auth.registry import check_thing_name

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


# ---------------------------------------------------------------------------- parser


def add_auth_commands(sub: argparse._SubParsersAction,
                      state_dir_arg: Callable[[argparse.ArgumentParser], None]) -> None:
    def cmd(group: argparse._SubParsersAction, name: str, func, help_text: str):
        p = group.add_parser(name, help=help_text)
        state_dir_arg(p)
        p.set_defaults(func=func)
        return p

    ca = sub.add_parser("ca", help="the local certificate authority devices trust")
    ca_sub = ca.add_subparsers(dest="ca_command", required=True)
    cmd(ca_sub, "show", cmd_ca_show, "print the CA certificate (PEM) devices should trust")
    p = cmd(ca_sub, "register", cmd_ca_register,
            "trust devices whose certificates another CA issued (e.g. AWS IoT)")
    p.add_argument("file", help="PEM CA certificate, or - for stdin")
    p.add_argument("--name")
    cmd(ca_sub, "list", cmd_ca_list, "list trusted CAs")
    p = cmd(ca_sub, "remove", cmd_ca_remove, "stop trusting a registered CA")
    p.add_argument("id", help="CA id (sha256 fingerprint or a prefix)")

    dev = sub.add_parser("device", help="devices (things) and their certificates")
    dev_sub = dev.add_subparsers(dest="device_command", required=True)

    def thing_opts(p: argparse.ArgumentParser) -> None:
        p.add_argument("thing", help="thing name")
        p.add_argument("--attr", action="append", metavar="NAME=VALUE",
                       help="thing attribute (repeatable)")
        p.add_argument("--policy", action="append", metavar="NAME",
                       help=f"policy to attach (repeatable; default {DEVICE_POLICY_NAME})")

    p = cmd(dev_sub, "add", cmd_device_add, "issue a certificate for a thing")
    thing_opts(p)
    p.add_argument("--csr", help="certify the key in this CSR instead of making a key pair")
    p.add_argument("--cert-out", required=True, help="where to write the certificate")
    p.add_argument("--key-out", help="where to write the new private key (0600)")
    p.add_argument("--key-type", default="ec", help="ec (P-256), rsa2048, rsa3072, rsa4096")
    p.add_argument("--days", type=int, default=3650, help="validity in days")
    p = cmd(dev_sub, "register", cmd_device_register,
            "admit a device by a certificate it already has (e.g. issued by AWS IoT)")
    thing_opts(p)
    p.add_argument("--cert", required=True, help="PEM certificate file, or - for stdin")
    p = cmd(dev_sub, "list", cmd_device_list, "list things")
    p.add_argument("--json", action="store_true")
    p = cmd(dev_sub, "show", cmd_device_show, "a thing, its certificates and policies (JSON)")
    p.add_argument("thing")
    p = cmd(dev_sub, "revoke", cmd_device_revoke,
            "revoke a thing's certificates; a running gateway disconnects it at once")
    p.add_argument("thing")
    p.add_argument("--cert", help="only this certificate id (or prefix)")
    p = cmd(dev_sub, "remove", cmd_device_remove, "delete a thing and its certificates")
    p.add_argument("thing")

    pol = sub.add_parser("policy", help="AWS IoT JSON policies")
    pol_sub = pol.add_subparsers(dest="policy_command", required=True)
    p = cmd(pol_sub, "put", cmd_policy_put, "create or replace a policy from a JSON file")
    p.add_argument("name")
    p.add_argument("file", help="policy JSON, or - for stdin")
    cmd(pol_sub, "list", cmd_policy_list, "list policies")
    p = cmd(pol_sub, "show", cmd_policy_show, "print a policy document")
    p.add_argument("name")
    p = cmd(pol_sub, "delete", cmd_policy_delete, "delete a policy")
    p.add_argument("name")
    p = cmd(pol_sub, "attach", cmd_policy_attach, "attach a policy to a thing")
    p.add_argument("name")
    p.add_argument("thing")
    p = cmd(pol_sub, "detach", cmd_policy_detach, "detach a policy from a thing")
    p.add_argument("name")
    p.add_argument("thing")


__all__ = ["PKI_DIR", "REGISTRY_DB", "add_auth_commands", "cert_pem", "open_auth"]
