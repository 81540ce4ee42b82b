"""The fleet tool's pure part: deployment documents with presigned-URL placeholders, the
`iot.create_job` request, and the summary of a job's executions. No AWS calls here."""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

DOCUMENT_LIMIT = 32 * 1024  # IoT Jobs refuses a job document larger than 32 KB
SCHEMA_VERSION = 1          # gateway/deployment/deployment.schema.json
JOB_ID = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")
ARTIFACT_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
PLACEHOLDER = re.compile(
    r"\$\{aws:iot:s3-presigned-url(?:-v2)?:https://s3(?:\.[a-z0-9-]+)?\.amazonaws\.com/"
    r"([^/}]+)/([^}]+)\}")
# A job is over when it is one of these; a CONTINUOUS job never completes by itself.
TERMINAL_JOB = {"COMPLETED", "CANCELED", "DELETION_IN_PROGRESS"}
TERMINAL_EXECUTION = {"SUCCEEDED", "FAILED", "REJECTED", "REMOVED", "CANCELED", "TIMED_OUT"}
UNSUCCESSFUL = {"FAILED", "REJECTED", "CANCELED", "TIMED_OUT", "REMOVED"}


class FleetError(Exception):
    """One line for the operator; the command exits 1 with it."""


def placeholder(bucket: str, key: str, region: str | None = None, v2: bool = False) -> str:
    """The URL placeholder IoT Jobs replaces with a presigned S3 URL when a device fetches
    the job document (`presignedUrlConfig` says which role signs it and for how long)."""
    host = f"s3.{region}.amazonaws.com" if region else "s3.amazonaws.com"
    kind = "s3-presigned-url-v2" if v2 else "s3-presigned-url"
    return f"${{aws:iot:{kind}:https://{host}/{bucket}/{key}}}"


def resolve_placeholders(text: str, presign: Callable[[str, str], str]) -> str:
    """What IoT Jobs does to a document on its way to a device: every placeholder becomes
    `presign(bucket, key)`. For stand-ins and tests."""
    return PLACEHOLDER.sub(lambda m: presign(m.group(1), m.group(2)), text)


def artifact_format(path: Path) -> str:
    """zip and tar.gz bundles are unpacked by the gateway (function code); anything else is
    a plain file (a model)."""
    name = path.name.lower()
    if name.endswith(".zip"):
        return "zip"
    if name.endswith((".tar.gz", ".tgz")):
        return "tar.gz"
    return "file"


def object_key(prefix: str, sha256: str, path: Path) -> str:
    """Content-addressed, so re-uploading the same bytes is a no-op and two versions of a
    file never overwrite each other while a job still points at the older one."""
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", path.name) or "artifact"
    prefix = prefix.strip("/")
    return f"{prefix}/{sha256}/{safe}" if prefix else f"{sha256}/{safe}"


def artifact_name(path: Path) -> str:
    """A document name for a file uploaded without one: its name up to the first dot."""
    return re.sub(r"[^A-Za-z0-9_-]", "_", path.name.split(".")[0])[:64] or "artifact"


def parse_artifact_arg(arg: str) -> tuple[str, Path]:
    """`NAME=PATH` from the command line."""
    name, sep, path = arg.partition("=")
    if not sep or not path:
        raise FleetError(f"--artifact {arg!r}: expected NAME=PATH")
    if not ARTIFACT_NAME.match(name):
        raise FleetError(f"--artifact {arg!r}: the name must be 1-64 of A-Z a-z 0-9 _ -, "
                         f"got {name!r}")
    return name, Path(path)


def _artifact_refs(node: Any) -> Iterable[str]:
    if isinstance(node, Mapping):
        ref = node.get("artifact")
        if isinstance(ref, str) and len(node) == 1:
            yield ref
        for value in node.values():
            yield from _artifact_refs(value)
    elif isinstance(node, list):
        for value in node:
            yield from _artifact_refs(value)


def build_document(base: Mapping[str, Any] | None, artifacts: Mapping[str, Mapping[str, Any]],
                   name: str | None = None) -> dict[str, Any]:
    """The deployment document: `base` (its config, registry, health check) with
    `artifacts` added by name. Every `{"artifact": NAME}` in the config must be provided."""
    doc: dict[str, Any] = dict(base or {})
    doc.setdefault("schemaVersion", SCHEMA_VERSION)
    doc.setdefault("config", {})
    if name is not None:
        doc["name"] = name
    merged = dict(doc.get("artifacts") or {})
    merged.update(artifacts)
    if merged:
        doc["artifacts"] = merged
    missing = sorted(set(_artifact_refs(doc["config"])) - set(merged))
    if missing:
        raise FleetError(f"the document's config uses artifact {missing[0]!r}, which is "
                         f"neither in its artifacts nor given with --artifact "
                         f"{missing[0]}=PATH")
    return doc


