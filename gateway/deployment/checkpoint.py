"""A test hook: LICHEN_DEPLOY_PAUSE_AT=STEP stops a deployment right after STEP is durable,
so a test can kill -9 the process at a known point. It writes
STATE_DIR/deployments/paused-at-STEP and then waits to be killed (it is called from a
worker thread, so the gateway's event loop keeps serving meanwhile)."""

from __future__ import annotations

import os
import time
from pathlib import Path

ENV = "LICHEN_DEPLOY_PAUSE_AT"


def checkpoint(state_dir: Path, step: str) -> None:
    if os.environ.get(ENV) != step:
        return
    marker = state_dir / "deployments" / f"paused-at-{step}"
    marker.parent.mkdir(parents=True, exist_ok=True)
    marker.write_text(str(os.getpid()))
    while True:  # until killed: this is the point of the hook
        time.sleep(3600)
