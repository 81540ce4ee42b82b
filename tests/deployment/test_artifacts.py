"""Fetching deployment artifacts from a real HTTP server on 127.0.0.1 (Range, cuts, stalls),
from local files, into a real cache directory (a real 1 MiB tmpfs for the full-disk case)."""

from __future__ import annotations

import hashlib
import http.server
import os
import shutil
import socket
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from gateway.deployment.artifacts import (
    ArtifactError,
    ArtifactIntegrityError,
    FetchCancelled,
    FetchStalled,
    FetchTimeout,
    InsufficientSpace,
    fetch,
    gc,
    hashes_to_keep,
    parse_artifact,
)
from gateway.errors import UserError

FAST = {"retry_delay_s": 0.01}  # retries in these tests need no back-off


@dataclass
class Served:
    body: bytes
    cut_once_at: int | None = None     # close the connection after this many body bytes, once
    ignore_range: bool = False         # answer every request 200 with the whole body
    stall_at: int | None = None        # send this many body bytes, then hang until released
    status: int = 200
    cuts_done: int = 0


@dataclass
class FileServer:
    """An HTTP server on 127.0.0.1 that serves `files` with Range support and records each
    request's path and Range header."""

    files: dict[str, Served] = field(default_factory=dict)
    requests: list[tuple[str, str | None]] = field(default_factory=list)
    release: threading.Event = field(default_factory=threading.Event)
    port: int = 0

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def add(self, path: str, body: bytes, **behaviour) -> dict:
        self.files[path] = Served(body, **behaviour)
        return {"url": self.url(path), "size": len(body),
                "sha256": hashlib.sha256(body).hexdigest(), "name": path.strip("/")}

    def ranges(self, path: str) -> list[str | None]:
        return [r for p, r in self.requests if p == path]


def make_handler(server: FileServer) -> type[http.server.BaseHTTPRequestHandler]:
    class Handler(http.server.BaseHTTPRequestHandler):
        def log_message(self, *args) -> None:
            pass

        def do_GET(self) -> None:  # noqa: N802 - the http.server hook's name
            path = self.path.split("?")[0]
            server.requests.append((path, self.headers.get("Range")))
            served = server.files.get(path)
            if served is None:
                self.send_error(404)
                return
            if served.status != 200:
                self.send_error(served.status)
                return
            body, start = served.body, 0
            rng = self.headers.get("Range")
            if rng and not served.ignore_range:
                start = int(rng.removeprefix("bytes=").split("-")[0])
                if start >= len(body):
                    self.send_response(416)
                    self.send_header("Content-Range", f"bytes */{len(body)}")
                    self.end_headers()
                    return
                self.send_response(206)
                self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
            else:
                self.send_response(200)
            self.send_header("Content-Length", str(len(body) - start))
            self.end_headers()
            rest = body[start:]
            if served.cut_once_at is not None and not served.cuts_done:
                served.cuts_done += 1
                self.wfile.write(rest[:served.cut_once_at - start])
                self.wfile.flush()
                self.connection.shutdown(socket.SHUT_RDWR)
                self.close_connection = True
                return
            if served.stall_at is not None:
                self.wfile.write(rest[:max(0, served.stall_at - start)])
                self.wfile.flush()
                server.release.wait(30)  # bounded: the fixture releases it at teardown
                return
            self.wfile.write(rest)

    return Handler


@pytest.fixture
def http_files() -> Iterator[FileServer]:
    files = FileServer()
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), make_handler(files))
    httpd.daemon_threads = True
    files.port = httpd.server_address[1]
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield files
    files.release.set()
    httpd.shutdown()
    httpd.server_close()
    thread.join(10)


def cache_files(cache: Path) -> list[str]:
    d = cache / "sha256"
    return sorted(p.name for p in d.iterdir()) if d.exists() else []


def body_of(n: int) -> bytes:
    return os.urandom(n)


def test_a_download_cut_at_half_resumes_from_there_and_verifies(http_files, tmp_path):
    body = body_of(1024 * 1024)
    half = len(body) // 2
    art = http_files.add("/app.bin", body, cut_once_at=half)
    reports: list[tuple[int, int]] = []

    path = fetch(art, tmp_path, progress=lambda d, t: reports.append((d, t)), **FAST)

    assert path == tmp_path / "sha256" / art["sha256"]
    assert path.read_bytes() == body
    assert http_files.ranges("/app.bin") == [None, f"bytes={half}-"]
    assert cache_files(tmp_path) == [art["sha256"]]  # no .part left behind
    # progress: bounded in count (1 % steps), never backwards, ends at the total
    assert reports[-1] == (len(body), len(body))
    assert len(reports) <= 110
    done = [d for d, _ in reports]
    assert done == sorted(done)


