"""The steps of a deployment that need no running gateway: validate and stage, switch,
switch back, and recover after a crash. Blocking (files, SQLite): the daemon runs them in a
thread, `lichen deploy apply` directly while it holds the state directory's lock."""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Callable
from pathlib import Path

from ..config import ConfigError
from ..errors import UserError
from . import registry_ops, versions
from .checkpoint import checkpoint
from .document import DEPLOYABLE, DocumentRejected, artifacts, validate
from .fetch import ArtifactError, fetch
from .store import (
    AFTER_SWITCH,
    BEFORE_SWITCH,
    FAILED,
    RECEIVED,
    REJECTED,
    STAGED,
    SWITCHED,
    VALIDATED,
    DeploymentStore,
)
from .toml_out import dumps
from .unpack import unpack

log = logging.getLogger("lichen.deploy")

MAX_ATTEMPTS = 3      # runs of one deployment cut short by a restart before it gives up
MAX_BOOTS = 3         # starts on a switched version that never finished its health check

Progress = Callable[[int, str, str | None], None]   # (deployment id, state, detail)


class Refused(UserError):
    """A deployment that ended before the switch; .state is REJECTED or FAILED."""

    def __init__(self, state: str, reason: str) -> None:
        super().__init__(reason)
        self.state = state


_CONFIG_ARRAYS = ("functions", "models", "routes")


def config_path(doc: dict, message: str) -> str:
    """A config error ("functions.NAME.key: ...") as a JSON path into the document."""
    head, _, rest = message.partition(": ")
    parts = head.split(".")
    if parts[0] in _CONFIG_ARRAYS and len(parts) > 1:
        items = doc["config"].get(parts[0], [])
        names = [i.get("name") if isinstance(i, dict) else None for i in items]
        if parts[1] in names:
            head = f"{parts[0]}[{names.index(parts[1])}]" + "".join(f".{p}" for p in parts[2:])
    return f"$.config.{head}: {rest}" if rest else f"$.config: {message}"


def _deployed_config(doc: dict, paths: dict[str, str]) -> dict:
    """The document's config with artifact references replaced by paths in the version."""
    cfg = json.loads(json.dumps(doc["config"]))
    for kind, key in (("functions", "code"), ("models", "path")):
        for item in cfg.get(kind, []):
            name = item[key]["artifact"]
            item[key] = paths[name]
            if kind == "models" and "sha256" not in item:
                item["sha256"] = doc["artifacts"][name]["sha256"].lower()
    for key in DEPLOYABLE:  # a section left out takes its defaults, not the base file's
        cfg.setdefault(key, [] if key in _CONFIG_ARRAYS else {} if key != "log_level"
                       else "info")
    return cfg


def stage(state_dir: Path, store: DeploymentStore, dep_id: int,
          progress: Progress | None = None) -> int:
    """RECEIVED -> VALIDATED -> STAGED: the document checked, its artifacts fetched and
    verified, its config checked as a config file is, the version complete on disk.
    Returns the version; raises Refused (the state is already recorded)."""
    dep = store.get(dep_id)
    note = progress or (lambda *_: None)
    versions.discard_staging(state_dir, dep_id)
    work = versions.staging_dir(state_dir, dep_id)
    try:
        doc = dep.document
        validate(doc)
        registry_ops.check(doc)
        base = Path(dep.base_dir) if dep.base_dir else None
        paths: dict[str, str] = {}
        for art in artifacts(doc).values():
            dest = work / "artifacts" / art.name
            dest.mkdir(parents=True, exist_ok=True)
            got = fetch(art, dest, lambda done, total, a=art: note(dep_id, "FETCHING",
                                                                   f"{a.name} {done}/{total}"),
                        base, versions.root(state_dir) / "cache")
            if art.format == "file":
                paths[art.name] = str(got.relative_to(work))
            else:
                bundle = dest / "code"
                unpack(got, art.format, bundle, art.name)
                got.unlink()
                paths[art.name] = str(bundle.relative_to(work))
        deployed = _deployed_config(doc, paths)
        try:
            versions.compose(state_dir, deployed, work.resolve())
        except ConfigError as exc:
            if str(exc).startswith(tuple(f"{k}" for k in DEPLOYABLE)):
                raise DocumentRejected(config_path(doc, str(exc))) from None
            raise ArtifactError(f"the gateway's own config: {exc}") from None
        (work / versions.VERSION_CONFIG).write_text(dumps(deployed))
        (work / "deployment.json").write_text(json.dumps(doc, indent=2))
    except DocumentRejected as exc:
        versions.discard_staging(state_dir, dep_id)
        _end(store, dep_id, REJECTED, str(exc), note)
        raise Refused(REJECTED, str(exc)) from None
    except (UserError, OSError) as exc:
        versions.discard_staging(state_dir, dep_id)
        reason = str(exc) if isinstance(exc, UserError) else f"staging: {exc}"
        _end(store, dep_id, FAILED, reason, note)
        raise Refused(FAILED, reason) from None
    store.set_state(dep_id, VALIDATED)
    note(dep_id, VALIDATED, None)
    checkpoint(state_dir, VALIDATED)
    versions.publish_version(state_dir, dep_id)
    store.set_state(dep_id, STAGED, version=dep_id)
    note(dep_id, STAGED, f"version {dep_id}")
    checkpoint(state_dir, STAGED)
    return dep_id


