"""What an acknowledgement waits for when in-process subscribers take part in a publish.

An internal subscriber's callback (the cloud spool, say) may answer a delivery with a
CommitWait: the publisher's PUBACK then waits for those commits too (`waits_for(store)`,
built once by the component). Or it may answer REFUSED (a full spool that refuses new
messages): an MQTT 5 publisher then gets Quota exceeded, an MQTT 3.1.1 publisher gets no
acknowledgement and sends it again.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol


class CommitSource(Protocol):
    def after_commit(self, fn: Callable[[], None]) -> None: ...


class CommitWait:
    """The commits one publish must wait for, and whether a subscriber refused it."""

    __slots__ = ("sources", "refused")

    def __init__(self, sources: list[CommitSource], refused: bool = False) -> None:
        self.sources = sources
        self.refused = refused

    def __bool__(self) -> bool:
        return bool(self.sources)

    def then(self, fn: Callable[[], None]) -> None:
        """Run fn once every source has committed what was queued so far."""
        if len(self.sources) == 1:
            self.sources[0].after_commit(fn)
            return
        remaining = [len(self.sources)]

        def one() -> None:
            remaining[0] -= 1
            if remaining[0] == 0:
                fn()

        for source in self.sources:
            source.after_commit(one)


REFUSED = CommitWait([], refused=True)


def combine(broker_store: CommitSource | None, broker_durable: bool,
            answers: list[CommitWait]) -> CommitWait:
    """One wait for the internal subscribers' answers and the broker's own store."""
    if len(answers) == 1 and not broker_durable:  # the usual case: one spool's shared wait
        return answers[0]
    sources = [source for answer in answers for source in answer.sources]
    if broker_durable and broker_store is not None:
        sources.insert(0, broker_store)
    return CommitWait(sources, any(answer.refused for answer in answers))
