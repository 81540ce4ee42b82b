"""`[[routes]]`: which local topics go up to the cloud and which cloud topics come down.

A route has a direction, a topic filter on its source side, a topic template for the other
side, and a QoS. The template's placeholders: `{topic}` the whole source topic, `{1}`,
`{2}`... its levels (1-based), `{thing}` the gateway's cloud thing name (also allowed in the
filter). An up route may batch: `batch = { max_messages = N, max_bytes = B, max_delay_ms = D }`
packs what it sends to one cloud topic into one publish (gateway.cloud.batch). The pure
parts live here; the bridge does the I/O.
"""

from __future__ import annotations

import functools
import re
import string
from dataclasses import dataclass
from typing import Any

from ..config import ConfigError
from ..config_tables import check_named_table
from ..mqtt.topics import InvalidTopic, validate_topic_filter, validate_topic_name
from .batch import MAX_PAYLOAD, BatchSettings

DIRECTIONS = ("up", "down")
_KEYS = {"name", "direction", "filter", "topic", "qos", "batch"}
# batch.FIELD: (lowest, highest, what the bound is)
_BATCH_RANGES = {"max_messages": (1, 10_000, ""),
                 "max_bytes": (256, MAX_PAYLOAD, " (AWS IoT Core's 128 KB payload limit)"),
                 "max_delay_ms": (0, 60_000, "")}
_BATCH_DEFAULTS = BatchSettings()
_LEVEL = re.compile(r"[1-9][0-9]{0,2}")
MAX_ROUTES = 1000


class RouteConfigError(ConfigError):
    """One line naming the field, as every config error."""


@dataclass(frozen=True, slots=True)
class Route:
    name: str
    direction: str          # "up": local -> cloud; "down": cloud -> local
    filter: str             # on the source side; may contain {thing}
    topic: str = "{topic}"  # template for the destination topic
    qos: int = 1
    batch: BatchSettings | None = None   # up routes: pack messages per cloud topic

    def source_filter(self, thing: str) -> str:
        return self.filter.replace("{thing}", thing)

    def target_topic(self, source_topic: str, thing: str) -> str:
        """The destination topic for a message on `source_topic`; InvalidTopic if the
        template names a level the topic does not have or the result is not a topic."""
        parts, needs_levels = _compiled(self.topic)
        if parts is _WHOLE_TOPIC:
            return source_topic
        levels = source_topic.split("/") if needs_levels else ()
        out = []
        for part in parts:
            if type(part) is str:
                out.append(part)
            elif part is _TOPIC:
                out.append(source_topic)
            elif part is _THING:
                out.append(thing)
            else:
                if part > len(levels):
                    raise InvalidTopic(f"route {self.name}: topic {source_topic!r} has no "
                                       f"level {part}")
                out.append(levels[part - 1])
        result = "".join(out)
        validate_topic_name(result)
        return result


class _Placeholder:
    __slots__ = ()


_TOPIC, _THING = _Placeholder(), _Placeholder()
_WHOLE_TOPIC: list = [_TOPIC]


@functools.lru_cache(maxsize=1024)
def _compiled(template: str) -> tuple[list, bool]:
    """The template as literal strings, _TOPIC, _THING and level numbers, parsed once;
    and whether it names levels."""
    if template == "{topic}":
        return _WHOLE_TOPIC, False
    parts: list = []
    for literal, field, _, _ in string.Formatter().parse(template):
        if literal:
            parts.append(literal)
        if field is None:
            continue
        parts.append(_TOPIC if field == "topic" else _THING if field == "thing" else int(field))
    return parts, any(type(p) is int for p in parts)


def _check_template(where: str, template: Any) -> str:
    if not isinstance(template, str) or not template:
        raise RouteConfigError(f"{where}.topic: must be a topic template, got {template!r}")
    try:
        parts = list(string.Formatter().parse(template))
    except ValueError as exc:
        raise RouteConfigError(f"{where}.topic: {exc} in {template!r} (placeholders are "
                               "{topic}, {thing}, {1}, {2}...)") from None
    for literal, field, spec, conv in parts:
        if "+" in literal or "#" in literal:
            raise RouteConfigError(f"{where}.topic: a topic name cannot hold '+' or '#', "
                                   f"got {template!r}")
        if field is None:
            continue
        if spec or conv or not (field in ("topic", "thing") or _LEVEL.fullmatch(field)):
            raise RouteConfigError(f"{where}.topic: unknown placeholder {{{field}}} in "
                                   f"{template!r} (known: {{topic}}, {{thing}}, {{1}}, "
                                   "{2}...)")
    return template


def parse_route(item: Any, where: str) -> Route:
    name = check_named_table(item, where, _KEYS, RouteConfigError)
    direction = item.get("direction")
    if direction not in DIRECTIONS:
        raise RouteConfigError(f"{where}.direction: must be \"up\" (local to cloud) or "
                               f"\"down\" (cloud to local), got {direction!r}")
    topic_filter = item.get("filter")
    if not isinstance(topic_filter, str):
        raise RouteConfigError(f"{where}.filter: must be a topic filter, got {topic_filter!r}")
    try:
        validate_topic_filter(topic_filter.replace("{thing}", "thing"))
    except InvalidTopic as exc:
        raise RouteConfigError(f"{where}.filter: {exc}") from None
    if topic_filter.startswith("$share/"):
        raise RouteConfigError(f"{where}.filter: a route cannot join a shared subscription, "
                               f"got {topic_filter!r}")
    template = _check_template(where, item.get("topic", "{topic}"))
    qos = item.get("qos", 1)
    if isinstance(qos, bool) or qos not in (0, 1):
        raise RouteConfigError(f"{where}.qos: must be 0 or 1 (AWS IoT Core has no QoS 2), "
                               f"got {qos!r}")
    batch = None
    if "batch" in item:
        if direction != "up":
            raise RouteConfigError(f"{where}.batch: only an up route batches (it packs what "
                                   "goes to the cloud)")
        batch = parse_batch(item["batch"], f"{where}.batch")
    return Route(name, direction, topic_filter, template, qos, batch)


def parse_batch(item: Any, where: str) -> BatchSettings:
    if not isinstance(item, dict):
        raise RouteConfigError(f"{where}: must be a table like {{ max_messages = 100, "
                               f"max_bytes = 131072, max_delay_ms = 1000 }}, got {item!r}")
    for key in item:
        if key not in _BATCH_RANGES:
            raise RouteConfigError(f"{where}.{key}: unknown setting (known: "
                                   f"{', '.join(_BATCH_RANGES)})")
    values = {}
    for key, (low, high, why) in _BATCH_RANGES.items():
        value = item.get(key, getattr(_BATCH_DEFAULTS, key))
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise RouteConfigError(f"{where}.{key}: must be an integer from {low} to "
                                   f"{high}{why}, got {value!r}")
        values[key] = value
    return BatchSettings(**values)


def parse_routes(items: Any) -> list[Route]:
    if not isinstance(items, list):
        raise RouteConfigError(f"routes: must be an array of tables ([[routes]]), got {items!r}")
    if len(items) > MAX_ROUTES:
        raise RouteConfigError(f"routes: at most {MAX_ROUTES} routes, got {len(items)}")
    routes: list[Route] = []
    for i, item in enumerate(items):
        route = parse_route(item, f"routes[{i}]")
        if any(r.name == route.name for r in routes):
            raise RouteConfigError(f"routes[{i}].name: {route.name!r} is used by another route")
        routes.append(route)
    return routes
