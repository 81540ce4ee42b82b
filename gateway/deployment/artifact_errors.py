"""The errors of fetching an artifact: each is one line that names the artifact."""

from __future__ import annotations

from gateway.errors import UserError


class ArtifactError(UserError):
    """An artifact could not be fetched or is not what its document says."""


class ArtifactIntegrityError(ArtifactError):
    """The bytes are not the ones the document names (size or sha256): nothing was kept."""


class InsufficientSpace(ArtifactError):
    """Refused before the download started: the cache's disk has too little room."""


class FetchCancelled(ArtifactError):
    """The caller's cancel event was set; the partial file is kept for a later resume."""


class FetchTimeout(ArtifactError):
    """The overall timeout passed, or the source sent nothing for the stall timeout."""


class TransientFetchError(ArtifactError):
    """One attempt failed in a way another attempt may get past (cut connection, 5xx)."""


class FetchStalled(FetchTimeout):
    """The source sent nothing for the stall timeout; another attempt resumes."""
