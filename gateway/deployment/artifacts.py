"""Deployment artifacts: fetched once, verified, kept in a content-addressed cache.

An artifact is `{"url": ..., "size": N, "sha256": HEX}` with an optional `"name"`. `fetch()`
returns `CACHE/sha256/<hex>`, a file whose size and sha256 were checked before it got that
name; nothing else ever has a final name in the cache. It is synchronous and meant to run
in a worker thread: `cancel` (a threading.Event) stops it within ~0.1 s, `timeout_s` bounds
the whole fetch and `stall_timeout_s` any wait for bytes. A cut download resumes from its
`.part` file with a Range request, in the same call (up to `attempts`) or a later one.

HTTP proxies are not used (the standard library's http.client talks to the host directly).
"""

from __future__ import annotations

import os
import re
import ssl
import threading
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gateway.deployment.artifact_cache import ArtifactCache, PartialFile, integrity_error
from gateway.deployment.artifact_errors import (
    ArtifactError,
    ArtifactIntegrityError,
    FetchCancelled,
    FetchStalled,
    FetchTimeout,
    InsufficientSpace,
    TransientFetchError,
)
from gateway.deployment.artifact_progress import ProgressCallback, ProgressThrottle
from gateway.deployment.download import (
    Bounds,
    copy_local,
    download_http,
    local_source,
    safe_url,
    url_problem,
)

__all__ = [
    "Artifact", "ArtifactError", "ArtifactIntegrityError", "FetchCancelled", "FetchStalled",
    "FetchTimeout", "InsufficientSpace", "ProgressCallback", "as_artifact", "fetch", "gc",
    "hashes_to_keep", "parse_artifact",
]

DEFAULT_RESERVE_BYTES = 32 * 1024 * 1024  # left free after a download: logs, SQLite, swap
SHA256_HEX = re.compile(r"^[0-9a-fA-F]{64}$")
PLACEHOLDER = "${aws:iot:s3-presigned-url"


@dataclass(frozen=True)
class Artifact:
    url: str
    size: int
    sha256: str  # lower-case hex
    name: str | None = None

    @property
    def label(self) -> str:
        """How error messages name it: its name, else its URL without the query."""
        return f"artifact {self.name!r}" if self.name else f"artifact {safe_url(self.url)}"


def parse_artifact(raw: Mapping[str, Any], where: str = "artifact") -> Artifact:
    """Validates one artifact object of a deployment document; `where` names it in errors
    (e.g. "artifacts[2]"). Unknown keys are left for the document's own validation."""
    if not isinstance(raw, Mapping):
        raise ArtifactError(f"{where}: must be an object with url, size and sha256, "
                            f"got {type(raw).__name__}")
    name = raw.get("name")
    if name is not None and (not isinstance(name, str) or not name):
        raise ArtifactError(f"{where}: name must be a non-empty string, got {name!r}")
    if name:
        where = f"artifact {name!r}"
    url = raw.get("url")
    if not isinstance(url, str) or not url:
        raise ArtifactError(f"{where}: url must be a non-empty string, got {url!r}")
    if url.startswith(PLACEHOLDER):
        raise ArtifactError(f"{where}: url is an unresolved presigned-URL placeholder "
                            f"({url[:80]}); IoT Jobs replaces it only in a document fetched "
                            "through Jobs")
    problem = url_problem(url)
    if problem:
        raise ArtifactError(f"{where}: {problem}")
    size = raw.get("size")
    if isinstance(size, bool) or not isinstance(size, int) or size < 0:
        raise ArtifactError(f"{where}: size must be a whole number of bytes >= 0, got {size!r}")
    digest = raw.get("sha256")
    if not isinstance(digest, str) or not SHA256_HEX.match(digest):
        raise ArtifactError(f"{where}: sha256 must be 64 hex digits, got {digest!r}")
    return Artifact(url=url, size=size, sha256=digest.lower(), name=name)


def as_artifact(artifact: Any) -> Artifact:
    """An Artifact from a mapping or any object with url, size and sha256 attributes (such
    as gateway.deployment.document.Artifact), validated."""
    if isinstance(artifact, Artifact):
        return artifact
    if isinstance(artifact, Mapping):
        return parse_artifact(artifact)
    fields = ("url", "size", "sha256", "name")
    return parse_artifact({k: getattr(artifact, k) for k in fields if hasattr(artifact, k)})


