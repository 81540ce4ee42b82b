"""`lichen fn list|invoke|logs`: the argument parsers. The commands live in
gateway.functions.commands and are imported only when one runs."""

from __future__ import annotations

import argparse
from collections.abc import Callable

from .cli_lazy import lazy_command


def _lazy(name: str) -> Callable[[argparse.Namespace], int]:
    return lazy_command("gateway.functions.commands", name)


def add_function_commands(sub: argparse._SubParsersAction,
                          state_dir_arg: Callable[[argparse.ArgumentParser], None]) -> None:
    fn = sub.add_parser("fn", help="local functions: list, invoke, logs")
    fn_sub = fn.add_subparsers(dest="fn_command", required=True)

    p = fn_sub.add_parser("list", help="the running gateway's functions and their counters "
                          "(else the configured ones)")
    state_dir_arg(p)
    p.add_argument("--config", help="list the functions in this config file instead")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_lazy("cmd_fn_list"))

    p = fn_sub.add_parser("invoke", help="run a function on the running gateway and print "
                          "its result")
    state_dir_arg(p)
    p.add_argument("name")
    p.add_argument("event", nargs="?", default="{}",
                   help="the event as JSON (default {}); @FILE reads it from a file")
    p.add_argument("--timeout", type=float, default=30.0, help="seconds to wait (default 30)")
    p.set_defaults(func=_lazy("cmd_fn_invoke"))

    p = fn_sub.add_parser("logs", help="the end of a function's log (STATE_DIR/functions)")
    state_dir_arg(p)
    p.add_argument("name")
    p.add_argument("-n", "--lines", type=int, default=50, help="how many lines (default 50)")
    p.set_defaults(func=_lazy("cmd_fn_logs"))
