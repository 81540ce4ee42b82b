"""The shadow service's reserved topics: `$aws/things/THING/shadow[/name/SHADOW]/OP`."""

from __future__ import annotations

from .document import CLASSIC

REQUEST_FILTER = "$aws/things/+/shadow/#"
OPERATIONS = ("get", "update", "delete")


def parse_topic(topic: str) -> tuple[str, str, str] | None:
    """(thing, shadow name or CLASSIC, operation) of a request topic; None for any other
    topic, the replies included."""
    parts = topic.split("/")
    if len(parts) < 5 or parts[0] != "$aws" or parts[1] != "things" or parts[3] != "shadow":
        return None
    if len(parts) == 5 and parts[4] in OPERATIONS:
        return parts[2], CLASSIC, parts[4]
    if len(parts) == 7 and parts[4] == "name" and parts[6] in OPERATIONS:
        return parts[2], parts[5], parts[6]
    return None


def topic_prefix(thing: str, name: str = CLASSIC) -> str:
    """`$aws/things/THING/shadow`, or `.../shadow/name/NAME` for a named shadow."""
    base = f"$aws/things/{thing}/shadow"
    return base if name == CLASSIC else f"{base}/name/{name}"
