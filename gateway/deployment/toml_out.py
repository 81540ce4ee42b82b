"""Writes a version's config as TOML (what `lichen run --config` reads), for the JSON-shaped
values a deployment holds: tables, arrays, strings, numbers, booleans; null means "left
out" (TOML has no null). The text is read back and compared, so what is written is exactly
what was meant."""

from __future__ import annotations

import json
import math
import tomllib
from typing import Any


def _key(k: str) -> str:
    return k if k and all(c.isalnum() or c in "_-" for c in k) and k.isascii() else _str(k)


def _str(s: str) -> str:
    # JSON's escapes are TOML's, provided no character is written as a surrogate pair
    return json.dumps(s, ensure_ascii=False).replace("\x7f", "\\u007f")


def _value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        if not math.isfinite(v):
            raise ValueError(f"cannot write {v!r} to TOML")
        return repr(v)
    if isinstance(v, str):
        return _str(v)
    if isinstance(v, list):
        return "[" + ", ".join(_value(x) for x in v if x is not None) + "]"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{_key(k)} = {_value(x)}" for k, x in v.items()
                               if x is not None) + "}"
    raise ValueError(f"cannot write {type(v).__name__} to TOML")


def _drop_nulls(v: Any) -> Any:
    if isinstance(v, dict):
        return {k: _drop_nulls(x) for k, x in v.items() if x is not None}
    if isinstance(v, list):
        return [_drop_nulls(x) for x in v if x is not None]
    return v


def dumps(data: dict[str, Any]) -> str:
    lines = [f"{_key(k)} = {_value(v)}" for k, v in data.items() if v is not None]
    text = "\n".join(lines) + "\n"
    if tomllib.loads(text) != _drop_nulls(data):
        raise ValueError("TOML round trip changed the config")  # a bug here, not the user's
    return text
