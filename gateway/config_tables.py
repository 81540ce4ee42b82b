"""Checks shared by config sections written as arrays of named tables
(`[[functions]]`, `[[models]]`)."""

from __future__ import annotations

import re
from typing import Any

from .config import ConfigError

NAME_RE = re.compile(r"[A-Za-z0-9_-]{1,64}")


def check_named_table(item: Any, where: str, keys: set[str],
                      error: type[ConfigError]) -> str:
    """`item` must be a table with only `keys` and a valid `name`; returns the name."""
    if not isinstance(item, dict):
        raise error(f"{where}: must be a table, got {item!r}")
    unknown = sorted(set(item) - keys)
    if unknown:
        raise error(f"{where}.{unknown[0]}: unknown setting (known: {', '.join(sorted(keys))})")
    name = item.get("name")
    if not isinstance(name, str) or not NAME_RE.fullmatch(name):
        raise error(f"{where}.name: must be 1-64 characters of A-Z, a-z, 0-9, '_' and '-', "
                    f"got {name!r}")
    return name
