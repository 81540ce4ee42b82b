"""Make or renew the local CA and the gateway's server certificate, in a child process.

`python -m gateway.auth.prepare STATE_DIR [--server-name NAME ...]`

The daemon runs this only when pki/ says there is work (no CA yet, no or stale server.json,
a server certificate near expiry or missing a name), so `cryptography` is loaded in a process
that exits at once, not for the daemon's whole life. Exit 0 when done; 1 with one line on
stderr for anything the operator must fix (half a CA, unreadable files).
"""

from __future__ import annotations

import argparse
import logging
import subprocess
import sys
from pathlib import Path

from ..errors import UserError
from ..state_dir import PKI_DIR
from .pki_files import PKIFiles

log = logging.getLogger("lichen.auth.ca")

PREPARE_TIMEOUT = 120.0   # an RSA CA on a slow board takes seconds; this is a hang, not work


class PrepareError(UserError):
    """The child could not make the CA or server certificate; its one line."""


def prepare_pki(state_dir: Path, server_names: list[str]) -> bool:
    """Make sure the CA and a current server certificate exist; True when the child ran.
    Raises IncompleteCAError (half a CA) or PrepareError with the child's one line."""
    files = PKIFiles(state_dir / PKI_DIR)
    if not files.needs_preparing(server_names):
        return False
    cmd = [sys.executable, "-m", "gateway.auth.prepare", str(state_dir)]
    for name in server_names:
        cmd += ["--server-name", name]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=PREPARE_TIMEOUT)
    except subprocess.TimeoutExpired:
        raise PrepareError(f"making the gateway's certificates in {files.dir} took over "
                           f"{PREPARE_TIMEOUT:.0f} s") from None
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    if proc.returncode != 0:
        why = lines[-1] if lines else f"exit status {proc.returncode}"
        raise PrepareError(why.removeprefix("lichen: "))
    for line in lines:  # what it made, for the daemon's log
        log.info("%s", line)
    return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m gateway.auth.prepare")
    parser.add_argument("state_dir")
    parser.add_argument("--server-name", action="append", default=[])
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    from .ca import LocalCA

    try:
        ca = LocalCA(Path(args.state_dir) / PKI_DIR)
        ca.ensure()
        ca.ensure_server_certificate(args.server_name)
    except UserError as exc:
        print(f"lichen: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        where = f" {exc.filename}" if exc.filename else ""
        print(f"lichen: cannot write the gateway's certificates:{where} "
              f"{exc.strerror or exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