def test_a_partial_from_an_earlier_run_is_resumed(http_files, tmp_path):
    body = body_of(300_000)
    art = http_files.add("/model.onnx", body)
    part = tmp_path / "sha256" / f"{art['sha256']}.part"
    part.parent.mkdir(parents=True)
    part.write_bytes(body[:123_456])

    assert fetch(art, tmp_path).read_bytes() == body
    assert http_files.ranges("/model.onnx") == ["bytes=123456-"]


def test_a_wrong_sha256_is_refused_and_nothing_is_left(http_files, tmp_path):
    art = http_files.add("/app.bin", body_of(200_000), cut_once_at=100_000)
    art["sha256"] = "ab" * 32
    with pytest.raises(ArtifactIntegrityError) as exc:
        fetch(art, tmp_path, **FAST)
    message = str(exc.value)
    assert "'app.bin'" in message and "ab" * 32 in message and "sha256" in message
    assert "\n" not in message
    assert isinstance(exc.value, UserError)
    assert cache_files(tmp_path) == []


def test_a_wrong_size_is_refused_before_the_body_is_read(http_files, tmp_path):
    art = http_files.add("/app.bin", body_of(50_000))
    art["size"] = 40_000
    with pytest.raises(ArtifactIntegrityError, match="50000 bytes.*size 40000"):
        fetch(art, tmp_path)
    assert cache_files(tmp_path) == []


@pytest.fixture
def small_disk(tmp_path, monkeypatch) -> Iterator[Path]:
    """A real 1 MiB tmpfs where this test runs as root; elsewhere a disk_usage that says
    1 MiB is free (the same check, without the real filesystem)."""
    mnt = tmp_path / "small"
    mnt.mkdir()
    mounted = os.geteuid() == 0 and subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mnt)],
        capture_output=True, timeout=10).returncode == 0
    if not mounted:
        real = shutil.disk_usage
        monkeypatch.setattr(shutil, "disk_usage",
                            lambda p: real(p)._replace(free=1024 * 1024))
    yield mnt
    if mounted:
        subprocess.run(["umount", str(mnt)], capture_output=True, timeout=10)


def test_a_full_disk_is_refused_before_the_download_starts(http_files, small_disk):
    art = http_files.add("/big.bin", body_of(2 * 1024 * 1024))
    with pytest.raises(InsufficientSpace) as exc:
        fetch(art, small_disk, reserve_bytes=0)
    message = str(exc.value)
    assert message.startswith("artifact 'big.bin': not enough disk space")
    assert f"needs {2 * 1024 * 1024} bytes" in message and "free" in message
    assert http_files.requests == []  # refused before asking the server for anything


def test_the_reserve_counts_towards_the_space_needed(http_files, small_disk):
    art = http_files.add("/small.bin", body_of(100_000))
    with pytest.raises(InsufficientSpace, match="100000 to download \\+ 2097152 reserve"):
        fetch(art, small_disk, reserve_bytes=2 * 1024 * 1024)
    assert fetch(art, small_disk, reserve_bytes=0).read_bytes() == http_files.files[
        "/small.bin"].body


def test_a_cached_artifact_is_not_downloaded_again(http_files, tmp_path):
    art = http_files.add("/app.bin", body_of(100_000))
    first = fetch(art, tmp_path)
    reports: list[tuple[int, int]] = []
    second = fetch(art, tmp_path, progress=lambda d, t: reports.append((d, t)))
    assert first == second
    assert len(http_files.requests) == 1
    assert reports == [(100_000, 100_000)]


def test_a_corrupt_cached_file_is_fetched_again(http_files, tmp_path):
    body = body_of(100_000)
    art = http_files.add("/app.bin", body)
    path = fetch(art, tmp_path)
    path.chmod(0o644)
    path.write_bytes(b"x" * len(body))  # same size, other bytes: a bad sector, a hand edit
    assert fetch(art, tmp_path).read_bytes() == body
    assert len(http_files.requests) == 2


