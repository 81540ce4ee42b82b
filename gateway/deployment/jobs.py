"""The IoT Jobs agent: takes this thing's jobs from AWS IoT Jobs and runs each one as a
deployment, one at a time, in the order IoT hands them out.

It speaks the Jobs MQTT API through awsiotsdk's IotJobsClientV2 (the request-response
client) on the gateway's own cloud connection (`CloudLink.protocol_client`). The client is
built once per cloud link: the link stops and starts its SDK client between connections
(the request-response client follows that), and a deployment that changes routes replaces
the whole bridge, so the daemon calls `attach(bridge)` for each new one.

On every connection and every notify-next: first report what is owed (a deployment of a job
that ended, whose outcome the cloud has not accepted yet), then, with no job of ours
unfinished, StartNextPendingJobExecution; the document goes to the deployment agent with
the job id (`submit(document, job_id=...)`), which links the two in deployments.sqlite3.
IN_PROGRESS reports carry the step and bytes downloaded; the end is SUCCEEDED, FAILED
(reason) or REJECTED (reason). The execution's version and the last status the cloud
accepted are kept in the job_reports table, so after kill -9 the gateway picks the job up
where the deployment agent left it (IoT hands an IN_PROGRESS execution out again first) and
reports its definite outcome once, with expectedVersion; a report whose answer was lost is
recognised by the execution state a rejection carries.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..offload import Offloader
from .jobs_state import (
    IN_PROGRESS,
    JOB_TERMINAL,
    ProgressPacer,
    after_rejection,
    outcome,
    progress_details,
)
from .store import FINAL, Deployment, DeploymentStore

if TYPE_CHECKING:
    from ..cloud.bridge import CloudBridge
    from .agent import DeploymentAgent

log = logging.getLogger("lichen.jobs")

REQUEST_TIMEOUT_S = 30        # the request-response client gives up on an answer after this
RETRY_MIN_S, RETRY_MAX_S = 1.0, 60.0
MAX_VERSION_RETRIES = 5
GAVE_UP = "GAVE_UP"           # a report the cloud refused for good (logged, not retried)
SETTLED = tuple(sorted(JOB_TERMINAL)) + (GAVE_UP,)


class Unavailable(Exception):
    """No answer now (not connected, timed out): try again later."""


class Rejected(Exception):
    def __init__(self, error: Any) -> None:
        super().__init__(f"{error.code}: {error.message}")
        self.error = error


class JobsAgent:
    def __init__(self, state_dir: Path, thing: str) -> None:
        self.state_dir = state_dir
        self.thing = thing
        self.deployments: DeploymentAgent | None = None
        self.store: DeploymentStore | None = None   # its own connection: its own thread
        self.bridge: CloudBridge | None = None
        self.client = None
        self._stream = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake = asyncio.Event()
        self._task: asyncio.Task | None = None
        self._active: int | None = None              # the deployment of the running job
        self._pacer = ProgressPacer()
        self.reported = 0
        self.last_error: str | None = None
        self._offload = Offloader("jobs agent")   # store calls, drained before close

    # ------------------------------------------------------------------ wiring

    def attach(self, bridge: CloudBridge) -> None:
        """Use this bridge's connection from now on (called right after it started)."""
        from awscrt import mqtt_request_response
        from awsiot import ServiceStreamOptions, iotjobs

        self._loop = asyncio.get_running_loop()
        self.bridge = bridge
        bridge.add_state_listener(lambda state, b=bridge: self._cloud_state(b, state))
        options = mqtt_request_response.ClientOptions(
            max_request_response_subscriptions=4, max_streaming_subscriptions=2,
            operation_timeout_in_seconds=REQUEST_TIMEOUT_S)
        self.client = iotjobs.IotJobsClientV2(bridge.link.protocol_client, options)
        self._stream = self.client.create_next_job_execution_changed_stream(
            iotjobs.NextJobExecutionChangedSubscriptionRequest(thing_name=self.thing),
            ServiceStreamOptions(incoming_event_listener=self._notified))
        self._stream.open()
        if bridge.state == "connected":
            self._poke()

    async def start(self, deployments: DeploymentAgent) -> None:
        self._loop = asyncio.get_running_loop()
        self.deployments = deployments
        self.store = await self._offload.run(DeploymentStore, self.state_dir)
        deployments.add_listener(self._on_deployment)
        self._task = self._loop.create_task(self._run())
        self._poke()

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        self._stream = self.client = None   # native resources, released when collected
        if self.store is not None and await self._offload.drain():
            self.store.close()

    def status(self) -> dict:
        return {"thing_name": self.thing, "active_deployment": self._active,
                "reported": self.reported, "last_error": self.last_error}

    # ------------------------------------------------------------------ events

    def _poke(self) -> None:
        self._wake.set()

    def _notified(self, _event: Any) -> None:   # the SDK's thread: notify-next
        loop = self._loop
        if loop is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(self._poke)

    def _cloud_state(self, bridge: CloudBridge, state: str) -> None:
        if bridge is self.bridge and state == "connected":
            self._poke()

    def _on_deployment(self, dep_id: int, state: str, detail: str | None) -> None:
        if dep_id != self._active:
            return
        if state not in FINAL:
            self._pacer.offer(progress_details(dep_id, state, detail))
        self._poke()

    def _connected(self) -> bool:
        return self.bridge is not None and self.bridge.state == "connected" \
            and self.client is not None

    # ------------------------------------------------------------------ the work

    async def _run(self) -> None:
        failures = 0
        while True:
            self._wake.clear()
            delay: float | None = None
            try:
                delay = await self._work()
                failures = 0
            except asyncio.CancelledError:
                raise
            except Unavailable as exc:
                failures += 1
                self.last_error = str(exc)
                log.info("jobs: %s; trying again", exc)
                delay = min(RETRY_MAX_S, RETRY_MIN_S * 2 ** min(failures, 6)) \
                    if self._connected() else None  # else the next connection wakes us
            except Exception as exc:
                failures += 1
                self.last_error = str(exc)
                log.exception("jobs agent")
                delay = RETRY_MAX_S
            if self._wake.is_set():
                continue
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), delay)

    async def _work(self) -> float | None:
        """One pass; returns when to look again without a wake (None: only on a wake)."""
        if not self._connected():
            return None
        for dep in await self._offload.run(self.store.jobs_to_finish, SETTLED):
            if dep.final:
                await self._report_final(dep)
                continue
            if self._active != dep.id:   # found after a restart, or just submitted
                self._active = dep.id
                self._pacer.reset()
                self._pacer.offer(progress_details(dep.id, dep.state, None))
            return await self._report_progress(dep)
        self._active = None
        await self._start_next()
        return None

    async def _start_next(self) -> None:
        from awsiot import iotjobs

        req = iotjobs.StartNextPendingJobExecutionRequest(
            thing_name=self.thing, status_details={"step": "RECEIVED"})
        resp = await self._request("start_next_pending_job_execution", req)
        ex = resp.execution
        if ex is None:
            return
        await self._offload.run(self.store.set_job_report, ex.job_id,
                                version=ex.version_number, reported=IN_PROGRESS)
        known = await self._offload.run(self.store.by_job, ex.job_id)
        if known is None:
            dep_id = await self.deployments.submit(ex.job_document, job_id=ex.job_id)
            log.info("job %s: deployment %d", ex.job_id, dep_id)
        else:
            log.info("job %s: deployment %d again (%s)", ex.job_id, known.id, known.state)
        self._poke()   # next pass: its progress, or its outcome

    async def _report_progress(self, dep: Deployment) -> float | None:
        wait = self._pacer.due(time.monotonic())
        if wait is None or wait > 0:
            return wait
        details = self._pacer.take(time.monotonic())
        await self._update(dep.job_id, IN_PROGRESS, details)
        return self._pacer.due(time.monotonic())

    async def _report_final(self, dep: Deployment) -> None:
        status, details = outcome(dep)
        settled = await self._update(dep.job_id, status, details)
        if settled == status:
            self.reported += 1
            log.info("job %s: %s reported (deployment %d)", dep.job_id, status, dep.id)
        if self._active == dep.id:
            self._active = None

    async def _update(self, job_id: str, status: str, details: dict[str, str]) -> str | None:
        """Report `status`; returns what the execution settled on (None: still pending).
        A final status is recorded as reported only once the cloud accepted it or already
        has a terminal one; rejections are handled as after_rejection says."""
        from awsiot import iotjobs

        version, _ = await self._offload.run(self.store.job_report, job_id)
        for _ in range(MAX_VERSION_RETRIES):
            req = iotjobs.UpdateJobExecutionRequest(
                thing_name=self.thing, job_id=job_id, status=status, status_details=details,
                expected_version=version, include_job_execution_state=True)
            try:
                resp = await self._request("update_job_execution", req)
            except Rejected as exc:
                err = exc.error
                state = err.execution_state
                decision = after_rejection(status, err.code, state and state.status,
                                           state and state.version_number)
                if decision.action == "retry":
                    version = decision.version
                    continue
                if decision.action == "describe":
                    cloud_status, version = await self._describe(job_id)
                    if cloud_status in JOB_TERMINAL:
                        decision = after_rejection(status, None, cloud_status, version)
                    else:
                        continue
                if decision.action == "later":
                    raise Unavailable(f"job {job_id}: {decision.note}") from None
                settled = decision.cloud_status or GAVE_UP
                if status != IN_PROGRESS or settled != GAVE_UP:
                    await self._offload.run(self.store.set_job_report, job_id,
                                            reported=settled, note=decision.note)
                level = logging.INFO if settled == status else logging.WARNING
                log.log(level, "job %s: %s: %s (%s)", job_id, status, decision.note, exc)
                return settled
            state = resp.execution_state
            new_version = state.version_number if state is not None else None
            await self._offload.run(self.store.set_job_report, job_id, version=new_version,
                                    reported=status)
            return status if status in JOB_TERMINAL else None
        raise Unavailable(f"job {job_id}: the execution's version kept changing")

    async def _describe(self, job_id: str) -> tuple[str | None, int | None]:
        from awsiot import iotjobs

        req = iotjobs.DescribeJobExecutionRequest(thing_name=self.thing, job_id=job_id,
                                                  include_job_document=False)
        try:
            resp = await self._request("describe_job_execution", req)
        except Rejected as exc:
            if exc.error.code == "ResourceNotFound":
                return "REMOVED", None
            raise Unavailable(f"job {job_id}: describe: {exc}") from None
        ex = resp.execution
        return (ex.status, ex.version_number) if ex is not None else ("REMOVED", None)

    async def _request(self, operation: str, request: Any) -> Any:
        """One request through the V2 client: Rejected with IoT's error, or Unavailable."""
        from awsiot import V2ServiceException

        if not self._connected():
            raise Unavailable("not connected")
        call: Callable = getattr(self.client, operation)
        try:
            future = asyncio.wrap_future(call(request))
            return await asyncio.wait_for(future, REQUEST_TIMEOUT_S + 5)
        except V2ServiceException as exc:
            if exc.modeled_error is not None:
                raise Rejected(exc.modeled_error) from None
            raise Unavailable(f"{operation}: {exc.inner_error or exc.message}") from None
        except TimeoutError:
            raise Unavailable(f"{operation}: no answer within "
                              f"{REQUEST_TIMEOUT_S + 5} s") from None
