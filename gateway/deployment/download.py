"""One attempt at bringing an artifact's bytes into its `.part` file: HTTP(S) with a Range
request to resume, or a copy from a local file. Every blocking step is bounded: a socket
read by the stall timeout, and the whole attempt by `Bounds` (overall deadline + cancel),
which shuts the socket down from a watcher thread so a blocked read returns at once."""

from __future__ import annotations

import http.client
import re
import socket
import ssl
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from gateway.deployment.artifact_cache import PartialFile, integrity_error
from gateway.deployment.artifact_errors import (
    ArtifactError,
    FetchCancelled,
    FetchStalled,
    FetchTimeout,
    TransientFetchError,
)

CHUNK = 64 * 1024
MAX_REDIRECTS = 5
REDIRECTS = {301, 302, 303, 307, 308}
CONTENT_RANGE = re.compile(r"^bytes (\d+)-(\d+)/(\d+|\*)$")


class Bounds:
    """The overall deadline and the caller's cancel event for one fetch."""

    def __init__(self, label: str, timeout_s: float, cancel: threading.Event | None) -> None:
        self.label = label
        self.timeout_s = timeout_s
        self.deadline = time.monotonic() + timeout_s
        self.cancel = cancel

    def remaining(self) -> float:
        return self.deadline - time.monotonic()

    def expired(self) -> bool:
        return (self.cancel is not None and self.cancel.is_set()) or self.remaining() <= 0

    def check(self) -> None:
        if self.cancel is not None and self.cancel.is_set():
            raise FetchCancelled(f"{self.label}: fetch cancelled")
        if self.remaining() <= 0:
            raise FetchTimeout(f"{self.label}: not fetched within the {self.timeout_s:g} s "
                               "timeout")

    def sleep(self, seconds: float) -> None:
        """Waits `seconds` (less if the deadline is nearer), returning early on cancel."""
        seconds = max(0.0, min(seconds, self.remaining()))
        if self.cancel is not None:
            self.cancel.wait(seconds)
        else:
            time.sleep(seconds)
        self.check()


def safe_url(url: str) -> str:
    """The URL without its query: a presigned URL's query is a credential, never logged."""
    parts = urllib.parse.urlsplit(url)
    return urllib.parse.urlunsplit((parts.scheme, parts.netloc, parts.path, "", ""))


def local_source(url: str) -> Path | None:
    """The file a `file://` URL or a plain path names; None for a network URL."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme == "file":
        return Path(urllib.parse.unquote(parts.path))
    if parts.scheme in ("http", "https"):
        return None
    return Path(url)


def url_problem(url: str) -> str | None:
    """Why `url` cannot be fetched, or None if it can (http, https, file:// or a path)."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme in ("http", "https"):
        return None if parts.hostname else f"url {safe_url(url)!r} has no host"
    if parts.scheme == "file":
        if parts.netloc not in ("", "localhost"):
            return f"url {url!r} names host {parts.netloc!r}; only local files are copied"
        return None
    if parts.scheme == "":
        return None
    return f"url scheme {parts.scheme!r} is not supported (http, https, file:// or a path)"


def copy_local(source: Path, part: PartialFile, size: int, bounds: Bounds,
               on_bytes: Callable[[int], None]) -> None:
    """Appends the rest of `source` (from `part.length`) to the partial file."""
    try:
        with open(source, "rb") as f:
            actual = f.seek(0, 2)
            if actual != size:
                raise integrity_error(bounds.label, f"{source} is {actual} bytes, the document "
                                      f"says size {size}")
            f.seek(part.length)
            while part.length < size:
                bounds.check()
                chunk = f.read(min(CHUNK, size - part.length))
                if not chunk:
                    break
                part.write(chunk)
                on_bytes(part.length)
    except OSError as exc:
        raise ArtifactError(f"{bounds.label}: cannot read {source}: "
                            f"{exc.strerror or exc}") from exc


@contextmanager
def _interrupt_on_expiry(conn: http.client.HTTPConnection, bounds: Bounds) -> Iterator[None]:
    """Shuts the connection's socket down if the fetch is cancelled or times out while a
    read blocks, instead of letting that read wait out the stall timeout."""
    done = threading.Event()

    def watch() -> None:
        while not done.wait(0.1):
            if bounds.expired():
                sock = conn.sock
                if sock is not None:
                    try:
                        sock.shutdown(socket.SHUT_RDWR)
                    except OSError:
                        pass
                return

    watcher = threading.Thread(target=watch, name="artifact-fetch-watch", daemon=True)
    watcher.start()
    try:
        yield
    finally:
        done.set()
        watcher.join()


def _connect(url: str, timeout: float, ssl_context: ssl.SSLContext | None,
             label: str) -> tuple[http.client.HTTPConnection, str]:
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ArtifactError(f"{label}: url {safe_url(url)!r} is not http(s), file:// or a path")
    if parts.scheme == "https":
        context = ssl_context or ssl.create_default_context()
        conn: http.client.HTTPConnection = http.client.HTTPSConnection(
            parts.hostname, parts.port, timeout=timeout, context=context)
    else:
        conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=timeout)
    target = parts.path or "/"
    if parts.query:
        target += "?" + parts.query
    return conn, target