def test_a_server_answering_200_to_a_range_request_restarts_cleanly(http_files, tmp_path):
    body = body_of(400_000)
    art = http_files.add("/app.bin", body, cut_once_at=200_000, ignore_range=True)
    path = fetch(art, tmp_path, **FAST)
    assert http_files.ranges("/app.bin") == [None, "bytes=200000-"]
    assert path.read_bytes() == body  # the 200 body replaced the partial, no splice


def test_a_stalled_server_times_out_and_keeps_the_partial_for_later(http_files, tmp_path):
    body = body_of(200_000)
    art = http_files.add("/app.bin", body, stall_at=80_000)
    with pytest.raises(FetchStalled) as exc:
        fetch(art, tmp_path, stall_timeout_s=0.3, attempts=2, **FAST)
    assert "stall timeout" in str(exc.value) and "after 2 attempts" in str(exc.value)
    assert http_files.ranges("/app.bin") == [None, "bytes=80000-"]
    assert (tmp_path / "sha256" / f"{art['sha256']}.part").stat().st_size == 80_000

    http_files.files["/app.bin"].stall_at = None
    assert fetch(art, tmp_path).read_bytes() == body
    assert http_files.ranges("/app.bin")[-1] == "bytes=80000-"


@pytest.mark.timeout(30)
def test_cancel_interrupts_a_blocked_read(http_files, tmp_path):
    art = http_files.add("/app.bin", body_of(200_000), stall_at=50_000)
    cancel = threading.Event()

    def progress(done: int, total: int) -> None:
        if done >= 50_000:
            cancel.set()  # the next read blocks: only the watcher can end it

    # a stall timeout longer than this test's own timeout: cancel must not wait for it
    with pytest.raises(FetchCancelled, match="'app.bin': fetch cancelled"):
        fetch(art, tmp_path, progress=progress, cancel=cancel, stall_timeout_s=300)


@pytest.mark.timeout(30)
def test_the_overall_timeout_bounds_a_slow_fetch(http_files, tmp_path):
    art = http_files.add("/app.bin", body_of(200_000), stall_at=50_000)
    with pytest.raises(FetchTimeout, match="not fetched within the 0.5 s timeout") as exc:
        fetch(art, tmp_path, timeout_s=0.5, stall_timeout_s=300)
    assert not isinstance(exc.value, FetchStalled)


def test_an_http_error_is_one_line_and_not_retried(http_files, tmp_path):
    art = http_files.add("/gone.bin", b"x", status=404)
    with pytest.raises(ArtifactError, match="^artifact 'gone.bin': HTTP 404"):
        fetch(art, tmp_path, **FAST)
    assert len(http_files.requests) == 1


def test_a_server_error_is_retried_up_to_the_attempts(http_files, tmp_path):
    art = http_files.add("/busy.bin", b"x", status=503)
    with pytest.raises(ArtifactError, match="HTTP 503.*after 3 attempts"):
        fetch(art, tmp_path, attempts=3, **FAST)
    assert len(http_files.requests) == 3


def test_presigned_query_strings_never_reach_error_messages(http_files, tmp_path):
    art = http_files.add("/gone.bin", b"x", status=404)
    art["url"] += "?X-Amz-Signature=secret"
    del art["name"]
    with pytest.raises(ArtifactError) as exc:
        fetch(art, tmp_path)
    assert "secret" not in str(exc.value) and "/gone.bin" in str(exc.value)