def document_text(doc: Mapping[str, Any]) -> str:
    text = json.dumps(doc, indent=1, sort_keys=True)
    size = len(text.encode())
    if size > DOCUMENT_LIMIT:
        raise FleetError(f"the job document is {size} bytes; IoT Jobs takes at most "
                         f"{DOCUMENT_LIMIT}")
    return text


@dataclass(frozen=True)
class JobOptions:
    job_id: str
    targets: list[str]
    role_arn: str | None = None          # presignedUrlConfig: who signs the artifact URLs
    expires_in_s: int = 3600             # how long a presigned URL stays valid (60..3600)
    max_per_minute: int | None = None    # jobExecutionsRolloutConfig
    abort_failed_percent: float | None = None
    abort_min_executed: int = 1
    in_progress_timeout_min: int | None = None
    continuous: bool = False             # things added to a group later get the job too
    description: str | None = None


def _check_range(flag: str, value: float, low: float, high: float) -> None:
    if not low <= value <= high:
        raise FleetError(f"{flag} must be between {low:g} and {high:g}, got {value:g}")


def job_request(options: JobOptions, document: str) -> dict[str, Any]:
    """The keyword arguments of `iot.create_job`, checked against the API's ranges first so
    a mistake is one line here rather than a ValidationException later."""
    o = options
    if not JOB_ID.match(o.job_id):
        raise FleetError(f"job id {o.job_id!r} must be 1-64 of A-Z a-z 0-9 _ -")
    if not o.targets:
        raise FleetError("no target: give --thing, --thing-group or --target")
    request: dict[str, Any] = {
        "jobId": o.job_id, "targets": list(o.targets), "document": document,
        "targetSelection": "CONTINUOUS" if o.continuous else "SNAPSHOT",
    }
    if o.description:
        request["description"] = o.description[:2028]
    if PLACEHOLDER.search(document):
        if not o.role_arn:
            raise FleetError("the document has presigned-URL placeholders: give --role-arn, "
                             "a role IoT can assume to read the artifacts' bucket")
        _check_range("--expires-in", o.expires_in_s, 60, 3600)
        request["presignedUrlConfig"] = {"roleArn": o.role_arn,
                                         "expiresInSec": int(o.expires_in_s)}
    if o.max_per_minute is not None:
        _check_range("--max-per-minute", o.max_per_minute, 1, 1000)
        request["jobExecutionsRolloutConfig"] = {"maximumPerMinute": int(o.max_per_minute)}
    if o.abort_failed_percent is not None:
        _check_range("--abort-failed-percent", o.abort_failed_percent, 0, 100)
        _check_range("--abort-min-executed", o.abort_min_executed, 1, 2**31 - 1)
        request["abortConfig"] = {"criteriaList": [{
            "failureType": "FAILED", "action": "CANCEL",
            "thresholdPercentage": float(o.abort_failed_percent),
            "minNumberOfExecutedThings": int(o.abort_min_executed)}]}
    if o.in_progress_timeout_min is not None:
        _check_range("--in-progress-timeout", o.in_progress_timeout_min, 1, 10080)
        request["timeoutConfig"] = {"inProgressTimeoutInMinutes": int(o.in_progress_timeout_min)}
    return request


@dataclass(frozen=True)
class Summary:
    job_id: str
    status: str
    counts: dict[str, int] = field(default_factory=dict)
    unsuccessful: list[str] = field(default_factory=list)   # "thing: STATUS"
    reason: str | None = None

    @property
    def done(self) -> bool:
        return self.status in TERMINAL_JOB

    @property
    def succeeded(self) -> bool:
        return self.status == "COMPLETED" and not self.unsuccessful

    def line(self) -> str:
        total = sum(self.counts.values())
        parts = ", ".join(f"{n} {s}" for s, n in sorted(self.counts.items()))
        text = f"job {self.job_id}: {self.status}; {total} execution(s)"
        if parts:
            text += f": {parts}"
        if self.reason:
            text += f" ({self.reason})"
        return text


def _thing_name(arn: str) -> str:
    return arn.rsplit("/", 1)[-1] if "/" in arn else arn.rsplit(":", 1)[-1]


def summarize(job: Mapping[str, Any], executions: Iterable[Mapping[str, Any]]) -> Summary:
    """`job` as `describe_job` returns it, `executions` as `list_job_executions_for_job`
    does: counted from the executions themselves, not from jobProcessDetails."""
    counts: Counter[str] = Counter()
    unsuccessful: list[str] = []
    for e in executions:
        status = e.get("jobExecutionSummary", {}).get("status", "UNKNOWN")
        counts[status] += 1
        if status in UNSUCCESSFUL:
            unsuccessful.append(f"{_thing_name(e.get('thingArn', '?'))}: {status}")
    reason = " ".join(str(x) for x in (job.get("reasonCode"), job.get("comment")) if x) or None
    return Summary(job_id=job["jobId"], status=job.get("status", "UNKNOWN"),
                   counts=dict(counts), unsuccessful=sorted(unsuccessful), reason=reason)
