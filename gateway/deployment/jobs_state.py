"""What the IoT Jobs agent reports, and what it does with an answer: pure (no I/O, the caller
passes `now`), so each rule is tested on its own.

    outcome(deployment)            the job execution's final status and statusDetails
    progress_details(...)          statusDetails of an IN_PROGRESS report (step, bytes)
    ProgressPacer                  at most one IN_PROGRESS report per interval, but every
                                   change of step at once
    after_rejection(...)           what an update's /rejected answer means for us
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from .store import FAILED, REJECTED, ROLLED_BACK, SUCCEEDED, Deployment

# Job execution statuses (AWS IoT Jobs)
IN_PROGRESS = "IN_PROGRESS"
JOB_TERMINAL = frozenset({"SUCCEEDED", "FAILED", "REJECTED", "CANCELED", "TIMED_OUT",
                          "REMOVED"})

MAX_DETAIL = 1024           # IoT Jobs: a statusDetails value is at most 1024 characters
_CONTROL = re.compile(r"[\x00-\x1f\x7f]+")
_FETCHING = re.compile(r"^(?P<name>.+) (?P<done>\d+)/(?P<total>\d+)$")


def detail_value(text: object) -> str:
    """A statusDetails value IoT accepts: one line, no control characters, bounded."""
    value = _CONTROL.sub(" ", str(text)).strip() or "-"
    return value if len(value) <= MAX_DETAIL else value[:MAX_DETAIL - 3] + "..."


def outcome(dep: Deployment) -> tuple[str, dict[str, str]]:
    """The definite status of the job a final deployment ran, with its statusDetails. A
    version later left by `lichen deploy rollback` was still a success for its job."""
    details = {"deployment": str(dep.id), "step": dep.state}
    if dep.state in (SUCCEEDED, ROLLED_BACK):
        details["version"] = str(dep.version)
        return SUCCEEDED, details
    if dep.state in (FAILED, REJECTED):
        details["reason"] = detail_value(dep.reason or "no reason recorded")
        return dep.state, details
    raise ValueError(f"deployment {dep.id}: state {dep.state!r} is not final")


def progress_details(dep_id: int, state: str, detail: str | None) -> dict[str, str]:
    """statusDetails of an IN_PROGRESS report. FETCHING's detail is "NAME DONE/TOTAL"."""
    details = {"deployment": str(dep_id), "step": state}
    if state == "FETCHING" and detail:
        m = _FETCHING.match(detail)
        if m:
            details["artifact"] = detail_value(m["name"])
            details["bytesDownloaded"] = m["done"]
            details["bytesTotal"] = m["total"]
            return details
    if detail:
        details["detail"] = detail_value(detail)
    return details


class ProgressPacer:
    """IN_PROGRESS reports are a courtesy, each one an update IoT counts against its limits:
    the latest progress is kept, and sent when its step differs from the last one sent or
    `interval_s` has passed since."""

    def __init__(self, interval_s: float = 2.0) -> None:
        self.interval_s = interval_s
        self.pending: dict[str, str] | None = None
        self.sent_step: str | None = None
        self.sent_at: float | None = None

    def offer(self, details: dict[str, str]) -> None:
        self.pending = details

    def due(self, now: float) -> float | None:
        """0 if the pending report should go now, seconds to wait, or None (nothing)."""
        if self.pending is None:
            return None
        if self.sent_at is None or self.pending.get("step") != self.sent_step:
            return 0.0
        return max(0.0, self.sent_at + self.interval_s - now)

    def take(self, now: float) -> dict[str, str] | None:
        if self.due(now) != 0.0:
            return None
        details, self.pending = self.pending, None
        self.sent_step, self.sent_at = details.get("step"), now
        return details

    def reset(self) -> None:
        self.pending = self.sent_step = self.sent_at = None


@dataclass(frozen=True, slots=True)
class Decision:
    action: str     # "retry" (with version), "describe", "later", "settled", "give-up"
    version: int | None = None
    cloud_status: str | None = None
    note: str = ""


def after_rejection(ours: str, code: str | None, cloud_status: str | None,
                    cloud_version: int | None) -> Decision:
    """An update to `ours` came back /rejected with `code` (and, for VersionMismatch and
    InvalidStateTransition, the execution's state in the cloud)."""
    if cloud_status in JOB_TERMINAL:
        if cloud_status == ours:   # an earlier report got there; its answer did not
            return Decision("settled", cloud_status=ours, note="already reported")
        return Decision("settled", cloud_status=cloud_status,
                        note=f"the execution is {cloud_status} in the cloud; "
                             f"{ours} not reported")
    if code == "VersionMismatch":
        if cloud_version is None:
            return Decision("describe", note="version mismatch without the execution state")
        return Decision("retry", version=cloud_version, note="version mismatch")
    if code in ("RequestThrottled", "InternalError"):
        return Decision("later", note=f"the cloud said {code}")
    if code == "ResourceNotFound":
        return Decision("settled", cloud_status="REMOVED",
                        note="the job execution no longer exists in the cloud")
    if code in ("InvalidStateTransition", "TerminalStateReached") and cloud_status is None:
        return Decision("describe", note="invalid state transition without the state")
    return Decision("give-up", note=f"refused by the cloud: {code}")
