"""What publish() and subscribe() hand back: a Delivery to wait on, a Subscription to end."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TYPE_CHECKING

from .errors import DeviceSDKError
from .message import Message

if TYPE_CHECKING:
    from .client import DeviceClient


class Delivery:
    """The fate of one publish.

    QoS 1: done when the gateway has acknowledged it (PUBACK), which may be after any
    number of reconnects; until then it is in the offline queue. QoS 0: done at once, sent
    if the client was connected, else failed with NotConnected.
    """

    def __init__(self, topic: str, qos: int, message_id: int | None = None) -> None:
        self.topic = topic
        self.qos = qos
        self.message_id = message_id     # its id in the offline queue (QoS 1)
        self.error: DeviceSDKError | None = None
        self._done = threading.Event()

    @property
    def done(self) -> bool:
        return self._done.is_set()

    @property
    def delivered(self) -> bool:
        return self._done.is_set() and self.error is None

    def wait(self, timeout: float | None = None) -> bool:
        """True once delivered; False if `timeout` passes first (a QoS 1 message stays
        queued). Raises the reason if it failed: PublishRefused (the gateway refused it),
        QueueFull (evicted from a full queue), NotConnected (QoS 0 while offline)."""
        if not self._done.wait(timeout):
            return False
        if self.error is not None:
            raise self.error
        return True

    def _succeed(self) -> None:
        self._done.set()

    def _fail(self, error: DeviceSDKError) -> None:
        self.error = error
        self._done.set()

    def __repr__(self) -> str:
        state = "pending" if not self.done else "delivered" if self.error is None else \
            f"failed: {self.error}"
        return f"<Delivery {self.topic!r} qos={self.qos} {state}>"


class Subscription:
    """One callback on one topic filter; kept across reconnects until unsubscribed."""

    def __init__(self, client: DeviceClient, topic_filter: str,
                 callback: Callable[[Message], None], inline: bool = False) -> None:
        self.client = client
        self.topic_filter = topic_filter
        self.callback = callback
        # inline: run on paho's network thread (the SDK's own quick handlers), else on the
        # callback thread.
        self.inline = inline
        self.active = True

    def unsubscribe(self) -> None:
        """Stop calling the callback; the gateway is told once no callback is left on the
        filter. Idempotent."""
        if self.active:
            self.active = False
            self.client._remove_subscription(self)

    def __enter__(self) -> Subscription:
        return self

    def __exit__(self, *exc: object) -> None:
        self.unsubscribe()

    def __repr__(self) -> str:
        return f"<Subscription {self.topic_filter!r}{'' if self.active else ' (ended)'}>"
