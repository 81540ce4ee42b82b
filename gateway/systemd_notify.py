"""sd_notify(3) without libsystemd: READY, STOPPING, STATUS and WATCHDOG messages."""

from __future__ import annotations

import os
import socket


def notify(message: str) -> bool:
    """Send `message` to systemd if we run under it; False when there is no NOTIFY_SOCKET."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):
        address = "\0" + address[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.connect(address)
            sock.sendall(message.encode())
        return True
    except OSError:
        return False


def watchdog_interval() -> float | None:
    """Half the WatchdogSec systemd gave us, in seconds, or None without a watchdog."""
    usec = os.environ.get("WATCHDOG_USEC")
    if not usec:
        return None
    pid = os.environ.get("WATCHDOG_PID")
    if pid and int(pid) != os.getpid():
        return None
    return int(usec) / 2_000_000
