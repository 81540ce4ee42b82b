"""Where an artifact comes from. One call, `fetch(artifact, dest_dir, progress, ...)`, puts
the artifact's verified bytes in dest_dir and returns the file's path, picking the fetcher by
URL scheme: a local file (file:// or a path relative to the document) is copied and checked
here (local_artifacts.py); http(s):// goes through gateway.deployment.artifacts.fetch
(download with resume into a content-addressed cache, size and sha256 checked), and the
cached file is then linked into dest_dir. Errors are ArtifactError: one line naming the
artifact.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlsplit

from .artifact_errors import ArtifactError
from .document import Artifact

Progress = Callable[[int, int], None]      # (bytes so far, total bytes)

__all__ = ["ArtifactError", "Progress", "fetch"]


def fetch(artifact: Artifact, dest_dir: Path, progress: Progress | None = None,
          base_dir: Path | None = None, cache_dir: Path | None = None) -> Path:
    """The artifact as a verified, fsync'd file in dest_dir. base_dir: where the document
    was, for relative paths (None: refused, as for a document from the cloud). cache_dir:
    the download cache of http(s) artifacts."""
    scheme = urlsplit(artifact.url).scheme.lower()
    if scheme in ("http", "https"):
        from .artifacts import fetch as download

        if cache_dir is None:
            raise ArtifactError(f"artifacts.{artifact.name}.url: no download cache given")
        cached = download(artifact, cache_dir, progress)
        name = Path(urlsplit(artifact.url).path).name or artifact.name
        dest = dest_dir / name
        try:
            os.link(cached, dest)   # the cache and the versions share a file system
        except OSError:
            shutil.copyfile(cached, dest)
        return dest
    from .local_artifacts import fetch_local

    return fetch_local(artifact, dest_dir, progress, base_dir)
