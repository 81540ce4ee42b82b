"""`[[functions]]` in the gateway config, validated with one-line errors naming the field."""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..config import ConfigError
from ..config_tables import check_named_table
from ..mqtt.topics import InvalidTopic, topic_matches, validate_topic_filter, validate_topic_name

LIFECYCLES = ("on-demand", "pinned")


class FunctionConfigError(ConfigError):
    """One line naming the field, as every config error."""


@dataclass(slots=True)
class FunctionSettings:
    name: str
    code: str                                  # directory put first on the worker's sys.path
    handler: str                               # "module.function", called (event, context)
    version: str = "1"
    environment: dict[str, str] = field(default_factory=dict)
    timeout_s: float = 10.0                    # per invocation; the worker is killed past it
    memory_mb: int = 512                       # RLIMIT_AS of each worker process
    max_concurrency: int = 1                   # workers running at once (on-demand)
    queue_size: int = 100                      # invocations waiting; more are dropped
    lifecycle: str = "on-demand"
    instances: int = 1                         # pinned: long-lived workers
    idle_timeout_s: float = 60.0               # on-demand: idle workers retired after this
    triggers: list[str] = field(default_factory=list)
    result_topic: str | None = None
    error_topic: str | None = None
    # micro-batching (pinned only): up to batch_max queued events go to a worker in one
    # message, the handler gets them as a list; 1 is off
    batch_max: int = 1
    batch_window_ms: float = 0.0               # wait this long after the first for more
    max_invoke_depth: int = 8                  # context.invoke chains reaching this function

    @property
    def batching(self) -> bool:
        return self.batch_max > 1


# (low, high, integer?) for the numeric settings
_NUMBERS: dict[str, tuple[float, float, bool]] = {
    "timeout_s": (0.01, 900, False),
    "memory_mb": (64, 1 << 20, True),
    "max_concurrency": (1, 1024, True),
    "queue_size": (1, 1_000_000, True),
    "instances": (1, 1024, True),
    "idle_timeout_s": (0.1, 86_400, False),
    "batch_max": (1, 4096, True),
    "batch_window_ms": (0, 10_000, False),
    "max_invoke_depth": (1, 64, True),
}
_KEYS = {f for f in FunctionSettings.__dataclass_fields__}


def _check_batching(where: str, fs: FunctionSettings, item: dict) -> None:
    if not fs.batching:
        if "batch_window_ms" in item:  # a window alone does nothing: say so, not ignore it
            raise FunctionConfigError(f"{where}.batch_window_ms: has no effect unless "
                                      f"batch_max is more than 1")
        return
    if fs.lifecycle != "pinned":
        raise FunctionConfigError(f"{where}.batch_max: batching is for pinned functions; "
                                  f'set lifecycle = "pinned" or batch_max = 1')
    if fs.batch_max > fs.queue_size:
        raise FunctionConfigError(f"{where}.batch_max: must be at most queue_size "
                                  f"({fs.queue_size}), got {fs.batch_max}")


def _number(where: str, key: str, value: Any) -> float | int:
    lo, hi, integer = _NUMBERS[key]
    ok = isinstance(value, int) if integer else isinstance(value, int | float)
    if isinstance(value, bool) or not ok:
        kind = "an integer" if integer else "a number"
        raise FunctionConfigError(f"{where}.{key}: must be {kind}, got {value!r}")
    if not lo <= value <= hi:
        raise FunctionConfigError(f"{where}.{key}: must be between {lo:g} and {hi:g}, "
                                  f"got {value!r}")
    return value if integer else float(value)


