"""Shared subscriptions, compiled filters and the subscription trie (pure code).

Validation and matching of plain names and filters are in device_sdk/topic_rules.py (MQTT
3.1.1 section 4.7, MQTT 5.0 sections 4.7-4.8), re-exported here; `$share/{group}/{filter}`
is a shared subscription (MQTT 5.0 section 4.8.2).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from typing import Any

# The rules a device needs too live in the device SDK, which must not import the gateway.
from device_sdk.topic_rules import (
    InvalidTopic,
    topic_matches,
    validate_topic_filter,
    validate_topic_name,
)

__all__ = ["InvalidTopic", "SubscriptionTrie", "compile_filter", "parse_shared",
           "topic_matches", "validate_topic_filter", "validate_topic_name"]

SHARE_PREFIX = "$share/"


def parse_shared(topic_filter: str) -> tuple[str | None, str]:
    """Split `$share/group/filter` into (group, filter); (None, filter) for a plain filter."""
    if not topic_filter.startswith(SHARE_PREFIX):
        return None, topic_filter
    rest = topic_filter[len(SHARE_PREFIX):]
    group, sep, inner = rest.partition("/")
    if not sep or not group or not inner:
        raise InvalidTopic(f"shared subscription {topic_filter!r} must be $share/GROUP/FILTER")
    if "+" in group or "#" in group:
        raise InvalidTopic(f"share name {group!r} contains a wildcard")
    validate_topic_filter(inner)
    return group, inner


def compile_filter(topic_filter: str) -> Callable[[str], bool]:
    """A matcher equal to `topic_matches(topic_filter, t)`, built once for scanning many
    topics (retained messages on subscribe) as one regular expression."""
    parts = []
    levels = topic_filter.split("/")
    for i, level in enumerate(levels):
        if level == "#":
            # "a/#" also matches "a": the separator before '#' is optional
            parts.append("(?:/.*)?" if i else ".*")
            break
        if i:
            parts.append("/")
        parts.append("[^/]*" if level == "+" else re.escape(level))
    pattern = re.compile("".join(parts), re.DOTALL)
    full = pattern.fullmatch
    if topic_filter[:1] in ("+", "#"):
        return lambda topic: not topic.startswith("$") and full(topic) is not None
    return lambda topic: full(topic) is not None


class _Node:
    __slots__ = ("children", "subscribers", "shared")

    def __init__(self) -> None:
        self.children: dict[str, _Node] = {}
        self.subscribers: dict[Any, Any] = {}
        self.shared: dict[str, dict[Any, Any]] = {}


class SubscriptionTrie:
    """Maps filters to subscribers. Each subscriber key holds one value per filter.

    `match(topic)` returns the plain matches as (key, value) pairs and the shared matches as
    (group, filter, {key: value}) triples; the caller picks one member of each share group.
    """

    def __init__(self) -> None:
        self._root = _Node()
        self.count = 0

    def add(self, topic_filter: str, key: Any, value: Any, group: str | None = None) -> bool:
        """Add or replace; returns True when the subscription is new."""
        node = self._root
        for level in topic_filter.split("/"):
            child = node.children.get(level)
            if child is None:
                child = node.children[level] = _Node()
            node = child
        members = node.subscribers if group is None else node.shared.setdefault(group, {})
        new = key not in members
        members[key] = value
        if new:
            self.count += 1
        return new

    def remove(self, topic_filter: str, key: Any, group: str | None = None) -> bool:
        path = [self._root]
        for level in topic_filter.split("/"):
            child = path[-1].children.get(level)
            if child is None:
                return False
            path.append(child)
        node = path[-1]
        members = node.subscribers if group is None else node.shared.get(group)
        if members is None or key not in members:
            return False
        del members[key]
        if group is not None and not members:
            del node.shared[group]
        self.count -= 1
        levels = topic_filter.split("/")
        for i in range(len(levels), 0, -1):  # prune empty branches
            n = path[i]
            if n.children or n.subscribers or n.shared:
                break
            del path[i - 1].children[levels[i - 1]]
        return True

    def match(self, topic: str) -> tuple[list[tuple[Any, Any]], list[tuple[str, str, dict]]]:
        plain: list[tuple[Any, Any]] = []
        shared: list[tuple[str, str, dict]] = []
        levels = topic.split("/")
        dollar = topic.startswith("$")
        self._walk(self._root, levels, 0, dollar, plain, shared, [])
        return plain, shared

    def _walk(self, node: _Node, levels: list[str], i: int, dollar: bool,
              plain: list, shared: list, path: list[str]) -> None:
        children = node.children
        if not children:
            return
        guard = dollar and i == 0  # wildcards at the first level skip $-topics
        hash_node = None if guard else children.get("#")
        if hash_node is not None:
            self._collect(hash_node, plain, shared, path + ["#"])
        if i == len(levels):
            return
        nxt = children.get(levels[i])
        if nxt is not None:
            self._visit(nxt, levels, i + 1, dollar, plain, shared, path + [levels[i]])
        if not guard:
            plus = children.get("+")
            if plus is not None:
                self._visit(plus, levels, i + 1, dollar, plain, shared, path + ["+"])

    def _visit(self, node: _Node, levels: list[str], i: int, dollar: bool,
               plain: list, shared: list, path: list[str]) -> None:
        if i == len(levels):
            self._collect(node, plain, shared, path)
            # "a/#" also matches "a" itself
            hash_node = node.children.get("#")
            if hash_node is not None:
                self._collect(hash_node, plain, shared, path + ["#"])
            return
        self._walk(node, levels, i, dollar, plain, shared, path)

    @staticmethod
    def _collect(node: _Node, plain: list, shared: list, path: list[str]) -> None:
        if node.subscribers:
            plain.extend(node.subscribers.items())
        if node.shared:
            topic_filter = "/".join(path)
            for group, members in node.shared.items():
                shared.append((group, topic_filter, members))

    def __iter__(self) -> Iterator[tuple[str, str | None, Any, Any]]:
        """(filter, group, key, value) for every subscription."""
        stack: list[tuple[_Node, list[str]]] = [(self._root, [])]
        while stack:
            node, path = stack.pop()
            if path:
                f = "/".join(path)
                for key, value in node.subscribers.items():
                    yield f, None, key, value
                for group, members in node.shared.items():
                    for key, value in members.items():
                        yield f, group, key, value
            for level, child in node.children.items():
                stack.append((child, path + [level]))
