"""Per-function log files, STATE_DIR/functions/NAME.log, rotated at a size (one backup)."""

from __future__ import annotations

import os
import time
from pathlib import Path


class LogSink:
    """Appends lines from every worker of one function. Writes are small appends to the page
    cache, so they stay on the event loop; the file never grows past max_bytes."""

    def __init__(self, path: Path, max_bytes: int = 1 << 20) -> None:
        self.path = path
        self.max_bytes = max_bytes
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._fd: int | None = None
        self._size = 0

    def _open(self) -> int:
        if self._fd is None:
            self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            self._size = os.fstat(self._fd).st_size
        return self._fd

    def write(self, pid: int | None, data: bytes) -> None:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S")
        prefix = f"{stamp} [{pid or '-'}] ".encode()
        lines = data.splitlines(keepends=True)
        out = b"".join(prefix + (ln if ln.endswith(b"\n") else ln + b"\n") for ln in lines)
        if not out:
            return
        try:
            fd = self._open()
            if self._size + len(out) > self.max_bytes and self._size:
                self._rotate()
                fd = self._open()
            os.write(fd, out[: self.max_bytes])
            self._size += min(len(out), self.max_bytes)
        except OSError:
            pass  # a full disk must not take the function down with it

    def _rotate(self) -> None:
        self.close()
        os.replace(self.path, self.path.with_name(self.path.name + ".1"))

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
