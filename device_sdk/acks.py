"""Matching acknowledgements (SUBACK, UNSUBACK, PUBACK) to whoever waits for them.

paho can deliver an acknowledgement before the call that sent the packet has returned its
packet id, so results are posted here whether or not anyone waits yet, keyed by connection
(each connection numbers its packets from 1 again) and packet id.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from typing import Any

from .errors import NotConnected, RequestTimeout

MAX_UNCLAIMED = 1024   # acknowledgements nobody waited for (restores, QoS 1 sends) kept


class AckBoard:
    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._results: OrderedDict[tuple[int, int], Any] = OrderedDict()
        self._lost: set[int] = set()  # connections that closed: waiting on them is over

    def post(self, connection: int, packet_id: int, result: Any) -> None:
        with self._cond:
            self._results[(connection, packet_id)] = result
            while len(self._results) > MAX_UNCLAIMED:
                self._results.popitem(last=False)
            self._cond.notify_all()

    def connection_lost(self, connection: int) -> None:
        with self._cond:
            self._lost.add(connection)
            if len(self._lost) > 256:  # old connections nobody can still be waiting on
                self._lost = set(sorted(self._lost)[-128:])
            for key in [k for k in self._results if k[0] == connection]:
                del self._results[key]
            self._cond.notify_all()

    def wait(self, connection: int, packet_id: int, timeout: float, what: str) -> Any:
        """The posted result; NotConnected if the connection closes first, RequestTimeout
        if nothing comes within `timeout` seconds."""
        key = (connection, packet_id)
        deadline = time.monotonic() + timeout
        with self._cond:
            while key not in self._results:
                if connection in self._lost:
                    raise NotConnected(f"the connection to the gateway closed before the "
                                       f"{what} came; it is re-sent when the client "
                                       "reconnects")
                left = deadline - time.monotonic()
                if left <= 0:
                    raise RequestTimeout(f"no {what} from the gateway within {timeout:g} s")
                self._cond.wait(left)
            return self._results.pop(key)
