"""`lichen ca|device|policy ...`: the argument parsers. The commands themselves live in
gateway.auth.commands and are imported only when one runs."""

from __future__ import annotations

import argparse
from collections.abc import Callable

from .cli_lazy import lazy_command


def lazy(name: str) -> Callable[[argparse.Namespace], int]:
    return lazy_command("gateway.auth.commands", name)


def add_auth_commands(sub: argparse._SubParsersAction,
                      state_dir_arg: Callable[[argparse.ArgumentParser], None]) -> None:
    def cmd(group: argparse._SubParsersAction, name: str, func, help_text: str):
        p = group.add_parser(name, help=help_text)
        state_dir_arg(p)
        p.set_defaults(func=func)
        return p

    ca = sub.add_parser("ca", help="the local certificate authority devices trust")
    ca_sub = ca.add_subparsers(dest="ca_command", required=True)
    cmd(ca_sub, "show", lazy("cmd_ca_show"), "print the CA certificate (PEM) devices should trust")
    p = cmd(ca_sub, "register", lazy("cmd_ca_register"),
            "trust devices whose certificates another CA issued (e.g. AWS IoT)")
    p.add_argument("file", help="PEM CA certificate, or - for stdin")
    p.add_argument("--name")
    cmd(ca_sub, "list", lazy("cmd_ca_list"), "list trusted CAs")
    p = cmd(ca_sub, "remove", lazy("cmd_ca_remove"), "stop trusting a registered CA")
    p.add_argument("id", help="CA id (sha256 fingerprint or a prefix)")
    p = cmd(ca_sub, "reset", lazy("cmd_ca_reset"),
            "replace the local CA with a new one: every device certificate it issued is "
            "revoked, and devices must trust the new CA (for a lost ca.key)")
    p.add_argument("--yes", action="store_true", help="really do it (without it, only says "
                   "what would be invalidated)")

    dev = sub.add_parser("device", help="devices (things) and their certificates")
    dev_sub = dev.add_subparsers(dest="device_command", required=True)

    def thing_opts(p: argparse.ArgumentParser) -> None:
        p.add_argument("thing", help="thing name")
        p.add_argument("--attr", action="append", metavar="NAME=VALUE",
                       help="thing attribute (repeatable)")
        p.add_argument("--policy", action="append", metavar="NAME",
                       help="policy to attach (repeatable; default lichen-device)")

    p = cmd(dev_sub, "add", lazy("cmd_device_add"), "issue a certificate for a thing")
    thing_opts(p)
    p.add_argument("--csr", help="certify the key in this CSR instead of making a key pair")
    p.add_argument("--cert-out", required=True, help="where to write the certificate")
    p.add_argument("--key-out", help="where to write the new private key (0600)")
    p.add_argument("--key-type", default="ec", help="ec (P-256), rsa2048, rsa3072, rsa4096")
    p.add_argument("--days", type=int, default=3650, help="validity in days, 1 to 36500 "
                   "(default 3650)")
    p.add_argument("--force", action="store_true",
                   help="overwrite --cert-out/--key-out if they exist")
    p = cmd(dev_sub, "register", lazy("cmd_device_register"),
            "admit a device by a certificate it already has (e.g. issued by AWS IoT)")
    thing_opts(p)
    p.add_argument("--cert", required=True, help="PEM certificate file, or - for stdin")
    p = cmd(dev_sub, "list", lazy("cmd_device_list"), "list things")
    p.add_argument("--json", action="store_true")
    p = cmd(dev_sub, "show", lazy("cmd_device_show"),
            "a thing, its certificates and policies (JSON)")
    p.add_argument("thing")
    p = cmd(dev_sub, "revoke", lazy("cmd_device_revoke"),
            "revoke a thing's certificates; a running gateway disconnects it at once")
    p.add_argument("thing")
    p.add_argument("--cert", help="only this certificate id (or prefix)")
    p = cmd(dev_sub, "remove", lazy("cmd_device_remove"), "delete a thing and its certificates")
    p.add_argument("thing")

    pol = sub.add_parser("policy", help="AWS IoT JSON policies")
    pol_sub = pol.add_subparsers(dest="policy_command", required=True)
    p = cmd(pol_sub, "put", lazy("cmd_policy_put"), "create or replace a policy from a JSON file")
    p.add_argument("name")
    p.add_argument("file", help="policy JSON, or - for stdin")
    cmd(pol_sub, "list", lazy("cmd_policy_list"), "list policies")
    p = cmd(pol_sub, "show", lazy("cmd_policy_show"), "print a policy document")
    p.add_argument("name")
    p = cmd(pol_sub, "delete", lazy("cmd_policy_delete"), "delete a policy")
    p.add_argument("name")
    p = cmd(pol_sub, "attach", lazy("cmd_policy_attach"), "attach a policy to a thing")
    p.add_argument("name")
    p.add_argument("thing")
    p = cmd(pol_sub, "detach", lazy("cmd_policy_detach"), "detach a policy from a thing")
    p.add_argument("name")
    p.add_argument("thing")

