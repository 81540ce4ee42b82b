"""Topic names, filters, shared subscriptions and the subscription trie."""

from __future__ import annotations

import re
from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.mqtt.topics import (
    InvalidTopic,
    SubscriptionTrie,
    compile_filter,
    parse_shared,
    topic_matches,
    validate_topic_filter,
    validate_topic_name,
)

# --------------------------------------------------------------------------- validation


@pytest.mark.parametrize("name", [
    "a", "a/b", "/", "//", "/a", "a/", "a//b", "$SYS/broker/load", "$", "sport/tennis/player1",
    " ", "ünïcödé/主题", "a b/c", "x" * 1000,
])
def test_valid_topic_names(name):
    validate_topic_name(name)


@pytest.mark.parametrize("name", [
    "", "+", "#", "a/+", "a/#", "a/+/b", "a+", "#a", "sport/tennis#", "a/b+c",
])
def test_invalid_topic_names(name):
    with pytest.raises(InvalidTopic):
        validate_topic_name(name)


def test_topic_name_byte_limit():
    validate_topic_name("a" * 65535)
    with pytest.raises(InvalidTopic):
        validate_topic_name("a" * 65536)
    with pytest.raises(InvalidTopic):
        validate_topic_name("é" * 32768)  # 65,536 bytes in UTF-8


def test_invalid_topic_is_value_error():
    assert issubclass(InvalidTopic, ValueError)


@pytest.mark.parametrize("topic_filter", [
    "#", "+", "a", "a/b", "a/#", "a/+", "+/+", "+/#", "/+", "+/", "/", "//", "a/+/b",
    "sport/tennis/+/#", "$SYS/#", "$SYS/+/x", "a//#", "+/+/+", "$share", "$share/",
])
def test_valid_filters(topic_filter):
    validate_topic_filter(topic_filter)


@pytest.mark.parametrize("topic_filter", [
    "", "a#", "#a", "a/#/b", "#/", "#/#", "##", "a/b#", "a+", "+a", "a/+b", "++", "a/b+/c",
    "sport/tennis#", "sport+",
])
def test_invalid_filters(topic_filter):
    with pytest.raises(InvalidTopic):
        validate_topic_filter(topic_filter)


@pytest.mark.parametrize(("topic_filter", "expected"), [
    ("a/b", (None, "a/b")),
    ("#", (None, "#")),
    ("$SYS/#", (None, "$SYS/#")),
    ("$shared/g/a", (None, "$shared/g/a")),
    ("$share/g/a/b", ("g", "a/b")),
    ("$share/g/#", ("g", "#")),
    ("$share/g/+/x/#", ("g", "+/x/#")),
    ("$share/group-1/$SYS/x", ("group-1", "$SYS/x")),
    ("$share/g//", ("g", "/")),
    ("$share/g$/a", ("g$", "a")),
])
def test_parse_shared(topic_filter, expected):
    assert parse_shared(topic_filter) == expected


@pytest.mark.parametrize("topic_filter", [
    "$share/g",           # no filter
    "$share/g/",          # empty filter
    "$share//a",          # empty share name
    "$share/",
    "$share/+/a",         # wildcard in share name
    "$share/g#/a",
    "$share/a+b/c",
    "$share/g/a#",        # invalid inner filter
    "$share/g/a/#/b",
])
def test_parse_shared_invalid(topic_filter):
    with pytest.raises(InvalidTopic):
        parse_shared(topic_filter)


# --------------------------------------------------------------------------- matching

_MATCH_CASES = [
    # spec 4.7.1.2 / 4.7.1.3 examples
    ("sport/tennis/player1/#", "sport/tennis/player1", True),
    ("sport/tennis/player1/#", "sport/tennis/player1/ranking", True),
    ("sport/tennis/player1/#", "sport/tennis/player1/score/wimbledon", True),
    ("sport/#", "sport", True),
    ("sport/tennis/+", "sport/tennis/player1", True),
    ("sport/tennis/+", "sport/tennis/player1/tournament", False),
    ("sport/+", "sport", False),
    ("sport/+", "sport/", True),
    ("+/+", "/finance", True),
    ("/+", "/finance", True),
    ("+", "/finance", False),
    # 4.7.2: $-topics
    ("#", "$SYS/x", False),
    ("+/monitor/Clients", "$SYS/monitor/Clients", False),
    ("$SYS/#", "$SYS/monitor/Clients", True),
    ("$SYS/monitor/+", "$SYS/monitor/Clients", True),
    ("$SYS/#", "$SYS", True),
    ("+", "$", False),
    ("a/+", "a/$x", True),
    ("a/#", "a/$x", True),
    # empty levels
    ("#", "/", True),
    ("+/+", "/", True),
    ("+", "/", False),
    ("a//b", "a//b", True),
    ("a/+/b", "a//b", True),
    ("a/#", "a", True),
    ("a/#", "ab", False),
    ("a", "a/", False),
    ("a/", "a", False),
]


