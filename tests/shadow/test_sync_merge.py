"""The sync's three-way merge and plans, against a deliberately naive reference: flatten each
state to {path: leaf}, decide each path on its own, build the result back."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.shadow.document import merge_state as apply_state
from gateway.shadow.document import metadata_for
from gateway.shadow.merge import MISSING, Action, Rules, merge_state, patch, plan, prune
from gateway.shadow.ratelimit import Limiter, TokenBucket

# A fixed shape (which paths are objects) so that flattening is faithful; values come from
# a small pool so that both sides often agree or touch the same field.
LEAF_PATHS = [("a",), ("b",), ("o", "x"), ("o", "y"), ("o", "p", "z"), ("l",)]
LEAVES = st.sampled_from([1, 2, "s", True, [1, 2], [2, 1], 0.5])


def section_strategy() -> st.SearchStrategy[dict]:
    return st.dictionaries(st.sampled_from(LEAF_PATHS), LEAVES, max_size=len(LEAF_PATHS))


def build(flat: dict[tuple, Any]) -> dict:
    out: dict = {}
    for path, value in flat.items():
        node = out
        for key in path[:-1]:
            node = node.setdefault(key, {})
        node[path[-1]] = value
    return out


def flatten(value: dict, prefix: tuple = ()) -> dict[tuple, Any]:
    out = {}
    for key, item in value.items():
        if isinstance(item, dict):
            out.update(flatten(item, prefix + (key,)))
        else:
            out[prefix + (key,)] = item
    return out


def naive_merge(base: dict, local: dict, cloud: dict, local_wins: bool) -> dict:
    b, loc, c = flatten(base), flatten(local), flatten(cloud)
    out = {}
    for path in set(b) | set(loc) | set(c):
        bv, lv, cv = (repr(x.get(path, "<none>")) for x in (b, loc, c))
        if lv == bv:
            pick = c
        elif cv == bv or lv == cv:
            pick = loc
        else:
            pick = loc if local_wins else c
        if path in pick:
            out[path] = pick[path]
    return build(out)


def canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True)  # true is not 1 here


def state(desired: dict, reported: dict) -> dict:
    out = {}
    if desired:
        out["desired"] = build(desired)
    if reported:
        out["reported"] = build(reported)
    return out


STATES = st.builds(state, section_strategy(), section_strategy())
RULES = st.booleans()


@settings(max_examples=400)
@given(STATES, STATES, STATES, RULES, RULES)
def test_merge_matches_the_naive_reference(base, local, cloud, d_local, r_local) -> None:
    got = merge_state(base, local, cloud, {"desired": d_local, "reported": r_local})
    want = {}
    for section, wins in (("desired", d_local), ("reported", r_local)):
        merged = naive_merge(base.get(section, {}), local.get(section, {}),
                             cloud.get(section, {}), wins)
        if merged:
            want[section] = merged
    assert canonical(got) == canonical(want)


@given(STATES, STATES)
def test_one_side_unchanged_takes_the_other(base, changed) -> None:
    rules = {"desired": False, "reported": True}
    assert merge_state(base, base, changed, rules) == changed
    assert merge_state(base, changed, base, rules) == changed


@given(STATES, STATES)
def test_patch_applied_by_the_shadow_service_gives_the_target(current, target) -> None:
    request = patch(current, target)
    new, _ = apply_state(current, metadata_for(current, 0), request, 0)
    assert new == target


def test_examples_of_the_rules() -> None:
    rules = Rules().local_wins()     # desired: cloud wins, reported: local wins
    base = {"desired": {"t": 20, "mode": "eco"}, "reported": {"t": 19, "fw": "1.0"}}
    local = {"desired": {"t": 21, "mode": "eco"}, "reported": {"t": 22, "fw": "1.0"}}
    cloud = {"desired": {"t": 25, "mode": "eco", "fan": 1}, "reported": {"t": 30}}
    assert merge_state(base, local, cloud, rules) == {
        "desired": {"t": 25, "mode": "eco", "fan": 1},   # both changed t: cloud wins
        "reported": {"t": 22}}                            # both changed t: local wins;
    # fw deleted in the cloud only: the delete is kept
    # arrays are whole values
    assert merge_state({"reported": {"a": [1, 2]}}, {"reported": {"a": [1, 2, 3]}},
                       {"reported": {"a": [0, 1, 2]}}, rules) == {"reported": {"a": [1, 2, 3]}}
    # a type change on one side only
    assert merge_state({"reported": {"a": 1}}, {"reported": {"a": {"x": 1}}},
                       {"reported": {"a": 1, "b": 2}}, rules) == \
        {"reported": {"a": {"x": 1}, "b": 2}}
    # an object deleted on one side, a field of it changed on the other
    assert merge_state({"desired": {"o": {"x": 1, "y": 1}}}, {"desired": {}},
                       {"desired": {"o": {"x": 2, "y": 1}}}, rules) == {"desired": {"o": {"x": 2}}}
    assert prune({"a": {}, "b": {"c": {}}}) is MISSING


def test_plans() -> None:
    both = Rules()
    # first sync: only local has the shadow: the cloud gets it whole
    p = plan(None, False, {"reported": {"a": 1}}, None, both)
    assert p.local is None and p.cloud == Action("update", {"reported": {"a": 1}})
    assert p.base_exists
    # a shadow deleted locally, the cloud unchanged: deleted there too
    base = {"reported": {"a": 1}}
    p = plan(base, True, None, base, both)
    assert p.cloud == Action("delete") and p.local is None and not p.base_exists
    # deleted locally but changed in the cloud: what the cloud changed survives, and the
    # shadow comes back locally with it
    p = plan(base, True, None, {"reported": {"a": 1, "b": 2}}, both)
    assert p.local == Action("update", {"reported": {"b": 2}})
    assert p.cloud == Action("update", {"reported": {"a": None}})
    # nothing changed: nothing to do
    p = plan(base, True, base, base, both)
    assert p.local is None and p.cloud is None
    # an empty shadow on one side is not copied, and not taken for a delete later
    p = plan(None, False, None, {}, both)
    assert p.local is None and p.cloud is None and not p.base_exists
    # one way: up never touches local, and its base is what local holds
    p = plan({"reported": {"a": 1}}, True, {"reported": {"a": 2}},
             {"reported": {"a": 1, "c": 3}}, Rules(direction="up"))
    assert p.local is None and p.cloud == Action("update", {"reported": {"a": 2}})
    assert p.base == {"reported": {"a": 2}}
    p = plan({"desired": {"a": 1}}, True, {"desired": {"a": 5}}, {"desired": {"a": 2}},
             Rules(direction="down", desired_local_wins=True))
    assert p.cloud is None and p.local == Action("update", {"desired": {"a": 2}})


def test_token_bucket() -> None:
    bucket = TokenBucket(rate=10, burst=2, now=0.0)
    for _ in range(2):
        assert bucket.wait(0.0) == 0
        bucket.take(0.0)
    assert abs(bucket.wait(0.0) - 0.1) < 1e-9
    assert bucket.wait(0.1) == 0
    # never more than burst + rate * t in any span of t seconds
    bucket, now, sent = TokenBucket(rate=50, burst=5, now=0.0), 0.0, []
    while len(sent) < 300:
        w = bucket.wait(now)
        if w:
            now += w
            continue
        bucket.take(now)
        sent.append(now)
    for i, start in enumerate(sent):
        within = [t for t in sent[i:] if t - start <= 1.0]
        assert len(within) <= 5 + 50 * 1.0 + 1e-9


def test_limiter_per_thing() -> None:
    lim = Limiter(rate=1000, burst=1000, thing_rate=2, now=0.0)
    lim.take("a", 0.0)
    lim.take("a", 0.0)
    assert lim.wait("a", 0.0) > 0       # a's own bucket is empty
    assert lim.wait("b", 0.0) == 0      # others are not held back by it