def fetch(artifact: Artifact | Mapping[str, Any] | Any, cache_dir: str | os.PathLike[str],
          progress: ProgressCallback | None = None, *,
          cancel: threading.Event | None = None,
          timeout_s: float = 3600.0,
          stall_timeout_s: float = 60.0,
          attempts: int = 4,
          retry_delay_s: float = 1.0,
          reserve_bytes: int = DEFAULT_RESERVE_BYTES,
          ssl_context: ssl.SSLContext | None = None) -> Path:
    """Returns the path of the verified artifact in `cache_dir`, downloading or copying it
    first unless it is cached. `progress(done, total)` is called at most every 1 % or 1 s.
    Raises an ArtifactError subclass (one line naming the artifact) on any failure."""
    art = as_artifact(artifact)
    cache = ArtifactCache(cache_dir)
    cache.ensure()
    throttle = ProgressThrottle(art.size, progress)
    hit = cache.verified(art.sha256, art.size)
    if hit is not None:
        throttle.update(art.size)
        return hit
    bounds = Bounds(art.label, timeout_s, cancel)
    bounds.check()
    source = local_source(art.url)
    try:
        part = cache.open_partial(art.sha256, wait=lambda: bounds.sleep(0.1))
    except OSError as exc:
        raise ArtifactError(f"{art.label}: cannot open {cache.part_path(art.sha256)}: "
                            f"{exc.strerror or exc}") from exc
    try:
        hit = cache.verified(art.sha256, art.size)  # fetched by whoever held the lock
        if hit is not None:
            cache.discard(part)
            throttle.update(art.size)
            return hit
        if part.length > art.size:
            part.truncate()  # longer than the artifact: not a prefix of it
        cache.check_space(art.label, art.size - part.length, reserve_bytes)
        _fill(art, part, source, bounds, throttle, cache, stall_timeout_s, attempts,
              retry_delay_s, reserve_bytes, ssl_context)
        if part.length != art.size:
            raise integrity_error(art.label, f"got {part.length} bytes, the document says "
                                  f"size {art.size}")
        actual = part.hexdigest()
        if actual != art.sha256:
            raise integrity_error(art.label, f"sha256 is {actual}, the document says "
                                  f"{art.sha256}")
        path = cache.promote(part, art.sha256)
        throttle.update(art.size)
        return path
    except ArtifactIntegrityError:
        cache.discard(part)  # never resume from bytes known to be wrong
        raise
    except OSError as exc:  # the cache's own disk: ENOSPC, EIO, permissions
        raise ArtifactError(f"{art.label}: writing {part.path}: {exc.strerror or exc}") from exc
    finally:
        part.close()


def _fill(art: Artifact, part: PartialFile, source: Path | None, bounds: Bounds,
          throttle: ProgressThrottle, cache: ArtifactCache, stall_timeout_s: float,
          attempts: int, retry_delay_s: float, reserve_bytes: int,
          ssl_context: ssl.SSLContext | None) -> None:
    """Brings `part` to the artifact's full size, retrying what another attempt may fix."""
    def restarted() -> None:  # a server that ignored Range: the whole file comes again
        cache.check_space(art.label, art.size, reserve_bytes)

    last: ArtifactError | None = None
    for attempt in range(1, max(1, attempts) + 1):
        try:
            if source is not None:
                copy_local(source, part, art.size, bounds, throttle.update)
            else:
                download_http(art.url, part, art.size, bounds, stall_timeout_s,
                              throttle.update, restarted, ssl_context)
            return
        except (TransientFetchError, FetchStalled) as exc:
            last = exc
            if attempt < attempts:
                bounds.sleep(retry_delay_s * attempt)
    assert last is not None
    raise type(last)(f"{last} (gave up after {attempts} attempts; {part.length} bytes are "
                     "kept to resume)")


def gc(cache_dir: str | os.PathLike[str], keep: set[str]) -> list[Path]:
    """Removes every cached artifact (and stale partial download) whose sha256 is not in
    `keep`; never one in `keep`. Returns the removed paths."""
    return ArtifactCache(cache_dir).gc(keep)


def hashes_to_keep(versions: Sequence[Iterable[Artifact | Mapping[str, Any] | Any]],
                   last_n: int) -> set[str]:
    """The sha256s of the artifacts of the `last_n` newest versions (`versions` is newest
    first, each an iterable of artifacts): what `gc` keeps so a rollback needs no network."""
    keep: set[str] = set()
    for artifacts in versions[:max(0, last_n)]:
        for a in artifacts:
            keep.add(as_artifact(a).sha256)
    return keep
