"""The deployment agent in the running gateway: takes deployments (from `lichen deploy`
through the SQLite store and SIGUSR1, or from an in-process client such as an IoT Jobs
agent through `submit`), runs them one at a time to a final state, and reports progress.

    agent.submit(document, job_id=None) -> deployment id        (base_dir: relative paths)
    agent.add_listener(callback(id, state, detail))              every step, as it happens
    agent.get(id) -> Deployment                                  state, reason, version...
    await agent.wait(id) -> Deployment                           once final:
        SUCCEEDED | FAILED (reason; rolled back) | REJECTED (reason; nothing changed)
"""

from __future__ import annotations

import asyncio
import logging
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from ..offload import Offloader
from . import cleanup, health, pipeline, registry_ops, versions
from .checkpoint import checkpoint
from .document import health_window
from .reconfigure import reconfigure
from .store import (
    AFTER_SWITCH,
    HEALTH_CHECK,
    RECEIVED,
    ROLLED_BACK,
    SUCCEEDED,
    Deployment,
    DeploymentStore,
)

if TYPE_CHECKING:
    from ..daemon import Gateway
    from .boot import Boot

log = logging.getLogger("lichen.deploy")

Listener = Callable[[int, str, "str | None"], None]
WAKE_SIGNAL = signal.SIGUSR1


