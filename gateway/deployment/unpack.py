"""Code bundles (zip, tar.gz) unpacked into a directory, never outside it."""

from __future__ import annotations

import tarfile
import zipfile
from pathlib import Path

from .fetch import ArtifactError


def unpack(archive: Path, fmt: str, dest: Path, name: str) -> None:
    dest.mkdir(parents=True, exist_ok=True)
    root = dest.resolve()
    try:
        if fmt == "zip":
            with zipfile.ZipFile(archive) as z:
                for member in z.namelist():
                    # zipfile would strip '..' itself; refuse instead of guessing what was meant
                    if not (root / member).resolve().is_relative_to(root):
                        raise ArtifactError(f"artifacts.{name}: {member!r} would unpack "
                                            "outside the bundle")
                z.extractall(dest)
        elif fmt == "tar.gz":
            with tarfile.open(archive, "r:gz") as t:
                t.extractall(dest, filter="data")  # no links out, devices or absolute paths
        else:
            raise ArtifactError(f"artifacts.{name}.format: cannot unpack {fmt!r}")
    except (zipfile.BadZipFile, tarfile.TarError, EOFError) as exc:
        raise ArtifactError(f"artifacts.{name}: not a valid {fmt} bundle: {exc}") from None