def _open(url: str, headers: dict[str, str], stall_s: float, bounds: Bounds,
          ssl_context: ssl.SSLContext | None
          ) -> tuple[http.client.HTTPConnection, http.client.HTTPResponse]:
    """GET `url`, following up to MAX_REDIRECTS redirects (never from https to http)."""
    for _ in range(MAX_REDIRECTS + 1):
        bounds.check()
        conn, target = _connect(url, max(0.01, min(stall_s, bounds.remaining())), ssl_context,
                                bounds.label)
        try:
            conn.request("GET", target, headers=headers)
            resp = conn.getresponse()
        except BaseException:
            conn.close()
            raise
        if resp.status not in REDIRECTS:
            return conn, resp
        location = resp.getheader("Location")
        conn.close()
        if not location:
            raise ArtifactError(f"{bounds.label}: HTTP {resp.status} from {safe_url(url)} "
                                "without a Location")
        new = urllib.parse.urljoin(url, location)
        if url.startswith("https:") and not new.startswith("https:"):
            raise ArtifactError(f"{bounds.label}: {safe_url(url)} redirects from https to "
                                f"{safe_url(new)}; refused")
        url = new
    raise ArtifactError(f"{bounds.label}: more than {MAX_REDIRECTS} redirects from "
                        f"{safe_url(url)}")


def _start_offset(resp: http.client.HTTPResponse, part: PartialFile, size: int,
                  label: str, on_restart: Callable[[], None]) -> bool:
    """Checks the response's status and headers against the request; returns False if
    there is nothing left to read (the partial already holds every byte)."""
    status = resp.status
    if status == 206:
        match = CONTENT_RANGE.match(resp.getheader("Content-Range") or "")
        if match is None:
            raise TransientFetchError(f"{label}: 206 without a usable Content-Range "
                                      f"({resp.getheader('Content-Range')!r})")
        start, total = int(match.group(1)), match.group(3)
        if total != "*" and int(total) != size:
            raise integrity_error(label, f"the server has {total} bytes, the document says "
                                  f"size {size}")
        if start != part.length:
            asked = part.length
            part.truncate()  # not where we asked: start over rather than splice
            raise TransientFetchError(f"{label}: asked for bytes from {asked}, got a range "
                                      f"from {start}")
        return True
    if status == 200:
        if part.length:
            part.truncate()  # the server ignored Range: its body starts at byte 0
            on_restart()
        length = resp.getheader("Content-Length")
        if length is not None and length.isdigit() and int(length) != size:
            raise integrity_error(label, f"the server sends {length} bytes, the document "
                                  f"says size {size}")
        return True
    if status == 416 and part.length == size:
        return False  # every byte is already here; verification decides
    if status == 416:
        asked = part.length
        part.truncate()
        raise TransientFetchError(f"{label}: the server refused the range from byte {asked}")
    reason = f"HTTP {status} {resp.reason}".strip()
    if status >= 500 or status in (408, 429):
        raise TransientFetchError(f"{label}: {reason}")
    raise ArtifactError(f"{label}: {reason}")


def download_http(url: str, part: PartialFile, size: int, bounds: Bounds, stall_s: float,
                  on_bytes: Callable[[int], None], on_restart: Callable[[], None],
                  ssl_context: ssl.SSLContext | None = None) -> None:
    """Appends the rest of the artifact to `part`, asking for `bytes=<part.length>-`."""
    headers = {"User-Agent": "lichen-deployment", "Accept-Encoding": "identity"}
    if part.length:
        headers["Range"] = f"bytes={part.length}-"
    try:
        conn, resp = _open(url, headers, stall_s, bounds, ssl_context)
    except (OSError, http.client.HTTPException) as exc:
        bounds.check()
        raise _network_error(exc, bounds.label, url, stall_s) from exc
    try:
        with _interrupt_on_expiry(conn, bounds):
            if not _start_offset(resp, part, size, bounds.label, on_restart):
                return
            on_bytes(part.length)
            while True:
                try:
                    chunk = resp.read1(CHUNK)
                except (OSError, http.client.HTTPException) as exc:
                    bounds.check()
                    raise _network_error(exc, bounds.label, url, stall_s) from exc
                if not chunk:
                    break
                if part.length + len(chunk) > size:
                    raise integrity_error(bounds.label, f"the server sent more than size {size}")
                part.write(chunk)
                on_bytes(part.length)
                bounds.check()
    finally:
        conn.close()
    if part.length < size:
        bounds.check()
        raise TransientFetchError(f"{bounds.label}: the connection ended at byte "
                                  f"{part.length} of {size}")


def _network_error(exc: BaseException, label: str, url: str, stall_s: float) -> ArtifactError:
    if isinstance(exc, TimeoutError | socket.timeout):
        return FetchStalled(f"{label}: {safe_url(url)} sent nothing for {stall_s:g} s "
                            "(stall timeout)")
    if isinstance(exc, ssl.SSLCertVerificationError):
        return ArtifactError(f"{label}: {safe_url(url)}: {exc.verify_message or exc}")
    return TransientFetchError(f"{label}: {safe_url(url)}: {exc}")
