"""The stand-in's settings as config text that merges into a `lichen init` config.toml.

That file already has a [cloud] table (with port, min_reconnect_s, ... set), so a second
`[cloud]` header, or a second `port = ...` line under it, would be invalid TOML. The
stand-in therefore prints bare `key = value` lines that replace the table's own lines, and
writes a complete config with them already in place (for `lichen run --config`).
"""

from __future__ import annotations

import json
import re
from typing import Any


def toml_value(value: Any) -> str:
    """A TOML literal for a str, bool, int or float."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)  # a JSON string is a valid TOML basic string
    raise TypeError(f"no TOML form for {type(value).__name__} {value!r}")


def key_lines(settings: dict[str, Any]) -> list[str]:
    return [f"{key} = {toml_value(value)}" for key, value in settings.items()]


def set_table_keys(text: str, table: str, settings: dict[str, Any]) -> str:
    """`text` with each key of `settings` set in [table]: its line (or a commented-out
    `# key = ...` line) replaced, else added at the end of the table; a table that is not
    there is added at the end."""
    lines = text.splitlines()
    header = f"[{table}]"
    try:
        start = next(i for i, line in enumerate(lines) if line.strip() == header)
    except StopIteration:
        return text.rstrip("\n") + f"\n\n{header}\n" + "\n".join(key_lines(settings)) + "\n"
    end = next((i for i in range(start + 1, len(lines))
                if lines[i].lstrip().startswith("[")), len(lines))
    missing = []
    for key, value in settings.items():
        pattern = re.compile(rf"#?\s*{re.escape(key)}\s*=")
        line = f"{key} = {toml_value(value)}"
        found = next((i for i in range(start + 1, end) if pattern.match(lines[i].lstrip())),
                     None)
        if found is None:
            missing.append(line)
        else:
            lines[found] = line
    # after the table's last setting, before the blank lines and comments that lead on
    last = max((i for i in range(start, end) if lines[i].strip()
                and not lines[i].lstrip().startswith("#")), default=start)
    lines[last + 1:last + 1] = missing
    return "\n".join(lines) + "\n"
