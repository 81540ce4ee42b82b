"""`lichen deploy ...`. With a gateway running on the state directory, the deployment is
written to deployments.sqlite3 and the gateway is woken with SIGUSR1; it runs it and the
command follows its state there to the end. With none running, the command takes the state
directory's lock and validates, stages and switches itself; the next start health-checks
the version. Exit 0: SUCCEEDED (or switched, offline); 1 with one line otherwise."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

from ..errors import UserError
from ..state_dir import (
    StateDirError,
    StateLock,
    default_state_dir,
    ensure_state_dir,
    read_pid,
    read_status,
)
from . import pipeline, versions
from .agent import WAKE_SIGNAL
from .document import DocumentRejected, parse
from .store import DB_NAME, FINAL, SUCCEEDED, SWITCHED, DeploymentStore

POLL_S = 0.1


class DeployError(UserError):
    pass


def _state_dir(args: argparse.Namespace) -> Path:
    return Path(args.state_dir) if args.state_dir else default_state_dir()


def _read_document(path: str) -> tuple[dict, Path | None]:
    try:
        text = sys.stdin.read() if path == "-" else Path(path).read_text()
    except OSError as exc:
        raise DeployError(f"{path}: cannot read: {exc.strerror}") from None
    base = None if path == "-" else Path(path).resolve().parent
    try:
        return parse(text), base
    except DocumentRejected as exc:
        raise DeployError(f"{path}: rejected: {exc}") from None


def _gateway_state(state_dir: Path) -> str:
    """'none', 'deployable' or 'refusing' (started with --config), else 'starting'."""
    lock = StateLock(state_dir)
    try:
        lock.acquire()
    except StateDirError:
        status = read_status(state_dir) or {}
        if status.get("pid") != read_pid(state_dir):
            return "starting"
        enabled = (status.get("deployments") or {}).get("enabled")
        return "deployable" if enabled else "refusing"
    lock.release()
    return "none"


def _outcome(dep_id: int, state: str, reason: str | None, version: int | None) -> int:
    if state == SUCCEEDED:
        print(f"deployment {dep_id} SUCCEEDED: version {version} runs")
        return 0
    if state == SWITCHED:
        print(f"deployment {dep_id}: switched to version {version}; no gateway is running, "
              "the next start health-checks it")
        return 0
    raise DeployError(f"deployment {dep_id} {state}: {reason}")


def _submit(state_dir: Path, kind: str, document: dict | None, base_dir: Path | None,
            version: int | None, timeout: float) -> int:
    ensure_state_dir(state_dir)
    if _gateway_state(state_dir) == "refusing":
        raise DeployError(f"the gateway on {state_dir} was started with --config FILE, which "
                          "takes precedence over deployments; restart it without --config")
    store = DeploymentStore(state_dir)
    try:
        dep_id = store.add(kind, document, base_dir=str(base_dir) if base_dir else None,
                           version=version)
        lock = StateLock(state_dir)
        try:
            lock.acquire()
        except StateDirError:
            return _follow(state_dir, store, dep_id, timeout)
        try:  # no gateway: this process does what the gateway would, up to the switch
            try:
                if kind == "apply":
                    version = pipeline.stage(state_dir, store, dep_id)
                pipeline.switch(state_dir, store, dep_id, version)
            except pipeline.Refused as exc:
                raise DeployError(f"deployment {dep_id} {exc.state}: {exc}") from None
        finally:
            lock.release()
        return _outcome(dep_id, SWITCHED, None, version)
    finally:
        store.close()


def _follow(state_dir: Path, store: DeploymentStore, dep_id: int, timeout: float) -> int:
    """Wake the running gateway, then read the deployment's state until it is final."""
    deadline = time.monotonic() + timeout
    woken = False
    while time.monotonic() < deadline:
        dep = store.get(dep_id)
        if dep.final:
            return _outcome(dep_id, dep.state, dep.reason, dep.version)
        if not woken and _gateway_state(state_dir) == "deployable":
            pid = read_pid(state_dir)
            if pid:  # its agent is up (status.json says so), so SIGUSR1 is handled
                os.kill(pid, WAKE_SIGNAL)
                woken = True
        time.sleep(POLL_S)
    dep = store.get(dep_id)
    raise DeployError(f"deployment {dep_id} still {dep.state} after {timeout:g} s; see "
                      "`lichen deploy status`")


def cmd_deploy_apply(args: argparse.Namespace) -> int:
    document, base_dir = _read_document(args.file)
    return _submit(_state_dir(args), "apply", document, base_dir, None, args.timeout)


def cmd_deploy_rollback(args: argparse.Namespace) -> int:
    state_dir = _state_dir(args)
    if not (state_dir / DB_NAME).exists():
        raise DeployError(f"nothing to roll back: no deployment on {state_dir}")
    store = DeploymentStore(state_dir)
    try:
        _current, target = pipeline.rollback_target(state_dir, store)
    finally:
        store.close()
    return _submit(state_dir, "rollback", None, None, target, args.timeout)


def _when(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="seconds")


def _open(state_dir: Path) -> DeploymentStore | None:
    if not state_dir.is_dir():
        raise DeployError(f"no state directory at {state_dir}")
    return DeploymentStore(state_dir) if (state_dir / DB_NAME).exists() else None


def cmd_deploy_status(args: argparse.Namespace) -> int:
    state_dir = _state_dir(args)
    store = _open(state_dir)
    current = versions.current_version(state_dir)
    last = None
    if store is not None:
        deps = store.all(limit=1)
        last = deps[0].as_dict() if deps else None
        store.close()
    progress = _live_progress(state_dir, last)
    if args.json:
        print(json.dumps({"version": current, "last": last, "progress": progress}, indent=2))
        return 0
    print(f"version: {current}" + (" (the gateway's own config.toml)" if current == 0 else ""))
    if last:
        print(f"last deployment: {last['id']} {last['kind']} {last['state']} at "
              f"{_when(last['updated_at'])}" + (f": {last['reason']}" if last['reason'] else ""))
    if progress:
        print(f"in progress: {progress['step']}"
              + (f" {progress['detail']}" if progress.get("detail") else ""))
    return 0


def _live_progress(state_dir: Path, last: dict | None) -> dict | None:
    """The running gateway's latest step of the deployment still under way (status.json,
    rewritten every 2 s: e.g. FETCHING digits-model 524288/1048576)."""
    if not last or last["state"] in FINAL:
        return None
    live = ((read_status(state_dir) or {}).get("deployments") or {}).get("progress")
    if not live or live.get("deployment") != last["id"]:
        return None
    return live


def cmd_deploy_history(args: argparse.Namespace) -> int:
    store = _open(_state_dir(args))
    rows = []
    if store is not None:
        for dep in store.all():
            row = dep.as_dict()
            row["events"] = store.events(dep.id)
            rows.append(row)
        store.close()
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    for row in rows:
        print(f"{row['id']:>4} {_when(row['created_at'])} {row['kind']:<8} "
              f"{row['state']:<12} version {row['version']}"
              + (f"  {row['reason']}" if row["reason"] else ""))
    return 0
