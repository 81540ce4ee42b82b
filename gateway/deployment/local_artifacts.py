"""Artifacts that are local files: `file:///abs/path`, or a path relative to the document."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from urllib.parse import unquote, urlsplit

from .document import Artifact
from .fetch import ArtifactError, Progress

CHUNK = 1 << 20


def source_path(artifact: Artifact, base_dir: Path | None) -> Path:
    parts = urlsplit(artifact.url)
    where = f"artifacts.{artifact.name}.url"
    if parts.scheme.lower() == "file":
        if parts.netloc not in ("", "localhost"):
            raise ArtifactError(f"{where}: file:// URLs name no host, got {artifact.url!r}")
        return Path(unquote(parts.path))
    if parts.scheme:
        raise ArtifactError(f"{where}: unsupported scheme {parts.scheme!r} (https, http, file, "
                            "or a path)")
    path = Path(artifact.url)
    if path.is_absolute():
        return path
    if base_dir is None:
        raise ArtifactError(f"{where}: a relative path needs a document file to start from, "
                            f"got {artifact.url!r}")
    return base_dir / path


def fetch_local(artifact: Artifact, dest_dir: Path, progress: Progress | None = None,
                base_dir: Path | None = None) -> Path:
    """Copy the file into dest_dir, hashing as it goes; checked, fsync'd, returned."""
    src = source_path(artifact, base_dir)
    where = f"artifacts.{artifact.name}"
    dest = dest_dir / (src.name or artifact.name)
    digest = hashlib.sha256()
    done = 0
    try:
        with open(src, "rb") as fin, open(dest, "wb") as fout:
            while chunk := fin.read(CHUNK):
                done += len(chunk)
                if done > artifact.size:
                    raise ArtifactError(f"{where}.size: {src} is larger than the "
                                        f"{artifact.size} bytes stated")
                digest.update(chunk)
                fout.write(chunk)
                if progress is not None:
                    progress(done, artifact.size)
            fout.flush()
            os.fsync(fout.fileno())
    except OSError as exc:
        raise ArtifactError(f"{where}.url: cannot read {src}: {exc.strerror}") from None
    if done != artifact.size:
        raise ArtifactError(f"{where}.size: {src} has {done} bytes, the document states "
                            f"{artifact.size}")
    if digest.hexdigest() != artifact.sha256:
        raise ArtifactError(f"{where}.sha256: {src} hashes to {digest.hexdigest()}, the "
                            f"document states {artifact.sha256}")
    return dest
