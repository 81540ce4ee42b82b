"""Bounds on chains of context.invoke: how deep a chain may go, and whether a nested call
could ever run. A function that invokes itself (directly or through others) would otherwise
recurse until every worker waits on another, and then sit until its timeout.

Each invocation carries its lineage: its depth (0 when a message or a control request
invoked it) and the request ids of the invocations up its chain, which are all running,
each holding a worker, while they wait for it.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True, slots=True)
class Lineage:
    depth: int = 0
    ancestors: frozenset[str] = frozenset()


ROOT = Lineage()


class Caller(Protocol):
    request_id: str
    lineage: Lineage


def nested_lineage(callers: Sequence[Caller]) -> Lineage:
    """The lineage of a call made by the handler that runs `callers` (one invocation, or
    a batch of them: the call is made on behalf of all of them)."""
    depth = max(c.lineage.depth for c in callers) + 1
    ancestors = frozenset().union(*(c.lineage.ancestors for c in callers),
                                  (c.request_id for c in callers))
    return Lineage(depth, ancestors)


def depth_error(function: str, depth: int, limit: int) -> str | None:
    if depth <= limit:
        return None
    return (f"function {function} invoked {depth} calls deep through context.invoke, past its "
            f"max_invoke_depth of {limit}: does a function invoke itself without end?")


def waits_for_itself(running: Iterable[Sequence[Caller] | None],
                     ancestors: frozenset[str]) -> bool:
    """Whether every worker of the called function (`running`: what each is running, None
    when free) is held by the caller's own chain: then the call could never start."""
    return all(batch and any(c.request_id in ancestors for c in batch) for batch in running)


def deadlock_error(function: str, workers: int) -> str:
    return (f"function {function}: all {workers} of its workers are running this call's own "
            f"callers, so the call would wait for itself; raise its max_concurrency (or "
            f"instances) or break the cycle")