def test_two_fetches_of_one_artifact_at_once_download_it_once(http_files, tmp_path):
    body = body_of(2 * 1024 * 1024)
    art = http_files.add("/app.bin", body)
    results: list[Path] = []
    threads = [threading.Thread(target=lambda: results.append(fetch(art, tmp_path)))
               for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert len(results) == 2 and results[0] == results[1]
    assert results[0].read_bytes() == body
    assert len(http_files.requests) == 1


def test_file_urls_and_plain_paths_are_copied_and_verified(tmp_path):
    body = body_of(150_000)
    src = tmp_path / "src dir" / "model.onnx"
    src.parent.mkdir()
    src.write_bytes(body)
    digest = hashlib.sha256(body).hexdigest()
    by_url = fetch({"url": src.as_uri(), "size": len(body), "sha256": digest},
                   tmp_path / "c1")
    by_path = fetch({"url": str(src), "size": len(body), "sha256": digest.upper()},
                    tmp_path / "c2")
    assert by_url.read_bytes() == body == by_path.read_bytes()
    assert by_path.name == digest

    with pytest.raises(ArtifactIntegrityError, match="is 150000 bytes, the document says"):
        fetch({"url": str(src), "size": 10, "sha256": digest}, tmp_path / "c3")
    with pytest.raises(ArtifactError, match="cannot read .*missing"):
        fetch({"url": str(tmp_path / "missing"), "size": 1, "sha256": digest},
              tmp_path / "c4")


def test_gc_removes_only_what_is_not_kept(tmp_path):
    cache = tmp_path / "cache"
    arts = []
    for i in range(3):
        src = tmp_path / f"a{i}"
        src.write_bytes(f"artifact {i}".encode())
        arts.append({"url": str(src), "size": src.stat().st_size,
                     "sha256": hashlib.sha256(src.read_bytes()).hexdigest()})
        fetch(arts[-1], cache)
    d = cache / "sha256"
    stale = d / f"{'cd' * 32}.part"
    stale.write_bytes(b"half")
    kept_part = d / f"{arts[0]['sha256']}.part"
    kept_part.write_bytes(b"ha")
    (d / "README").write_text("not an artifact: left alone")

    keep = hashes_to_keep([[arts[0]], [arts[1]], [arts[2]]], last_n=2)
    assert keep == {arts[0]["sha256"], arts[1]["sha256"]}
    removed = gc(cache, keep)

    assert sorted(p.name for p in removed) == sorted([arts[2]["sha256"], stale.name])
    assert cache_files(cache) == sorted(["README", arts[0]["sha256"], arts[1]["sha256"],
                                         kept_part.name])
    assert gc(cache, keep) == []
    assert gc(tmp_path / "never-used", set()) == []


@pytest.mark.parametrize(("raw", "message"), [
    ({"url": "https://h/a", "size": 1, "sha256": "zz"}, "sha256 must be 64 hex digits, got 'zz'"),
    ({"url": "https://h/a", "size": -1, "sha256": "a" * 64}, "size must be .* got -1"),
    ({"url": "https://h/a", "size": True, "sha256": "a" * 64}, "size must be .* got True"),
    ({"url": "", "size": 1, "sha256": "a" * 64}, "url must be a non-empty string, got ''"),
    ({"url": "ftp://h/a", "size": 1, "sha256": "a" * 64}, "url scheme 'ftp' is not supported"),
    ({"url": "file://other/a", "size": 1, "sha256": "a" * 64}, "names host 'other'"),
    ({"url": "${aws:iot:s3-presigned-url:https://s3.amazonaws.com/b/k}", "size": 1,
      "sha256": "a" * 64, "name": "fw"}, "artifact 'fw': url is an unresolved presigned-URL"),
    (["not", "an", "object"], "must be an object"),
])
def test_bad_artifacts_are_refused_naming_the_field_and_value(raw, message):
    with pytest.raises(ArtifactError, match=message):
        parse_artifact(raw)


def test_the_deployment_documents_artifacts_can_be_fetched(tmp_path):
    document = pytest.importorskip("gateway.deployment.document")
    src = tmp_path / "model.onnx"
    src.write_bytes(b"weights")
    art = document.Artifact(name="model", url=str(src), size=7,
                            sha256=hashlib.sha256(b"weights").hexdigest())
    assert fetch(art, tmp_path / "cache").read_bytes() == b"weights"


def test_progress_is_reported_every_percent_or_second_at_most():
    from gateway.deployment.artifact_progress import ProgressThrottle

    now = [0.0]
    reports: list[int] = []
    throttle = ProgressThrottle(10_000, lambda d, t: reports.append(d), clock=lambda: now[0])
    for done in range(0, 10_001, 10):  # 1001 chunks of 10 bytes, no time passing
        throttle.update(done)
    assert reports == list(range(0, 10_001, 100))
    throttle.update(10_005 - 5)  # the same figure again: nothing new to say
    assert len(reports) == 101

    reports.clear()
    slow = ProgressThrottle(10_000, lambda d, t: reports.append(d), clock=lambda: now[0])
    slow.update(0)
    slow.update(1)          # under 1 % and no time passed: held back
    now[0] += 1.0
    slow.update(2)          # a second later: reported although under 1 %
    assert reports == [0, 2]
