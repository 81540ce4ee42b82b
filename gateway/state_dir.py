"""The gateway's state directory: where it is, what lives in it, and its single-owner lock."""

from __future__ import annotations

import fcntl
import json
import os
from pathlib import Path

from .errors import UserError

CONFIG_NAME = "config.toml"
BROKER_DB = "broker.sqlite3"
STATUS_NAME = "status.json"
LOCK_NAME = "lichen.lock"
PKI_DIR = "pki"
REGISTRY_DB = "registry.sqlite3"


class StateDirError(UserError, RuntimeError):
    pass


def default_state_dir() -> Path:
    env = os.environ.get("LICHEN_STATE_DIR")
    if env:
        return Path(env)
    if os.geteuid() == 0:
        return Path("/var/lib/lichen")
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "lichen"


def ensure_state_dir(path: Path) -> Path:
    try:
        path.mkdir(parents=True, exist_ok=True, mode=0o700)
    except OSError as exc:
        raise StateDirError(f"cannot create state directory {path}: {exc.strerror}") from None
    if not os.access(path, os.W_OK):
        raise StateDirError(f"state directory {path} is not writable")
    return path


class StateLock:
    """An exclusive flock on DIR/lichen.lock: one gateway per state directory."""

    def __init__(self, state_dir: Path) -> None:
        self.path = state_dir / LOCK_NAME
        self._fd: int | None = None

    def acquire(self) -> None:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise StateDirError(f"another gateway is running on {self.path.parent} "
                                f"(pid {read_pid(self.path.parent) or 'unknown'})") from None
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        self._fd = fd

    @property
    def held(self) -> bool:
        return self._fd is not None

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def read_pid(state_dir: Path) -> int | None:
    try:
        return int((state_dir / LOCK_NAME).read_text().strip() or 0) or None
    except (OSError, ValueError):
        return None


def is_running(state_dir: Path) -> bool:
    """Whether a gateway holds the lock on this state directory."""
    path = state_dir / LOCK_NAME
    if not path.exists():
        return False
    fd = os.open(path, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


def write_status(state_dir: Path, status: dict) -> None:
    tmp = state_dir / (STATUS_NAME + ".tmp")
    tmp.write_text(json.dumps(status, indent=2, sort_keys=True))
    os.replace(tmp, state_dir / STATUS_NAME)


def read_status(state_dir: Path) -> dict | None:
    try:
        return json.loads((state_dir / STATUS_NAME).read_text())
    except (OSError, ValueError):
        return None
