"""How `lichen` answers about itself: its version, help for a bare command, and usage errors
as one line (the contract every command keeps: one line on stderr when it fails)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from typing import Any


class Parser(argparse.ArgumentParser):
    """argparse with a one-line usage error (exit 2) instead of usage text plus error."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: {message} (see `{self.prog} --help`)\n")


def version() -> str:
    """The installed distribution's version (pyproject.toml is the one place it is set)."""
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as dist_version

    try:
        return dist_version("lichen")
    except PackageNotFoundError:  # a source tree that was never installed
        return "unknown (not installed)"


class VersionAction(argparse.Action):
    """--version, looked up only when asked for (importlib.metadata is slow to import)."""

    def __init__(self, option_strings: list[str], dest: str = argparse.SUPPRESS,
                 **kwargs: Any) -> None:
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, **kwargs)

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace,
                 values: str | Sequence[Any] | None, option_string: str | None = None) -> None:
        print(f"{parser.prog} {version()}")
        parser.exit(0)


def _show_help(parser: argparse.ArgumentParser) -> Callable[[argparse.Namespace], int]:
    def run(_args: argparse.Namespace) -> int:
        sys.stdout.write(parser.format_help())
        return 0

    return run


def help_when_bare(parser: argparse.ArgumentParser) -> None:
    """`lichen`, `lichen ca`, ... without a subcommand print their help and exit 0 (as git
    does), instead of failing with "the following arguments are required"."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            action.required = False
            parser.set_defaults(func=_show_help(parser))
            for sub in set(action.choices.values()):
                help_when_bare(sub)
