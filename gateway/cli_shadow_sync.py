"""`lichen shadow sync-status --state-dir DIR [--json]`: where the shadow sync stands.

Read from the state directory, so it works whether or not a gateway runs: the sync's
records (STATE_DIR/shadow_sync.sqlite3, read-only), the local store's current versions (a
local change made since the last sync is pending even if no gateway has seen it yet), and,
when a gateway runs, its live figures from status.json.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from .errors import UserError
from .sqlite_schema import query_readonly
from .state_dir import default_state_dir, is_running, read_status


def _local_versions(path: Path) -> dict[tuple[str, str], int | None]:
    from .shadow.store import SCHEMA

    return {(t, n): (v if live else None) for t, n, v, live in query_readonly(
        path, SCHEMA, "SELECT thing, name, version, document IS NOT NULL FROM shadows")}


def sync_status(state_dir: Path) -> dict[str, Any]:
    from .shadow.store import SHADOW_DB
    from .shadow.sync_store import SYNC_DB, read_records

    local = _local_versions(state_dir / SHADOW_DB)
    shadows = []
    for rec in read_records(state_dir / SYNC_DB):
        row = rec.as_status()
        now = local.get((rec.thing, rec.name))
        row["local_version_now"] = now
        row["pending"] = rec.pending or now != rec.local_version
        shadows.append(row)
    doc: dict[str, Any] = {
        "shadows": shadows, "total": len(shadows),
        "pending": sum(r["pending"] for r in shadows),
        "errors": sum(r["last_error"] is not None for r in shadows),
        "gateway_running": is_running(state_dir)}
    status = read_status(state_dir) or {}
    live = status.get("shadow_sync") if doc["gateway_running"] else None
    if live is not None:
        doc["live"] = {k: v for k, v in live.items() if k != "shadows"}
    return doc


def cmd_sync_status(args: argparse.Namespace) -> int:
    state_dir = Path(args.state_dir) if args.state_dir else default_state_dir()
    if not state_dir.is_dir():
        raise UserError(f"no state directory at {state_dir}")
    doc = sync_status(state_dir)
    if args.json:
        print(json.dumps(doc, indent=2))
        return 0
    live = doc.get("live")
    state = ("connected" if live["connected"] else "not connected") if live else \
        ("running, sync off" if doc["gateway_running"] else "no gateway running")
    print(f"shadow sync: {state}; {doc['total']} shadows, {doc['pending']} pending, "
          f"{doc['errors']} with errors")
    if doc["shadows"]:
        print(f"{'THING':<24} {'SHADOW':<16} {'LOCAL':>7} {'CLOUD':>7} {'PENDING':<7} ERROR")
    for r in doc["shadows"]:
        def v(x: int | None) -> str:
            return "-" if x is None else str(x)
        print(f"{r['thing']:<24} {r['shadow']:<16} {v(r['local_version']):>7} "
              f"{v(r['cloud_version']):>7} {'yes' if r['pending'] else 'no':<7} "
              f"{r['last_error'] or ''}")
    return 0