@pytest.mark.parametrize(("topic_filter", "topic", "expected"), _MATCH_CASES)
def test_topic_matches_examples(topic_filter, topic, expected):
    assert topic_matches(topic_filter, topic) is expected
    assert reference_match(topic_filter, topic) is expected
    trie = SubscriptionTrie()
    trie.add(topic_filter, "k", 1)
    trie.add(topic_filter, "s", 2, group="g")
    plain, shared = trie.match(topic)
    assert plain == ([("k", 1)] if expected else [])
    assert shared == ([("g", topic_filter, {"s": 2})] if expected else [])


def reference_match(topic_filter: str, topic: str) -> bool:
    """Independent matcher: translate the filter to a regular expression."""
    if topic.startswith("$") and topic_filter.split("/")[0] in ("+", "#"):
        return False
    levels = topic_filter.split("/")
    parts = []
    for i, level in enumerate(levels):
        sep = "/" if i else ""
        if level == "#":
            # "a/#" covers "a" itself and everything below it; a lone "#" covers everything
            parts.append(f"(?:{sep}.*)?" if i else ".*")
        elif level == "+":
            parts.append(sep + "[^/]*")
        else:
            parts.append(sep + re.escape(level))
    return re.fullmatch("".join(parts), topic, re.DOTALL) is not None


# --------------------------------------------------------------------------- property tests

TOPIC_LEVELS = ["a", "b", "", "$SYS", "$", "c"]
topic_levels = st.sampled_from(TOPIC_LEVELS)
topics = st.lists(topic_levels, min_size=1, max_size=4).map("/".join).filter(bool)


@st.composite
def filters(draw) -> str:
    """Valid filters over the same levels plus "+", often ending in "#"."""
    levels = draw(st.lists(st.sampled_from([*TOPIC_LEVELS, "+"]), max_size=4))
    if not levels or draw(st.booleans()):
        levels.append("#")
    return "/".join(levels)


plain_filters = filters().filter(bool)
groups = st.sampled_from([None, None, "g1", "g2"])
keys = st.sampled_from(["k1", "k2", "k3"])


@settings(max_examples=500, deadline=None)
@given(plain_filters, topics)
def test_topic_matches_agrees_with_reference(topic_filter, topic):
    validate_topic_filter(topic_filter)
    validate_topic_name(topic)
    assert topic_matches(topic_filter, topic) == reference_match(topic_filter, topic)


# An operation: ("add", filter, key, group, value) or ("remove", filter, key, group).
operations = st.one_of(
    st.tuples(st.just("add"), plain_filters, keys, groups, st.integers(0, 9)),
    st.tuples(st.just("remove"), plain_filters, keys, groups),
)


def _apply(ops) -> tuple[SubscriptionTrie, dict]:
    trie = SubscriptionTrie()
    model: dict[tuple[str, str | None, str], int] = {}
    for op in ops:
        if op[0] == "add":
            _, topic_filter, key, group, value = op
            new = trie.add(topic_filter, key, value, group)
            assert new == ((topic_filter, group, key) not in model)
            model[(topic_filter, group, key)] = value
        else:
            _, topic_filter, key, group = op
            removed = trie.remove(topic_filter, key, group)
            assert removed == ((topic_filter, group, key) in model)
            model.pop((topic_filter, group, key), None)
        assert trie.count == len(model)
    return trie, model


def _expected(model: dict, topic: str):
    plain = Counter()
    shared: dict[tuple[str, str], dict] = {}
    for (topic_filter, group, key), value in model.items():
        if not reference_match(topic_filter, topic):
            continue
        if group is None:
            plain[(key, value)] += 1
        else:
            shared.setdefault((group, topic_filter), {})[key] = value
    return plain, shared


