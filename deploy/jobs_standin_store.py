"""The IoT Jobs device API (MQTT) as a pure state machine, for the Jobs stand-in.

`JobStore.handle(topic, payload, now)` takes one request on a `$aws/things/T/jobs/...` topic
and returns the messages IoT Core would publish in answer: `/accepted` or `/rejected`, and
`notify-next` when the thing's next pending execution changed. Request topics:

    $aws/things/T/jobs/get                  pending executions (in progress, queued)
    $aws/things/T/jobs/start-next           start the next pending execution
    $aws/things/T/jobs/JOB/get              one execution; JOB may be $next
    $aws/things/T/jobs/JOB/update           status IN_PROGRESS, SUCCEEDED, FAILED, REJECTED

The operator's side keeps two job configurations as IoT Core enforces them:

- rollout (`jobExecutionsRolloutConfig.maximumPerMinute`): executions are created at most N
  per minute from the job's creation (N at once, N more a minute later, ...); a thing whose
  execution is not created yet sees no job. `tick(now)` creates what is due.
- abort (`abortConfig.criteriaList`, action CANCEL): once at least minNumberOfExecutedThings
  executions ended (a terminal status) and the failures of failureType (FAILED, REJECTED,
  TIMED_OUT or ALL of them) are at least thresholdPercentage of those, the job is CANCELED:
  QUEUED executions and those not yet created are canceled; IN_PROGRESS ones run on (a
  cancel without force), and their updates are still taken.

Exponential rollout, timeouts and retries are not modelled.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

Message = tuple[str, dict[str, Any]]
PENDING = ("IN_PROGRESS", "QUEUED")  # the order in which the next execution is chosen
TERMINAL = {"SUCCEEDED", "FAILED", "REJECTED", "CANCELED", "TIMED_OUT", "REMOVED"}
DEVICE_STATUSES = {"IN_PROGRESS", "SUCCEEDED", "FAILED", "REJECTED"}


@dataclass
class Execution:
    job_id: str
    thing: str
    document: dict[str, Any]
    queued_at: int
    order: int
    status: str = "QUEUED"
    status_details: dict[str, str] = field(default_factory=dict)
    started_at: int | None = None
    last_updated_at: int = 0
    version: int = 1
    execution_number: int = 1
    created: bool = True         # False: held back by the job's rollout rate

    def summary(self) -> dict[str, Any]:
        out = {"jobId": self.job_id, "queuedAt": self.queued_at,
               "lastUpdatedAt": self.last_updated_at or self.queued_at,
               "versionNumber": self.version, "executionNumber": self.execution_number}
        if self.started_at is not None:
            out["startedAt"] = self.started_at
        return out

    def full(self, with_document: bool = True) -> dict[str, Any]:
        out = self.summary() | {"thingName": self.thing, "status": self.status,
                                "statusDetails": dict(self.status_details)}
        if with_document:
            out["jobDocument"] = self.document
        return out

    def state(self) -> dict[str, Any]:
        return {"status": self.status, "statusDetails": dict(self.status_details),
                "versionNumber": self.version}


@dataclass
class Job:
    job_id: str
    created_at: int
    max_per_minute: int | None = None
    abort: list[dict[str, Any]] = field(default_factory=list)
    status: str = "IN_PROGRESS"          # or CANCELED, COMPLETED
    reason: str | None = None


FAILURE_TYPES = {"FAILED": {"FAILED"}, "REJECTED": {"REJECTED"}, "TIMED_OUT": {"TIMED_OUT"},
                 "ALL": {"FAILED", "REJECTED", "TIMED_OUT"}}
EXECUTED = {"SUCCEEDED", "FAILED", "REJECTED", "TIMED_OUT"}


def _check_abort(criteria: Any) -> list[dict[str, Any]]:
    if not isinstance(criteria, list):
        raise ValueError(f"abortConfig.criteriaList: must be a list, got {criteria!r}")
    for i, c in enumerate(criteria):
        where = f"abortConfig.criteriaList[{i}]"
        if not isinstance(c, dict) or c.get("action") != "CANCEL":
            raise ValueError(f"{where}.action: must be CANCEL, got {c!r}")
        if c.get("failureType") not in FAILURE_TYPES:
            raise ValueError(f"{where}.failureType: must be one of {sorted(FAILURE_TYPES)}, "
                             f"got {c.get('failureType')!r}")
        if not isinstance(c.get("minNumberOfExecutedThings"), int) \
                or c["minNumberOfExecutedThings"] < 1:
            raise ValueError(f"{where}.minNumberOfExecutedThings: must be an integer >= 1, "
                             f"got {c.get('minNumberOfExecutedThings')!r}")
        pct = c.get("thresholdPercentage")
        if not isinstance(pct, int | float) or not 0 <= pct <= 100:
            raise ValueError(f"{where}.thresholdPercentage: must be 0-100, got {pct!r}")
    return list(criteria)


class JobStore:
    def __init__(self) -> None:
        self.executions: dict[tuple[str, str], Execution] = {}
        self.jobs: dict[str, Job] = {}
        self._order = 0

    # --- the operator's side -------------------------------------------------------

    def add_job(self, job_id: str, document: dict[str, Any], things: list[str],
                now: int, rollout: dict[str, Any] | None = None,
                abort: dict[str, Any] | None = None) -> list[Message]:
        """rollout: jobExecutionsRolloutConfig ({"maximumPerMinute": N}); abort: abortConfig
        ({"criteriaList": [...]}), as CreateJob takes them."""
        if job_id in self.jobs:
            raise ValueError(f"jobId: {job_id!r} exists already")
        if len(set(things)) != len(things):
            raise ValueError(f"things: {things!r} names a thing twice")
        per_minute = (rollout or {}).get("maximumPerMinute")
        if per_minute is not None and (not isinstance(per_minute, int) or per_minute < 1):
            raise ValueError(f"jobExecutionsRolloutConfig.maximumPerMinute: must be an "
                             f"integer >= 1, got {per_minute!r}")
        criteria = _check_abort((abort or {}).get("criteriaList", []))
        self.jobs[job_id] = Job(job_id, now, per_minute, criteria)
        before = {t: self._next_id(t) for t in things}
        for thing in things:
            self._order += 1
            self.executions[(job_id, thing)] = Execution(job_id, thing, document, now,
                                                         self._order, last_updated_at=now,
                                                         created=per_minute is None)
        self._roll_out(now)
        return self._notify_changes(before, now)

    def tick(self, now: int) -> list[Message]:
        """Create the executions that jobs' rollout rates allow by now."""
        before = {e.thing: self._next_id(e.thing) for e in self.executions.values()
                  if not e.created}
        self._roll_out(now)
        return self._notify_changes(before, now)

    def _roll_out(self, now: int) -> None:
        for job in self.jobs.values():
            if job.max_per_minute is None or job.status != "IN_PROGRESS":
                continue
            mine = sorted((e for e in self.executions.values() if e.job_id == job.job_id),
                          key=lambda e: e.order)
            allowed = job.max_per_minute * ((now - job.created_at) // 60 + 1)
            for e in mine[:allowed]:
                if not e.created:
                    e.created, e.queued_at, e.last_updated_at = True, now, now

    def cancel_job(self, job_id: str, now: int, reason: str = "canceled") -> list[Message]:
        things = [t for (j, t) in self.executions if j == job_id]
        before = {t: self._next_id(t) for t in things}
        if job_id in self.jobs:
            self.jobs[job_id].status, self.jobs[job_id].reason = "CANCELED", reason
        for thing in things:
            e = self.executions[(job_id, thing)]
            if e.status == "QUEUED":   # created or not; IN_PROGRESS runs on (no force)
                e.status, e.last_updated_at, e.version = "CANCELED", now, e.version + 1
                e.created = True
        return self._notify_changes(before, now)

    def _check_abort(self, job_id: str, now: int) -> list[Message]:
        job = self.jobs.get(job_id)
        if job is None or job.status != "IN_PROGRESS":
            return []
        ended = [e.status for (j, _), e in self.executions.items()
                 if j == job_id and e.status in EXECUTED]
        for c in job.abort:
            failures = sum(s in FAILURE_TYPES[c["failureType"]] for s in ended)
            if len(ended) >= c["minNumberOfExecutedThings"] \
                    and failures * 100 >= c["thresholdPercentage"] * len(ended):
                return self.cancel_job(job_id, now, f"aborted: {failures} of {len(ended)} "
                                       f"executions {c['failureType']}")
        if all(e.status in TERMINAL for (j, _), e in self.executions.items() if j == job_id):
            job.status = "COMPLETED"
        return []

    def status(self, job_id: str) -> dict[str, str]:
        return {t: e.status for (j, t), e in sorted(self.executions.items()) if j == job_id}

    # --- the device's side ---------------------------------------------------------

    def handle(self, topic: str, payload: bytes, now: int) -> list[Message]:
        parts = topic.split("/")
        if len(parts) not in (5, 6) or parts[:2] != ["$aws", "things"] or parts[3] != "jobs":
            return []
        thing, base = parts[2], "/".join(parts)
        try:
            request = json.loads(payload or b"{}")
            if not isinstance(request, dict):
                raise ValueError("not an object")
        except ValueError as exc:
            return [_rejected(base, {}, "InvalidRequest", f"payload is not a JSON object: "
                              f"{exc}", now)]
        before = {thing: self._next_id(thing)}
        if len(parts) == 5 and parts[4] == "get":
            out = [self._get_pending(base, thing, request, now)]
        elif len(parts) == 5 and parts[4] == "start-next":
            out = [self._start_next(base, thing, request, now)]
        elif len(parts) == 6 and parts[5] == "get":
            out = [self._describe(base, thing, parts[4], request, now)]
        elif len(parts) == 6 and parts[5] == "update":
            out = self._update(base, thing, parts[4], request, now)
        else:
            return []
        return out + self._notify_changes(before, now)

    def _pending(self, thing: str) -> list[Execution]:
        found = [e for e in self.executions.values()
                 if e.thing == thing and e.created and e.status in PENDING]
        return sorted(found, key=lambda e: (PENDING.index(e.status), e.order))

    def _next_id(self, thing: str) -> str | None:
        pending = self._pending(thing)
        return pending[0].job_id if pending else None

    def _get_pending(self, base: str, thing: str, request: dict, now: int) -> Message:
        pending = self._pending(thing)
        return _accepted(base, request, now, {
            "inProgressJobs": [e.summary() for e in pending if e.status == "IN_PROGRESS"],
            "queuedJobs": [e.summary() for e in pending if e.status == "QUEUED"]})

    def _start_next(self, base: str, thing: str, request: dict, now: int) -> Message:
        pending = self._pending(thing)
        if not pending:
            return _accepted(base, request, now, {})
        e = pending[0]
        if e.status == "QUEUED":
            e.status, e.started_at, e.version = "IN_PROGRESS", now, e.version + 1
            e.last_updated_at = now
            if request.get("statusDetails") is not None:
                e.status_details = dict(request["statusDetails"])
        return _accepted(base, request, now, {"execution": e.full()})

    def _describe(self, base: str, thing: str, job_id: str, request: dict,
                  now: int) -> Message:
        if job_id == "$next":
            pending = self._pending(thing)
            e = pending[0] if pending else None
            if e is None:
                return _accepted(base, request, now, {})
        else:
            e = self.executions.get((job_id, thing))
            if e is None or not e.created:
                return _rejected(base, request, "ResourceNotFound",
                                 f"no execution of job {job_id} for thing {thing}", now)
        with_doc = request.get("includeJobDocument", True) is not False
        return _accepted(base, request, now, {"execution": e.full(with_doc)})

    def _update(self, base: str, thing: str, job_id: str, request: dict,
                now: int) -> list[Message]:
        answer = self._apply_update(base, thing, job_id, request, now)
        if answer[0].endswith("/accepted"):
            return [answer, *self._check_abort(job_id, now)]
        return [answer]

    def _apply_update(self, base: str, thing: str, job_id: str, request: dict,
                      now: int) -> Message:
        e = self.executions.get((job_id, thing))
        if e is None or not e.created:
            return _rejected(base, request, "ResourceNotFound",
                             f"no execution of job {job_id} for thing {thing}", now)
        status = request.get("status")
        if status not in DEVICE_STATUSES:
            return _rejected(base, request, "InvalidRequest",
                             f"status must be one of {sorted(DEVICE_STATUSES)}, got {status!r}",
                             now)
        expected = request.get("expectedVersion")
        if expected is not None and str(expected) != str(e.version):
            return _rejected(base, request, "VersionMismatch",
                             f"expected version {expected}, the execution is at {e.version}",
                             now, {"executionState": e.state()})
        if e.status in TERMINAL:
            return _rejected(base, request, "InvalidStateTransition",
                             f"job {job_id} is {e.status} for {thing}; it cannot become "
                             f"{status}", now, {"executionState": e.state()})
        if e.started_at is None:
            e.started_at = now
        e.status, e.version, e.last_updated_at = status, e.version + 1, now
        if request.get("statusDetails") is not None:  # given: replaced; else unchanged
            e.status_details = dict(request["statusDetails"])
        extra: dict[str, Any] = {}
        if request.get("includeJobExecutionState"):
            extra["executionState"] = e.state()
        if request.get("includeJobDocument"):
            extra["jobDocument"] = e.document
        return _accepted(base, request, now, extra)

    def _notify_changes(self, before: dict[str, str | None], now: int) -> list[Message]:
        """notify-next for each thing whose next pending execution is now another one."""
        out: list[Message] = []
        for thing, old in before.items():
            pending = self._pending(thing)
            new = pending[0].job_id if pending else None
            if new != old:
                body: dict[str, Any] = {"timestamp": now}
                if pending:
                    body["execution"] = pending[0].full()
                out.append((f"$aws/things/{thing}/jobs/notify-next", body))
        return out


def _with_token(request: dict, body: dict[str, Any]) -> dict[str, Any]:
    if "clientToken" in request:
        body["clientToken"] = request["clientToken"]
    return body


def _accepted(base: str, request: dict, now: int, body: dict[str, Any]) -> Message:
    return f"{base}/accepted", _with_token(request, {"timestamp": now} | body)


def _rejected(base: str, request: dict, code: str, message: str, now: int,
              extra: dict[str, Any] | None = None) -> Message:
    body = {"code": code, "message": message, "timestamp": now} | (extra or {})
    return f"{base}/rejected", _with_token(request, body)
