"""`lichen deploy apply|status|rollback|history`: the argument parsers. The commands live in
gateway.deployment.commands and are imported only when one runs."""

from __future__ import annotations

import argparse
from collections.abc import Callable

from .cli_lazy import lazy_command


def _lazy(name: str) -> Callable[[argparse.Namespace], int]:
    return lazy_command("gateway.deployment.commands", name)


def add_deploy_commands(sub: argparse._SubParsersAction,
                        state_dir_arg: Callable[[argparse.ArgumentParser], None]) -> None:
    dep = sub.add_parser("deploy", help="deployments: apply, status, rollback, history")
    dep_sub = dep.add_subparsers(dest="deploy_command", required=True)

    p = dep_sub.add_parser("apply", help="deploy a document (to the running gateway, or "
                           "for the next start when none runs)")
    state_dir_arg(p)
    p.add_argument("file", help="the deployment document (JSON); - reads stdin")
    p.add_argument("--timeout", type=float, default=600.0,
                   help="seconds to wait for the running gateway's outcome (default 600)")
    p.set_defaults(func=_lazy("cmd_deploy_apply"))

    p = dep_sub.add_parser("status", help="the current version and the latest deployment")
    state_dir_arg(p)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_lazy("cmd_deploy_status"))

    p = dep_sub.add_parser("rollback", help="go back to the version before the current one")
    state_dir_arg(p)
    p.add_argument("--timeout", type=float, default=600.0)
    p.set_defaults(func=_lazy("cmd_deploy_rollback"))

    p = dep_sub.add_parser("history", help="every deployment, newest first")
    state_dir_arg(p)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_lazy("cmd_deploy_history"))