@settings(max_examples=400, deadline=None)
@given(st.lists(operations, max_size=30), st.lists(topics, min_size=1, max_size=8), st.data())
def test_trie_against_reference(ops, probe_topics, data):
    trie, model = _apply(ops)
    # Remove a random subset of what is there, exercising pruning.
    present = sorted(model, key=repr)
    drop = data.draw(st.lists(st.sampled_from(present), unique=True) if present else st.just([]),
                     label="drop")
    for topic_filter, group, key in drop:
        assert trie.remove(topic_filter, key, group)
        assert not trie.remove(topic_filter, key, group)
        del model[(topic_filter, group, key)]
        assert trie.count == len(model)

    assert sorted(trie, key=repr) == sorted(
        ((f, g, k, v) for (f, g, k), v in model.items()), key=repr)

    for topic in probe_topics:
        plain, shared = trie.match(topic)
        want_plain, want_shared = _expected(model, topic)
        assert Counter(plain) == want_plain, topic
        assert len(shared) == len(want_shared), topic
        got = {}
        for triple in shared:
            assert isinstance(triple, tuple) and len(triple) == 3
            group, topic_filter, members = triple
            assert (group, topic_filter) not in got
            got[(group, topic_filter)] = dict(members)
        assert got == want_shared, topic


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(plain_filters, keys, groups), max_size=20))
def test_trie_add_then_remove_everything_leaves_it_empty(subs):
    trie = SubscriptionTrie()
    added = set()
    for topic_filter, key, group in subs:
        assert trie.add(topic_filter, key, 0, group) == ((topic_filter, group, key) not in added)
        added.add((topic_filter, group, key))
    assert trie.count == len(added)
    for topic_filter, group, key in sorted(added, key=repr):
        assert trie.remove(topic_filter, key, group)
    assert trie.count == 0
    assert list(trie) == []
    assert trie.match("a") == ([], [])
    # Every branch was pruned.
    assert trie._root.children == {}


def test_trie_replace_keeps_count():
    trie = SubscriptionTrie()
    assert trie.add("a/+", "k", 1)
    assert not trie.add("a/+", "k", 2)
    assert trie.count == 1
    assert trie.match("a/b") == ([("k", 2)], [])
    assert trie.add("a/+", "k", 3, group="g")  # a shared subscription is a separate entry
    assert trie.count == 2
    assert trie.match("a/b") == ([("k", 2)], [("g", "a/+", {"k": 3})])
    assert sorted(trie, key=repr) == [("a/+", "g", "k", 3), ("a/+", None, "k", 2)]


def test_trie_remove_misses():
    trie = SubscriptionTrie()
    trie.add("a/b", "k", 1)
    assert not trie.remove("a/b/c", "k")
    assert not trie.remove("a", "k")
    assert not trie.remove("a/b", "other")
    assert not trie.remove("a/b", "k", group="g")
    assert trie.count == 1
    assert trie.remove("a/b", "k")
    assert trie.count == 0


def test_trie_same_key_through_several_filters():
    trie = SubscriptionTrie()
    for f in ("a/b", "a/+", "#", "+/#", "a/#", "$SYS/#"):
        trie.add(f, "k", f)
    plain, shared = trie.match("a/b")
    assert sorted(v for _, v in plain) == sorted(["a/b", "a/+", "#", "+/#", "a/#"])
    plain, _ = trie.match("a")
    assert sorted(v for _, v in plain) == sorted(["#", "+/#", "a/#"])
    plain, _ = trie.match("$SYS/x")
    assert [v for _, v in plain] == ["$SYS/#"]
    assert shared == []


def test_trie_shared_groups_are_triples():
    trie = SubscriptionTrie()
    trie.add("s/+", "c1", 1, group="g1")
    trie.add("s/+", "c2", 2, group="g1")
    trie.add("s/#", "c3", 0, group="g1")
    trie.add("s/+", "c4", 1, group="g2")
    trie.add("s/+", "c5", 1)
    plain, shared = trie.match("s/x")
    assert plain == [("c5", 1)]
    assert sorted(shared, key=lambda t: (t[0], t[1])) == [
        ("g1", "s/#", {"c3": 0}),
        ("g1", "s/+", {"c1": 1, "c2": 2}),
        ("g2", "s/+", {"c4": 1}),
    ]
    trie.remove("s/+", "c1", group="g1")
    trie.remove("s/+", "c2", group="g1")
    _, shared = trie.match("s/x")
    assert sorted(shared, key=lambda t: (t[0], t[1])) == [
        ("g1", "s/#", {"c3": 0}), ("g2", "s/+", {"c4": 1})]


@settings(max_examples=400, deadline=None)
@given(st.lists(st.sampled_from(["a", "b", "", "$SYS", "+", "#"]), min_size=1, max_size=4),
       st.lists(st.sampled_from(["a", "b", "", "$SYS", "$", "c"]), min_size=1, max_size=5))
def test_compiled_filter_agrees_with_topic_matches(filter_levels, topic_levels):
    topic_filter = "/".join(filter_levels)
    try:
        validate_topic_filter(topic_filter)
    except InvalidTopic:
        return
    topic = "/".join(topic_levels)
    assert compile_filter(topic_filter)(topic) == topic_matches(topic_filter, topic)
