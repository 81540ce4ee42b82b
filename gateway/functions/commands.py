"""`lichen fn ...` commands. Each exits 0 on success or 1 with one line on stderr."""

from __future__ import annotations

import argparse
import json
from collections import deque
from pathlib import Path

from ..errors import UserError
from ..state_dir import default_state_dir, is_running, read_pid, read_status
from .control import invoke


class FnCommandError(UserError):
    pass


def _state_dir(args: argparse.Namespace) -> Path:
    return Path(args.state_dir) if args.state_dir else default_state_dir()


def cmd_fn_list(args: argparse.Namespace) -> int:
    """The running gateway's functions with their counters (from status.json); with no
    gateway running, or with --config, the configured ones."""
    state_dir = _state_dir(args)
    live = None
    if not args.config and state_dir.is_dir() and is_running(state_dir):
        live = (read_status(state_dir) or {}).get("functions") or {}
    rows = []
    if live is not None:
        for name, st in live.items():
            rows.append({"name": name, "handler": st["handler"], "lifecycle": st["lifecycle"],
                         "triggers": st["triggers"], "status": st})
    else:
        from ..cli import resolve_config

        for fn in resolve_config(state_dir, args.config).functions:
            rows.append({"name": fn.name, "handler": fn.handler, "lifecycle": fn.lifecycle,
                         "triggers": fn.triggers, "timeout_s": fn.timeout_s,
                         "memory_mb": fn.memory_mb, "batch_max": fn.batch_max})
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    if not rows:
        print("no functions configured")
    for row in rows:
        st = row.get("status")
        figures = (f"  workers {st['workers']}, invocations {st['invocations']} "
                   f"(ok {st['succeeded']}, failed {st['failed']}, timeouts {st['timeouts']}, "
                   f"crashes {st['crashes']}, oom {st['out_of_memory']}, "
                   f"dropped {st['queue_full']})" if st else "")
        if st and st.get("batch_max", 1) > 1:
            figures += f", {st['batches']} batches of up to {st['batch_max']}"
        print(f"{row['name']}: {row['handler']} [{row['lifecycle']}] on "
              f"{', '.join(row['triggers']) or '(no triggers)'}{figures}")
    return 0


def cmd_fn_invoke(args: argparse.Namespace) -> int:
    state_dir = _state_dir(args)
    if not (state_dir.is_dir() and is_running(state_dir)):
        raise FnCommandError(f"no gateway is running on {state_dir}")
    text = args.event
    if text.startswith("@"):
        try:
            text = Path(text[1:]).read_text()
        except OSError as exc:
            raise FnCommandError(f"{text[1:]}: {exc.strerror}") from None
    try:
        event = json.loads(text)
    except ValueError as exc:
        raise FnCommandError(f"event: not valid JSON: {exc}") from None
    _check_function_exists(state_dir, args.name)
    reply = invoke(state_dir, args.name, event, args.timeout)
    if not reply.get("ok"):
        raise FnCommandError(f"{args.name} failed: {reply.get('errorType')}: "
                             f"{reply.get('errorMessage')}")
    print(json.dumps(reply.get("result")))
    return 0


def _check_function_exists(state_dir: Path, name: str) -> None:
    """Refuse at once a function the running gateway does not have, as its status file
    lists them: a gateway without functions does not even listen on the control topics, so
    the request would only time out."""
    status = read_status(state_dir) or {}
    if status.get("pid") is None or status.get("pid") != read_pid(state_dir):
        return  # not yet written by this gateway: let the gateway answer
    functions = status.get("functions") or {}
    if name not in functions:
        runs = (f"it runs {', '.join(sorted(functions))}" if functions
                else "it runs no functions; see [[functions]] in its config")
        raise FnCommandError(f"{name} failed: ResourceNotFound: no function named {name!r} on "
                             f"the gateway at {state_dir} ({runs})")


def cmd_fn_logs(args: argparse.Namespace) -> int:
    path = _state_dir(args) / "functions" / f"{args.name}.log"
    if not path.exists():
        raise FnCommandError(f"no log for function {args.name} at {path}")
    with open(path, errors="replace") as f:
        for line in deque(f, maxlen=max(0, args.lines)):
            print(line, end="")
    return 0
