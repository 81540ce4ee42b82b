"""What `lichen ca|device|policy ...` do: the local CA, the device registry and policies.

Imported only when such a command runs, so `lichen run` does not load `cryptography`
unless the gateway needs it."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from ..state_dir import (
    PKI_DIR,
    REGISTRY_DB,
    StateDirError,
    StateLock,
    default_state_dir,
    ensure_state_dir,
)
from .ca import LocalCA, check_validity_days
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
    state_dir = _state(args)
    ca = LocalCA(state_dir / PKI_DIR)
    # An existing CA is only read (a read-only state directory will do); with none yet it
    # is made, as by any other command.
    if not ca.check():
        ca, _ = open_auth(state_dir)
    sys.stdout.write(ca.pem().decode())
    return 0


def cmd_ca_reset(args: argparse.Namespace) -> int:
    """Replace the local CA (after its key was lost, or to start over): the certificates it
    issued are revoked, since no device can connect with them any more."""
    state_dir = _state(args)
    if not (state_dir / PKI_DIR).is_dir():
        raise RegistryError(f"no local CA in {state_dir} to reset (`lichen init` makes one)")
    registry = Registry(state_dir / REGISTRY_DB)
    issued = [c for c in registry.certificates() if c.source == "issued" and c.active]
    things = sorted({c.thing for c in issued})
    if not args.yes:
        raise RegistryError(
            f"ca reset replaces the local CA of {state_dir}: the {len(issued)} active device "
            f"certificate(s) it issued stop working and are revoked"
            + (f" (things: {_listed(things)})" if things else "")
            + ", and every device must be given the new CA certificate; add --yes to do it")
    lock = StateLock(state_dir)
    try:
        lock.acquire()
    except StateDirError as exc:
        raise RegistryError(f"{exc}: stop it before `lichen ca reset`") from None
    try:
        ca = LocalCA(state_dir / PKI_DIR)
        aside = ca.set_aside()
        ca.ensure()
        for cert in issued:
            registry.revoke(cert.thing, cert.id)
    finally:
        lock.release()
    print(f"new local CA {fingerprint(ca.certificate)}"
          + (f"; the old files are in {aside}" if aside else ""))
    print(f"revoked {len(issued)} certificate(s) the old CA issued"
          + (f" (things: {_listed(things)}): enrol them again with `lichen device add`"
             if things else ""))
    print(f"devices must trust the new CA: lichen ca show --state-dir {state_dir} > ca.pem")
    return 0


def _listed(names: list[str], most: int = 10) -> str:
    shown = ", ".join(names[:most])
    return shown + (f" and {len(names) - most} more" if len(names) > most else "")


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


def _output_path(option: str, value: str, force: bool) -> Path:
    """Where --cert-out/--key-out write: never over an existing file without --force; its
    folder is made if missing. Checked before anything is issued or registered."""
    path = Path(value)
    if path.is_dir():
        raise RegistryError(f"{option}: {value} is a directory; give a file name")
    if (path.exists() or path.is_symlink()) and not force:
        raise RegistryError(f"{option}: {value} already exists (add --force to overwrite it)")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise RegistryError(f"{option}: cannot create the folder {path.parent}: "
                            f"{exc.strerror}") from None
    if not os.access(path.parent, os.W_OK):
        raise RegistryError(f"{option}: cannot write in {path.parent}: permission denied")
    return path


def cmd_device_add(args: argparse.Namespace) -> int:
    from .registry import check_thing_name

    check_thing_name(args.thing)
    check_validity_days(args.days, "--days")
    if not args.csr and not args.key_out:
        raise RegistryError("give --key-out for a new key pair, or --csr to certify your own key")
    cert_out = _output_path("--cert-out", args.cert_out, args.force)
    key_out = None if args.csr else _output_path("--key-out", args.key_out, args.force)
    if key_out is not None and key_out.resolve() == cert_out.resolve():
        raise RegistryError(f"--key-out: {args.key_out} is the --cert-out file too; give "
                            "two different files")
    ca, registry = open_auth(_state(args))
    public_key = None
    if args.csr:
        public_key = load_csr_pem(_read_input(args.csr, "CSR"), args.csr).public_key()
    issued = ca.issue_device(args.thing, public_key, days=args.days, key_type=args.key_type)
    _ensure_thing(registry, args)
    rec = registry.add_certificate(args.thing, issued.certificate, "issued")
    try:
        if key_out is not None and issued.private_key is not None:
            write_private(key_out, key_pem(issued.private_key))
        write_public(cert_out, issued.pem)
    except OSError as exc:
        # nobody holds the certificate: do not leave it active
        registry.revoke(args.thing, rec.id)
        raise RegistryError(f"cannot write {exc.filename}: {exc.strerror} (the certificate "
                            f"{rec.id[:16]}... was revoked)") from None
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
