"""Three-way merge of a shadow's local and cloud states for cloud sync: pure code, no I/O.

The sync keeps, per shadow, the state both sides last agreed on (the base). When either side
has moved on, the two are merged against that base, field by field, following how AWS IoT
itself treats a shadow document ("Device Shadow service documents"):

* Objects are compared field by field, recursing into them; arrays and other values are
  compared and taken whole, as an update replaces an array whole (merging elements could
  build an array neither side ever held).
* A field changed on one side only takes that side's value; a field removed on one side
  (null in an update, or its shadow deleted) stays removed, so deletes propagate.
* A field changed on both sides to the same value keeps it; to different values, the
  section's rule decides: `local` or `cloud` wins. The default is Greengrass
  ShadowManager's: the device is the authority on `reported` (local wins), the cloud on
  `desired` (cloud wins).
* Empty objects are dropped, as the shadow service drops an object emptied by nulls.

One-way sync (`up`: device to cloud, `down`: cloud to device) changes only the receiving
side, with the sending side winning every conflict, and its base is the sending side's state
(what was last sent), so changes the receiver made on its own are never taken as deletes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .document import _same

MISSING: Any = type("Missing", (), {"__repr__": lambda self: "MISSING"})()
SECTIONS = ("desired", "reported")


def prune(value: Any) -> Any:
    """`value` without empty objects (MISSING if it is one, or only held empty ones)."""
    if not isinstance(value, dict):
        return value
    out = {}
    for key, item in value.items():
        item = prune(item)
        if item is not MISSING and item is not None:
            out[key] = item
    return out if out else MISSING


def _same_or_missing(a: Any, b: Any) -> bool:
    if a is MISSING or b is MISSING:
        return a is b
    return _same(a, b)


def _mergeable(value: Any) -> bool:
    return value is MISSING or isinstance(value, dict)


def merge_value(base: Any, local: Any, cloud: Any, local_wins: bool) -> Any:
    """The merged value of one field (MISSING: absent). Inputs are pruned."""
    if _same_or_missing(local, base):
        return cloud
    if _same_or_missing(cloud, base) or _same_or_missing(local, cloud):
        return local
    if _mergeable(local) and _mergeable(cloud):
        # both sides changed fields of an object: merge field by field (a side that removed
        # the object removed each of its fields)
        b = base if isinstance(base, dict) else {}
        loc = local if isinstance(local, dict) else {}
        clo = cloud if isinstance(cloud, dict) else {}
        out = {}
        for key in {**b, **loc, **clo}:
            merged = merge_value(b.get(key, MISSING), loc.get(key, MISSING),
                                 clo.get(key, MISSING), local_wins)
            if merged is not MISSING:
                out[key] = merged
        return out if out else MISSING
    return local if local_wins else cloud


def merge_state(base: dict, local: dict, cloud: dict,
                local_wins: dict[str, bool]) -> dict[str, Any]:
    """The merged state ({"desired": ..., "reported": ...}, sections only when not empty);
    local_wins[section] says who wins a field both sides changed differently."""
    out = {}
    for section in SECTIONS:
        merged = merge_value(prune(base.get(section, MISSING)),
                             prune(local.get(section, MISSING)),
                             prune(cloud.get(section, MISSING)), local_wins[section])
        if merged is not MISSING:
            out[section] = merged
    return out


def patch(current: dict, target: dict) -> dict[str, Any]:
    """The update request `state` that turns `current` into `target` (pruned): changed
    fields, objects as partial updates, null for each field `target` lacks."""
    out: dict[str, Any] = {}
    for key in {**current, **target}:
        have, want = current.get(key, MISSING), target.get(key, MISSING)
        if want is MISSING:
            out[key] = None
        elif isinstance(have, dict) and isinstance(want, dict):
            sub = patch(have, want)
            if sub:
                out[key] = sub
        elif have is MISSING or not _same(have, want):
            out[key] = want
    return out


# ================================================================ what a sync does


@dataclass(frozen=True, slots=True)
class Action:
    """What one side must do: "update" (state: the request state; on an absent shadow it
    creates it) or "delete"."""

    op: str
    state: dict[str, Any] | None = None


@dataclass(frozen=True, slots=True)
class Plan:
    local: Action | None
    cloud: Action | None
    base: dict[str, Any]        # the new base once both actions are done
    base_exists: bool


@dataclass(frozen=True, slots=True)
class Rules:
    direction: str = "both"               # "both", "up" (to the cloud), "down" (to the device)
    desired_local_wins: bool = False      # Greengrass ShadowManager: the cloud owns desired
    reported_local_wins: bool = True      # ... and the device owns reported

    def local_wins(self) -> dict[str, bool]:
        if self.direction == "up":
            return {"desired": True, "reported": True}
        if self.direction == "down":
            return {"desired": False, "reported": False}
        return {"desired": self.desired_local_wins, "reported": self.reported_local_wins}


def _action(side: dict | None, target: dict, gone: bool) -> Action | None:
    if gone:
        return Action("delete") if side is not None else None
    if side is None:
        return Action("update", target) if target else None
    diff = patch(side, target)
    return Action("update", diff) if diff else None


def plan(base: dict | None, base_exists: bool, local: dict | None, cloud: dict | None,
         rules: Rules) -> Plan:
    """What to do to each side. `base`: the state last synced (None: never); `local`,
    `cloud`: each side's state now (None: no shadow there). A shadow deleted on one side
    since the base, whose merge leaves nothing, is deleted on the other too."""
    b = base or {}
    merged = merge_state(b, local or {}, cloud or {}, rules.local_wins())
    gone = base_exists and (local is None or cloud is None) and not merged
    # after the plan, a side holds a shadow unless it was deleted, or was absent and gets
    # nothing (an empty shadow is not copied)
    local_after = not gone and (local is not None or bool(merged))
    cloud_after = not gone and (cloud is not None or bool(merged))
    local_action = _action(local, merged, gone)
    cloud_action = _action(cloud, merged, gone)
    new_base = merged
    if rules.direction == "up":
        local_action, local_after = None, local is not None
        new_base = merge_state({}, local or {}, {}, rules.local_wins())
    elif rules.direction == "down":
        cloud_action, cloud_after = None, cloud is not None
        new_base = merge_state({}, {}, cloud or {}, rules.local_wins())
    return Plan(local_action, cloud_action, new_base, local_after and cloud_after)
