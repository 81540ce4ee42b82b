"""The fleet tool's AWS calls (boto3): S3 uploads, IoT targets, jobs and their executions.
Each botocore error becomes a FleetError naming the call and what AWS said."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import boto3
from botocore.exceptions import BotoCoreError, ClientError

from deploy.fleet_plan import (
    FleetError,
    Summary,
    artifact_format,
    object_key,
    placeholder,
    summarize,
)


@contextmanager
def aws_call(what: str) -> Iterator[None]:
    try:
        yield
    except ClientError as exc:
        err = exc.response.get("Error", {})
        raise FleetError(f"{what}: {err.get('Code', 'error')}: "
                         f"{err.get('Message') or exc}") from exc
    except BotoCoreError as exc:  # no credentials, no region, endpoint unreachable
        raise FleetError(f"{what}: {exc}") from exc


class Fleet:
    """The S3 and IoT clients of one account and region."""

    def __init__(self, region: str | None = None, endpoint_url: str | None = None) -> None:
        with aws_call("AWS session"):
            session = boto3.session.Session(region_name=region)
            self.region = session.region_name
            if not self.region:
                raise FleetError("no AWS region: give --region or set AWS_DEFAULT_REGION")
            self.s3 = session.client("s3", endpoint_url=endpoint_url)
            self.iot = session.client("iot", endpoint_url=endpoint_url)

    # --- artifacts -------------------------------------------------------------------

    def upload(self, path: Path, bucket: str, prefix: str = "",
               v2_placeholder: bool = False) -> tuple[dict[str, Any], bool]:
        """Uploads `path` (unless the same bytes are there) and returns its document entry
        and whether it was uploaded now."""
        try:
            size = path.stat().st_size
            digest = _file_sha256(path)
        except OSError as exc:
            raise FleetError(f"artifact {path}: {exc.strerror or exc}") from exc
        key = object_key(prefix, digest, path)
        uploaded = False
        if not self._has(bucket, key, size, digest):
            with aws_call(f"uploading {path} to s3://{bucket}/{key}"):
                self.s3.upload_file(str(path), bucket, key,
                                    ExtraArgs={"Metadata": {"sha256": digest}})
            uploaded = True
        entry = {"url": placeholder(bucket, key, self.region, v2_placeholder),
                 "sha256": digest, "size": size, "format": artifact_format(path)}
        return entry, uploaded

    def _has(self, bucket: str, key: str, size: int, digest: str) -> bool:
        try:
            head = self.s3.head_object(Bucket=bucket, Key=key)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                return False
            raise FleetError(f"s3://{bucket}/{key}: {exc}") from exc
        return (head.get("ContentLength") == size
                and head.get("Metadata", {}).get("sha256") == digest)

    # --- jobs ------------------------------------------------------------------------

    def target_arn(self, thing: str | None = None, group: str | None = None) -> str:
        if thing is not None:
            with aws_call(f"thing {thing!r}"):
                return self.iot.describe_thing(thingName=thing)["thingArn"]
        if group is not None:
            with aws_call(f"thing group {group!r}"):
                return self.iot.describe_thing_group(thingGroupName=group)["thingGroupArn"]
        raise FleetError("no target: give --thing, --thing-group or --target")

    def create_job(self, request: dict[str, Any]) -> str:
        with aws_call(f"creating job {request['jobId']}"):
            return self.iot.create_job(**request)["jobArn"]

    def executions(self, job_id: str) -> list[dict[str, Any]]:
        found: list[dict[str, Any]] = []
        token: str | None = None
        with aws_call(f"executions of job {job_id}"):
            while True:
                kwargs: dict[str, Any] = {"jobId": job_id, "maxResults": 100}
                if token:
                    kwargs["nextToken"] = token
                page = self.iot.list_job_executions_for_job(**kwargs)
                found += page.get("executionSummaries", [])
                token = page.get("nextToken")
                if not token:
                    return found

    def summary(self, job_id: str) -> Summary:
        with aws_call(f"job {job_id}"):
            job = self.iot.describe_job(jobId=job_id)["job"]
        return summarize(job, self.executions(job_id))

    def follow(self, job_id: str, timeout_s: float, interval_s: float,
               report: Callable[[Summary], None],
               sleep: Callable[[float], None] = time.sleep) -> Summary | None:
        """Reports the job's summary each time it changes, until the job is over (returns
        its last summary) or `timeout_s` passes (returns None)."""
        deadline = time.monotonic() + timeout_s
        last: Summary | None = None
        while True:
            current = self.summary(job_id)
            if current != last:
                report(current)
                last = current
            if current.done:
                return current
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            sleep(min(interval_s, remaining))

    def cancel(self, job_id: str, force: bool = False, comment: str | None = None,
               reason_code: str | None = None) -> None:
        kwargs: dict[str, Any] = {"jobId": job_id, "force": force}
        if comment:
            kwargs["comment"] = comment
        if reason_code:
            kwargs["reasonCode"] = reason_code
        with aws_call(f"cancelling job {job_id}"):
            self.iot.cancel_job(**kwargs)


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1024 * 1024):
            digest.update(chunk)
    return digest.hexdigest()
