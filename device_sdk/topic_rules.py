"""MQTT topic names and filters: what is valid, and what matches what (pure).

One definition for the device SDK and the gateway (which adds shared subscriptions and the
subscription trie in gateway/mqtt/topics.py). Rules from MQTT 3.1.1 section 4.7 and MQTT
5.0 sections 1.5.4 and 4.7: `+` and `#` occupy a whole level, `#` only last; no U+0000;
at most 65,535 bytes of UTF-8; topics beginning with `$` are not matched by a filter whose
first level is a wildcard.
"""

from __future__ import annotations

MAX_TOPIC_BYTES = 65_535


class InvalidTopic(ValueError):
    """A topic name or filter that the protocol forbids; the message says why."""


def validate_topic_name(topic: str) -> None:
    """Raise InvalidTopic for a topic name that no broker accepts in a PUBLISH."""
    if not topic:
        raise InvalidTopic("topic name is empty")
    if "+" in topic or "#" in topic:
        raise InvalidTopic(f"topic name {topic!r} contains a wildcard (+ or #): wildcards "
                           "are for subscriptions; publish to one topic")
    _check_text(topic, "topic name")


def validate_topic_filter(topic_filter: str) -> None:
    """Raise InvalidTopic for a topic filter that no broker accepts in a SUBSCRIBE."""
    if not topic_filter:
        raise InvalidTopic("topic filter is empty")
    levels = topic_filter.split("/")
    last = len(levels) - 1
    for i, level in enumerate(levels):
        if "#" in level and (level != "#" or i != last):
            raise InvalidTopic(f"'#' must be a whole level and the last one in {topic_filter!r}")
        if "+" in level and level != "+":
            raise InvalidTopic(f"'+' must occupy a whole level in {topic_filter!r}")
    _check_text(topic_filter, "topic filter")


def _check_text(text: str, what: str) -> None:
    if "\0" in text:
        raise InvalidTopic(f"{what} {text!r} contains a NUL character")
    if len(text.encode()) > MAX_TOPIC_BYTES:
        raise InvalidTopic(f"{what} longer than 65,535 bytes")


def topic_matches(topic_filter: str, topic: str) -> bool:
    """Whether `topic` matches `topic_filter` (a plain, valid filter)."""
    if topic.startswith("$") and topic_filter[:1] in ("+", "#"):
        return False
    flevels = topic_filter.split("/")
    tlevels = topic.split("/")
    for i, f in enumerate(flevels):
        if f == "#":
            return True
        if i >= len(tlevels):
            return False
        if f != "+" and f != tlevels[i]:
            return False
    return len(flevels) == len(tlevels)
