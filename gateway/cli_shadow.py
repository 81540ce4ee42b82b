"""`lichen shadow get|update|delete|list THING [--name N]`: a thing's shadows.

Where the request goes:

* a gateway runs on the state directory: to it, as a local MQTT client (its Unix socket,
  else its plaintext loopback listener, as status.json lists them), so the shadow service
  applies the request and publishes /accepted, /delta and /documents to devices exactly as
  for any other client;
* no gateway runs: to the shadow store directly, under the state directory's lock (so no
  gateway starts meanwhile), through the same operations and limits;
* `list` always reads the store: AWS IoT has no MQTT topic for listing, and a read-only
  reader of the SQLite store sees exactly what the gateway has committed.

The AWS response document goes to stdout; a rejection also exits 1 with one line on stderr.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .cli_lazy import lazy_command
from .errors import UserError
from .state_dir import StateDirError, StateLock, default_state_dir, is_running


class ShadowCommandError(UserError):
    pass


def add_shadow_commands(sub: argparse._SubParsersAction,
                        state_dir_arg: Callable[[argparse.ArgumentParser], None]) -> None:
    shadow = sub.add_parser("shadow", help="AWS IoT device shadows (classic and named)")
    shadow_sub = shadow.add_subparsers(dest="shadow_command", required=True)

    def cmd(name: str, help_text: str, named: bool = True) -> argparse.ArgumentParser:
        p = shadow_sub.add_parser(name, help=help_text)
        p.add_argument("thing", help="thing name")
        if named:
            p.add_argument("--name", help="named shadow (default: the classic shadow)")
            p.add_argument("--timeout", type=float, default=10.0,
                           help="seconds to wait for the running gateway's answer")
        state_dir_arg(p)
        p.set_defaults(func=cmd_shadow, op=name)
        return p

    cmd("get", "print a shadow document (state, delta, metadata, version)")
    p = cmd("update", "apply a request state document, e.g. "
                      "'{\"state\": {\"desired\": {\"on\": true}}}'")
    p.add_argument("document", help="the JSON request document, or - for stdin")
    cmd("delete", "delete a shadow (its version carries on in the next one)")
    cmd("list", "list a thing's named shadows", named=False)
    p = shadow_sub.add_parser("sync-status", help="sync with the cloud's shadows: per shadow "
                              "the last synced versions, pending changes, last error")
    state_dir_arg(p)
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=lazy_command("gateway.cli_shadow_sync", "cmd_sync_status"))


def _request_document(args: argparse.Namespace) -> dict[str, Any]:
    if args.op != "update":
        return {}
    text = sys.stdin.read() if args.document == "-" else args.document
    try:
        doc = json.loads(text)
    except ValueError as exc:
        raise ShadowCommandError(f"the update document is not valid JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise ShadowCommandError("the update document must be a JSON object, "
                                 "like {\"state\": {\"reported\": {...}}}")
    token = doc.get("clientToken")
    if token is not None and (not isinstance(token, str) or len(token.encode()) > 64):
        raise ShadowCommandError("clientToken must be a string of at most 64 bytes")
    return doc


def cmd_shadow(args: argparse.Namespace) -> int:
    state_dir = Path(args.state_dir) if args.state_dir else default_state_dir()
    if not state_dir.is_dir():
        raise ShadowCommandError(f"no state directory at {state_dir}")
    if args.op == "list":
        ok, doc = _list(state_dir, args.thing)
    else:
        name = args.name or ""
        document = _request_document(args)
        result = None if is_running(state_dir) else _offline(state_dir, args.op, args.thing,
                                                              name, document)
        if result is None:
            from .shadow.client import local_endpoint, request

            result = request(local_endpoint(state_dir), args.thing, name, args.op, document,
                             args.timeout)
        ok, doc = result
    print(json.dumps(doc, indent=2, ensure_ascii=False))
    if not ok:
        print(f"lichen: shadow {args.op} rejected: {doc.get('code')} {doc.get('message')}",
              file=sys.stderr)
        return 1
    return 0


def _list(state_dir: Path, thing: str) -> tuple[bool, dict[str, Any]]:
    from .shadow.document import ShadowError, check_names, list_document
    from .shadow.store import SHADOW_DB, list_named_readonly

    try:
        check_names(thing)
    except ShadowError as err:
        return False, err.document(_now())
    return True, list_document(list_named_readonly(state_dir / SHADOW_DB, thing), _now())


def _now() -> int:
    return int(time.time())


def _offline(state_dir: Path, op: str, thing: str, name: str,
             document: dict[str, Any]) -> tuple[bool, dict[str, Any]] | None:
    """Apply the request to the store itself; None if a gateway took the state directory
    meanwhile (then the request goes to it)."""
    from .cli import resolve_config
    from .shadow import ops
    from .shadow.document import Limits, ShadowError, check_names, parse_update
    from .shadow.store import SHADOW_DB, ShadowStore

    lock = StateLock(state_dir)
    try:
        lock.acquire()
    except StateDirError:
        return None
    try:
        cfg = resolve_config(state_dir, None)
        s = cfg.shadow
        limits = Limits(max_document_bytes=s.max_document_bytes, max_depth=s.max_depth)
        token = document.get("clientToken")
        store = ShadowStore(state_dir / SHADOW_DB, cfg.persistence.sync, s.history_depth)
        try:
            check_names(thing, name)
            if op == "update":
                request = parse_update(json.dumps(document).encode(), limits)
                result = store.open().run(lambda txn: ops.update(
                    txn, thing, name, request, limits, s.max_named_shadows_per_thing))
                return True, result.accepted
            job = ops.get if op == "get" else ops.delete
            return True, store.open().run(lambda txn: job(txn, thing, name, token))
        except ShadowError as err:
            if err.client_token is None:
                err.client_token = token
            return False, err.document(_now())
        finally:
            store.close_sync()
    finally:
        lock.release()