def _module_file(code: Path, module: str) -> Path | None:
    base = code.joinpath(*module.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _defines(path: Path, name: str) -> bool | None:
    """Whether the module's top level binds `name` (None: it does not parse). Read, never
    imported: function code runs only in workers."""
    try:
        tree = ast.parse(path.read_bytes(), str(path))
    except (SyntaxError, ValueError, OSError):
        return None
    for node in tree.body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            if node.name == name:
                return True
        elif isinstance(node, ast.Assign | ast.AnnAssign):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            if any(isinstance(t, ast.Name) and t.id == name for t in targets):
                return True
        elif isinstance(node, ast.ImportFrom | ast.Import) and any(
                (a.asname or a.name.split(".")[0]) == name for a in node.names):
            return True
    return False


def _check_handler(where: str, code: Path, handler: Any) -> None:
    if not isinstance(handler, str) or not re.fullmatch(r"[A-Za-z_][\w.]*\.[A-Za-z_]\w*",
                                                        handler):
        raise FunctionConfigError(f"{where}.handler: must be 'module.function', got {handler!r}")
    module, func = handler.rsplit(".", 1)
    path = _module_file(code, module)
    if path is None:
        raise FunctionConfigError(f"{where}.handler: unknown handler module {module!r} (no "
                                  f"{module.replace('.', '/')}.py in {code})")
    defined = _defines(path, func)
    if defined is None:
        raise FunctionConfigError(f"{where}.handler: {path} has a syntax error")
    if not defined:
        raise FunctionConfigError(f"{where}.handler: {path} defines no {func!r}")


def _topic(where: str, key: str, value: Any, is_filter: bool) -> str:
    if not isinstance(value, str):
        raise FunctionConfigError(f"{where}.{key}: must be a topic string, got {value!r}")
    try:
        (validate_topic_filter if is_filter else validate_topic_name)(value)
    except InvalidTopic as exc:
        raise FunctionConfigError(f"{where}.{key}: {exc}") from None
    return value


def parse_function(item: Any, index: int, base_dir: Path | None) -> FunctionSettings:
    name = check_named_table(item, f"functions[{index}]", _KEYS, FunctionConfigError)
    where = f"functions.{name}"
    code = item.get("code")
    if not isinstance(code, str) or not code:
        raise FunctionConfigError(f"{where}.code: a directory is required")
    code_dir = Path(code)
    if not code_dir.is_absolute():
        code_dir = (base_dir or Path.cwd()) / code_dir
    if not code_dir.is_dir():
        raise FunctionConfigError(f"{where}.code: no directory at {code_dir}")
    _check_handler(where, code_dir, item.get("handler"))
    fs = FunctionSettings(name, str(code_dir.resolve()), item["handler"])
    for key in _NUMBERS:
        if key in item:
            setattr(fs, key, _number(where, key, item[key]))
    version = item.get("version", "1")
    if not isinstance(version, str | int) or isinstance(version, bool):
        raise FunctionConfigError(f"{where}.version: must be a string, got {version!r}")
    fs.version = str(version)
    env = item.get("environment", {})
    if not isinstance(env, dict) or not all(isinstance(k, str) and isinstance(v, str)
                                            for k, v in env.items()):
        raise FunctionConfigError(f"{where}.environment: must be a table of strings, "
                                  f"got {env!r}")
    fs.environment = dict(env)
    lifecycle = item.get("lifecycle", "on-demand")
    if lifecycle not in LIFECYCLES:
        raise FunctionConfigError(f"{where}.lifecycle: must be one of {', '.join(LIFECYCLES)}, "
                                  f"got {lifecycle!r}")
    fs.lifecycle = lifecycle
    _check_batching(where, fs, item)
    triggers = item.get("triggers", [])
    if not isinstance(triggers, list):
        raise FunctionConfigError(f"{where}.triggers: must be a list of topic filters, "
                                  f"got {triggers!r}")
    fs.triggers = [_topic(where, "triggers", t, True) for t in triggers]
    for key in ("result_topic", "error_topic"):
        if item.get(key) is not None:
            topic = _topic(where, key, item[key], False)
            setattr(fs, key, topic)
            # a function fed its own output would run forever
            for trigger in fs.triggers:
                if topic_matches(trigger, topic):
                    raise FunctionConfigError(f"{where}.{key}: {topic!r} matches the "
                                              f"function's own trigger {trigger!r}")
    return fs


def parse_functions(items: Any, base_dir: Path | None = None) -> list[FunctionSettings]:
    """Validate `[[functions]]` tables. Relative code directories are taken from base_dir
    (the config file's directory) or the working directory."""
    if not isinstance(items, list):
        raise FunctionConfigError(f"functions: must be an array of tables ([[functions]]), "
                                  f"got {items!r}")
    out = [parse_function(item, i, base_dir) for i, item in enumerate(items)]
    names = [f.name for f in out]
    for n in names:
        if names.count(n) > 1:
            raise FunctionConfigError(f"functions.{n}: declared twice")
    return out