class DeploymentAgent:
    def __init__(self, gateway: Gateway, boot: Boot) -> None:
        self.gateway = gateway
        self.state_dir: Path = gateway.state_dir
        self.version = boot.version          # the version the gateway runs
        self.store: DeploymentStore | None = None
        self.busy: int | None = None
        self._listeners: list[Listener] = [self._remember_progress]
        self._last_progress: dict | None = None   # for status.json and `lichen deploy status`
        self._waiters: dict[int, list[asyncio.Future]] = {}
        self._wake = asyncio.Event()
        self._task: asyncio.Task | None = None
        self._loop_ref: asyncio.AbstractEventLoop | None = None
        self._notes = boot.notes
        self._offload = Offloader("deployment agent")   # store calls, drained before close

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self.store = await self._offload.run(DeploymentStore, self.state_dir)
        pipeline.log_notes(self._notes)
        loop.add_signal_handler(WAKE_SIGNAL, self._wake.set)
        self._task = loop.create_task(self._loop())
        self._wake.set()  # what was left by a restart, or queued while we were down

    async def stop(self) -> None:
        asyncio.get_running_loop().remove_signal_handler(WAKE_SIGNAL)
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        if self.store is not None and await self._offload.drain():
            self.store.close()

    # ------------------------------------------------------------------ API

    async def submit(self, document: dict, job_id: str | None = None,
                     base_dir: Path | None = None) -> int:
        dep_id = await self._offload.run(self.store.add, "apply", document, job_id=job_id,
                                         base_dir=str(base_dir) if base_dir else None)
        self._progress(dep_id, RECEIVED, job_id)
        self._wake.set()
        return dep_id

    def add_listener(self, callback: Listener) -> None:
        self._listeners.append(callback)

    def get(self, dep_id: int) -> Deployment | None:
        return self.store.get(dep_id)

    async def wait(self, dep_id: int) -> Deployment:
        dep = self.store.get(dep_id)
        if dep is None or dep.final:
            return dep
        fut = asyncio.get_running_loop().create_future()
        self._waiters.setdefault(dep_id, []).append(fut)
        return await fut

    def status(self) -> dict:
        return {"enabled": True, "version": self.version, "busy": self.busy,
                "progress": self._last_progress}

    def _remember_progress(self, dep_id: int, state: str, detail: str | None) -> None:
        self._last_progress = {"deployment": dep_id, "step": state, "detail": detail,
                               "at": round(time.time(), 3)}

    # ------------------------------------------------------------------ the work

    def _progress(self, dep_id: int, state: str, detail: str | None) -> None:
        for callback in self._listeners:
            try:
                callback(dep_id, state, detail)
            except Exception:
                log.exception("deployment progress listener failed")

    def _threadsafe_progress(self, dep_id: int, state: str, detail: str | None) -> None:
        self._loop_ref.call_soon_threadsafe(self._progress, dep_id, state, detail)

    async def _loop(self) -> None:
        self._loop_ref = asyncio.get_running_loop()
        while True:
            await self._wake.wait()
            self._wake.clear()
            while True:
                pending = await self._offload.run(self.store.in_states,
                                                  AFTER_SWITCH + (RECEIVED,))
                if not pending:
                    break
                # one already switched first: the gateway must settle on a version
                pending.sort(key=lambda d: (d.state == RECEIVED, d.id))
                await self._run(pending[0])

    async def _run(self, dep: Deployment) -> None:
        self.busy = dep.id
        try:
            if dep.state == RECEIVED:
                log.info("deployment %d (%s%s): started", dep.id, dep.kind,
                         f", job {dep.job_id}" if dep.job_id else "")
                version = dep.version
                if dep.kind == "apply":
                    try:
                        version = await self._offload.run(
                            pipeline.stage, self.state_dir, self.store, dep.id,
                            self._threadsafe_progress)
                    except pipeline.Refused as exc:
                        log.error("deployment %d %s: %s", dep.id, exc.state, exc)
                        return
                await self._offload.run(pipeline.switch, self.state_dir, self.store, dep.id,
                                        version, self._threadsafe_progress)
            await self._activate(self.store.get(dep.id))
        finally:
            self.busy = None
            final = self.store.get(dep.id)
            if final is not None and final.final:
                for fut in self._waiters.pop(dep.id, []):
                    if not fut.done():
                        fut.set_result(final)

    async def _write_status(self) -> None:
        """status.json now, not at the next tick: `lichen fn invoke` checks the function
        list there, and a deployment just changed it."""
        from ..state_dir import write_status

        try:
            await self._offload.run(write_status, self.state_dir, self.gateway.status())
        except OSError as exc:
            log.warning("cannot write status file: %s", exc)

    async def _activate(self, dep: Deployment) -> None:
        """SWITCHED -> HEALTH_CHECK -> SUCCEEDED, or back to the version before: FAILED."""
        gw = self.gateway
        cloud_was_connected = gw.cloud is not None and gw.cloud.state == "connected"
        doc = dep.document if dep.kind == "apply" else None
        try:
            new = await self._offload.run(versions.version_config, self.state_dir, dep.version)
            changes = await reconfigure(gw, versions.with_deployed(gw.cfg, new))
            self.version = dep.version
            await self._write_status()
            await self._offload.run(self.store.set_state, dep.id, HEALTH_CHECK,
                                    "; ".join(changes) or "no component changed")
            self._progress(dep.id, HEALTH_CHECK, None)
            await self._offload.run(checkpoint, self.state_dir, HEALTH_CHECK)
            await health.check(gw, gw.cfg, doc, health_window(doc), cloud_was_connected)
            done = await self._offload.run(registry_ops.apply, self.state_dir, doc or {})
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # anything at all: the version before is known to run
            reason = f"health check failed: {exc}"
            if not isinstance(exc, health.HealthCheckFailed):
                reason = f"applying version {dep.version} failed: {exc}"
                log.exception("deployment %d", dep.id)
            await self._roll_back(dep, reason)
            return
        await self._offload.run(self._succeeded, dep, done)
        self._progress(dep.id, SUCCEEDED, None)
        log.info("deployment %d SUCCEEDED: version %d runs", dep.id, dep.version)

    def _succeeded(self, dep: Deployment, done: list[str]) -> None:
        if dep.kind == "rollback" and dep.previous_version:
            gone = self.store.last_switched_to(dep.previous_version)
            if gone is not None and gone.id != dep.id and gone.state == SUCCEEDED:
                self.store.set_state(gone.id, ROLLED_BACK, f"rolled back by deployment "
                                     f"{dep.id} to version {dep.version}")
        self.store.set_state(dep.id, SUCCEEDED, "; ".join(done) or None)
        cleanup.collect_garbage(self.state_dir, self.store,
                                keep={dep.version, dep.previous_version or 0})

    async def _roll_back(self, dep: Deployment, reason: str) -> None:
        full = await self._offload.run(pipeline.switch_back, self.state_dir, self.store,
                                       dep.id, reason)
        log.error("deployment %d FAILED: %s", dep.id, full)
        previous = dep.previous_version or 0
        try:
            old = await self._offload.run(versions.version_config, self.state_dir, previous)
            await reconfigure(self.gateway, versions.with_deployed(self.gateway.cfg, old))
            self.version = previous
            await self._write_status()
        except Exception:
            log.exception("deployment %d: reconfiguring back to version %d failed; a "
                          "restart runs it", dep.id, previous)
        self._progress(dep.id, "FAILED", full)
