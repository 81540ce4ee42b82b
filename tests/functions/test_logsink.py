"""Function logs stay bounded: rotated at a size, one backup kept."""

from __future__ import annotations

from pathlib import Path

from gateway.functions.logsink import LogSink


def test_rotates_at_size(tmp_path: Path) -> None:
    sink = LogSink(tmp_path / "functions" / "f.log", max_bytes=4096)
    for i in range(500):
        sink.write(1234, f"line {i} of some output\n".encode())
    sink.close()
    log, backup = tmp_path / "functions" / "f.log", tmp_path / "functions" / "f.log.1"
    assert log.stat().st_size <= 4096 and backup.stat().st_size <= 4096
    assert log.read_text().splitlines()[-1].endswith("[1234] line 499 of some output")
    assert sorted(p.name for p in log.parent.iterdir()) == ["f.log", "f.log.1"]


def test_partial_lines_and_huge_writes(tmp_path: Path) -> None:
    sink = LogSink(tmp_path / "f.log", max_bytes=1024)
    sink.write(None, b"no newline")
    sink.write(7, b"x" * 10_000)  # one write bigger than the whole budget is cut
    sink.close()
    assert (tmp_path / "f.log").stat().st_size <= 1024
    assert (tmp_path / "f.log.1").read_text().endswith("[-] no newline\n")
