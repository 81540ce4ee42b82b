"""Subcommands whose code is imported only when they run, so that `lichen run` and the other
commands do not pay for modules they never use (cryptography, onnxruntime, paho)."""

from __future__ import annotations

import argparse
import importlib
from collections.abc import Callable


def lazy_command(module: str, name: str) -> Callable[[argparse.Namespace], int]:
    """An argparse `func` that imports `module` and calls its `name` on first use."""

    def run(args: argparse.Namespace) -> int:
        return getattr(importlib.import_module(module), name)(args)

    return run
