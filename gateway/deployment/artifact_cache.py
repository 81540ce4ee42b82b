"""The content-addressed artifact cache on disk: `DIR/sha256/<hex>` holds only verified
files; `DIR/sha256/<hex>.part` is a download in progress, kept across failures so the next
attempt resumes. A `.part` file is locked (flock) by whoever writes it."""

from __future__ import annotations

import fcntl
import hashlib
import os
import re
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

from gateway.deployment.artifact_errors import (
    ArtifactError,
    ArtifactIntegrityError,
    InsufficientSpace,
)

HEX_NAME = re.compile(r"^[0-9a-f]{64}$")
READ_CHUNK = 1024 * 1024


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(READ_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class PartialFile:
    """A locked `.part` file open for appending, with the sha256 of what it holds so far
    (hashed from disk when opened, so a resumed download verifies every byte)."""

    def __init__(self, path: Path, f: BinaryIO) -> None:
        self.path = path
        self.f = f
        self.digest = hashlib.sha256()
        self.length = 0
        f.seek(0)
        while chunk := f.read(READ_CHUNK):
            self.digest.update(chunk)
            self.length += len(chunk)

    def write(self, data: bytes) -> None:
        self.f.write(data)  # opened for append: always lands at the end
        self.digest.update(data)
        self.length += len(data)

    def truncate(self) -> None:
        self.f.flush()
        self.f.truncate(0)
        self.digest = hashlib.sha256()
        self.length = 0

    def hexdigest(self) -> str:
        return self.digest.hexdigest()

    def close(self) -> None:
        self.f.close()  # closing drops the flock


class ArtifactCache:
    def __init__(self, cache_dir: str | os.PathLike[str]) -> None:
        self.root = Path(cache_dir)
        self.dir = self.root / "sha256"

    def ensure(self) -> None:
        try:
            self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        except OSError as exc:
            raise ArtifactError(f"artifact cache {self.dir}: {exc.strerror or exc}") from exc

    def final_path(self, sha256: str) -> Path:
        return self.dir / sha256

    def part_path(self, sha256: str) -> Path:
        return self.dir / f"{sha256}.part"

    def verified(self, sha256: str, size: int) -> Path | None:
        """The cached file if it is there and still verifies; a corrupt one (a bad SD card
        sector, a hand edit) is removed so it is fetched again rather than used."""
        path = self.final_path(sha256)
        try:
            if path.stat().st_size == size and file_sha256(path) == sha256:
                return path
        except FileNotFoundError:
            return None
        path.unlink(missing_ok=True)
        return None

    def open_partial(self, sha256: str, wait: Callable[[], None]) -> PartialFile:
        """Opens and locks `<hex>.part`. Another fetch of the same artifact holds the lock
        until it finishes; `wait()` is called between tries (it raises on cancel/timeout)."""
        path = self.part_path(sha256)
        while True:
            f = open(path, "a+b")  # noqa: SIM115 - owned by the PartialFile
            try:
                fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                f.close()
                wait()
                continue
            # The holder we waited for may have renamed the .part to the final name: then
            # our descriptor is that (now final) file, and a new .part must be opened.
            try:
                same = os.stat(path).st_ino == os.fstat(f.fileno()).st_ino
            except FileNotFoundError:
                same = False
            if same:
                return PartialFile(path, f)
            f.close()

    def promote(self, part: PartialFile, sha256: str) -> Path:
        """Durably moves a verified `.part` to its final, read-only name."""
        part.f.flush()
        os.fsync(part.f.fileno())
        final = self.final_path(sha256)
        os.chmod(part.path, 0o444)
        os.replace(part.path, final)
        _fsync_dir(self.dir)
        return final

    def discard(self, part: PartialFile) -> None:
        part.path.unlink(missing_ok=True)

    def check_space(self, label: str, to_download: int, reserve: int) -> None:
        free = shutil.disk_usage(self.dir).free
        needed = to_download + reserve
        if free < needed:
            raise InsufficientSpace(
                f"{label}: not enough disk space in {self.dir}: needs {needed} bytes "
                f"({to_download} to download + {reserve} reserve), {free} free")

    def gc(self, keep: set[str]) -> list[Path]:
        """Removes every cached artifact and stale `.part` whose sha256 is not in `keep`;
        a `.part` that a fetch holds locked is left alone. Returns what was removed."""
        keep = {k.lower() for k in keep}
        removed: list[Path] = []
        if not self.dir.is_dir():
            return removed
        for path in sorted(self.dir.iterdir()):
            name = path.name
            stem = name[:-len(".part")] if name.endswith(".part") else name
            if not HEX_NAME.match(stem) or stem in keep:
                continue  # not ours to judge, or wanted
            if _remove_unless_locked(path):
                removed.append(path)
        return removed


def _remove_unless_locked(path: Path) -> bool:
    """Unlinks `path` while holding its flock, so a fetch that writes it is never cut
    short (that fetch sees the unlinked inode and opens a new `.part`)."""
    try:
        with open(path, "rb") as f:
            try:
                fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return False
            path.unlink()
            return True
    except FileNotFoundError:
        return False


def integrity_error(label: str, what: str) -> ArtifactIntegrityError:
    return ArtifactIntegrityError(f"{label}: {what}; the download was discarded")
