"""The IoT Jobs device API (MQTT) as a pure state machine, for the Jobs stand-in.

`JobStore.handle(topic, payload, now)` takes one request on a `$aws/things/T/jobs/...` topic
and returns the messages IoT Core would publish in answer: `/accepted` or `/rejected`, and
`notify-next` when the thing's next pending execution changed. Request topics:

    $aws/things/T/jobs/get                  pending executions (in progress, queued)
    $aws/things/T/jobs/start-next           start the next pending execution
    $aws/things/T/jobs/JOB/get              one execution; JOB may be $next
    $aws/things/T/jobs/JOB/update           status IN_PROGRESS, SUCCEEDED, FAILED, REJECTED
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


class JobStore:
    def __init__(self) -> None:
        self.executions: dict[tuple[str, str], Execution] = {}
        self._order = 0

    # --- the operator's side -------------------------------------------------------

    def add_job(self, job_id: str, document: dict[str, Any], things: list[str],
                now: int) -> list[Message]:
        before = {t: self._next_id(t) for t in things}
        for thing in things:
            if (job_id, thing) in self.executions:
                raise ValueError(f"job {job_id!r} already has an execution for {thing!r}")
            self._order += 1
            self.executions[(job_id, thing)] = Execution(job_id, thing, document, now,
                                                         self._order, last_updated_at=now)
        return self._notify_changes(before, now)

    def cancel_job(self, job_id: str, now: int) -> list[Message]:
        things = [t for (j, t) in self.executions if j == job_id]
        before = {t: self._next_id(t) for t in things}
        for thing in things:
            e = self.executions[(job_id, thing)]
            if e.status in PENDING:
                e.status, e.last_updated_at, e.version = "CANCELED", now, e.version + 1
        return self._notify_changes(before, now)

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
            out = [self._update(base, thing, parts[4], request, now)]
        else:
            return []
        return out + self._notify_changes(before, now)

    def _pending(self, thing: str) -> list[Execution]:
        found = [e for e in self.executions.values() if e.thing == thing and e.status in PENDING]
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
            e.status_details.update(request.get("statusDetails") or {})
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
            if e is None:
                return _rejected(base, request, "ResourceNotFound",
                                 f"no execution of job {job_id} for thing {thing}", now)
        with_doc = request.get("includeJobDocument", True) is not False
        return _accepted(base, request, now, {"execution": e.full(with_doc)})

    def _update(self, base: str, thing: str, job_id: str, request: dict, now: int) -> Message:
        e = self.executions.get((job_id, thing))
        if e is None:
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
        e.status_details.update(request.get("statusDetails") or {})
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