def _end(store: DeploymentStore, dep_id: int, state: str, reason: str,
         note: Progress) -> None:
    store.set_state(dep_id, state, reason, reason=reason)
    note(dep_id, state, reason)


def switch(state_dir: Path, store: DeploymentStore, dep_id: int, version: int,
           progress: Progress | None = None) -> int:
    """STAGED -> SWITCHED: `current` now names `version`; returns the version before."""
    previous = versions.current_version(state_dir)
    store.update(dep_id, previous_version=previous)  # known before the switch can happen
    versions.switch_to(state_dir, version)
    checkpoint(state_dir, "SWITCHING")  # renamed, not yet recorded: recover() sees to it
    store.set_state(dep_id, SWITCHED, f"version {previous} -> {version}")
    if progress:
        progress(dep_id, SWITCHED, f"version {version}")
    checkpoint(state_dir, SWITCHED)
    return previous


def switch_back(state_dir: Path, store: DeploymentStore, dep_id: int, reason: str) -> str:
    """After a failed health check: the reason first (so a crash here still knows it), then
    `current` back to the version before, then FAILED. Returns the reason as recorded."""
    dep = store.get(dep_id)
    previous = dep.previous_version or 0
    full = f"{reason}; rolled back to version {previous}"
    store.update(dep_id, reason=full)
    versions.switch_to(state_dir, previous)
    store.set_state(dep_id, FAILED, full, reason=full)
    return full


def recover(state_dir: Path, store: DeploymentStore) -> list[str]:
    """After a restart (the caller holds the state directory's lock): put every unfinished
    deployment where it can go on from. Returns what was done, one line each, to log."""
    notes: list[str] = []
    current = versions.current_version(state_dir)
    for dep in store.in_states(BEFORE_SWITCH + AFTER_SWITCH):
        if dep.state in BEFORE_SWITCH:
            if dep.state == STAGED and current == dep.version:
                # the switch's rename happened; its record did not
                store.set_state(dep.id, SWITCHED, "the switch was done before the restart")
                notes.append(f"deployment {dep.id}: switched to version {dep.version} before "
                             "the restart; health-checking it")
                continue
            versions.discard_staging(state_dir, dep.id)
            staged = dep.version if dep.kind == "apply" else None  # a rollback's is old
            if staged is not None and current != staged:
                shutil.rmtree(versions.version_dir(state_dir, staged), ignore_errors=True)
            attempts = dep.attempts + 1
            if attempts >= MAX_ATTEMPTS:
                reason = (f"interrupted {attempts} times before the switch; nothing changed, "
                          f"version {current} stays")
                store.set_state(dep.id, FAILED, reason, reason=reason, attempts=attempts)
                notes.append(f"deployment {dep.id}: {reason}")
            else:
                extra = {"version": None} if dep.kind == "apply" else {}
                store.set_state(dep.id, RECEIVED, f"re-run after a restart in {dep.state}",
                                attempts=attempts, **extra)
                notes.append(f"deployment {dep.id}: interrupted in {dep.state} before the "
                             "switch; nothing changed, running it again")
            continue
        # after the switch
        if current != dep.version:
            # a rollback's rename happened, its record did not
            reason = dep.reason or "interrupted during its rollback"
            if "rolled back" not in reason:
                reason += f"; rolled back to version {current}"
            store.set_state(dep.id, FAILED, reason, reason=reason)
            notes.append(f"deployment {dep.id}: {reason}")
            continue
        if dep.reason:  # its health check had failed; the rollback did not start
            reason = switch_back(state_dir, store, dep.id, dep.reason)
            current = versions.current_version(state_dir)
            notes.append(f"deployment {dep.id}: {reason}")
            continue
        boots = dep.boots + 1
        if boots > MAX_BOOTS:
            reason = switch_back(state_dir, store, dep.id,
                                 f"the gateway did not come up on version {dep.version} "
                                 f"({dep.boots} starts)")
            current = versions.current_version(state_dir)
            notes.append(f"deployment {dep.id}: {reason}")
            continue
        store.update(dep.id, boots=boots)
        notes.append(f"deployment {dep.id}: found in {dep.state} on version {dep.version} "
                     "(switched while no gateway ran, or cut short by a restart); "
                     "health-checking it")
    return notes


def rollback_target(state_dir: Path, store: DeploymentStore) -> tuple[int, int]:
    """(current version, the version before it) for `lichen deploy rollback`."""
    current = versions.current_version(state_dir)
    if current == 0:
        raise UserError("nothing to roll back: no deployed version is current (the gateway "
                        "runs its own config.toml)")
    dep = store.last_switched_to(current)
    target = dep.previous_version if dep and dep.previous_version is not None else 0
    if target and not versions.version_dir(state_dir, target).is_dir():
        raise UserError(f"cannot roll back: version {target} is no longer on disk")
    return current, target


def log_notes(notes: list[str]) -> None:
    for line in notes:
        log.warning("%s", line)
