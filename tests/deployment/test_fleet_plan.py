"""deploy/fleet_plan.py: the fleet tool's pure part (documents, job requests, summaries)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from deploy.fleet_plan import (
    DOCUMENT_LIMIT,
    FleetError,
    JobOptions,
    artifact_format,
    build_document,
    document_text,
    job_request,
    object_key,
    parse_artifact_arg,
    placeholder,
    resolve_placeholders,
    summarize,
)

GROUP = "arn:aws:iot:us-east-1:123456789012:thinggroup/floor-1"
ROLE = "arn:aws:iam::123456789012:role/lichen-artifacts"


def test_placeholders_follow_the_documented_syntax():
    assert placeholder("bkt", "a/b.onnx", "eu-west-1") == \
        "${aws:iot:s3-presigned-url:https://s3.eu-west-1.amazonaws.com/bkt/a/b.onnx}"
    assert placeholder("bkt", "k", None, v2=True) == \
        "${aws:iot:s3-presigned-url-v2:https://s3.amazonaws.com/bkt/k}"


def test_resolving_placeholders_replaces_each_with_its_presigned_url():
    doc = json.dumps({"a": placeholder("bkt", "x/1", "us-east-1"),
                      "b": placeholder("other", "y/2", None, v2=True), "c": "plain"})
    out = json.loads(resolve_placeholders(doc, lambda b, k: f"https://signed/{b}/{k}?sig=1"))
    assert out == {"a": "https://signed/bkt/x/1?sig=1", "b": "https://signed/other/y/2?sig=1",
                   "c": "plain"}


def test_keys_are_content_addressed_and_safe():
    digest = "ab" * 32
    assert object_key("lichen/artifacts/", digest, Path("/x/my model.onnx")) == \
        f"lichen/artifacts/{digest}/my_model.onnx"
    assert object_key("", digest, Path("fn.zip")) == f"{digest}/fn.zip"
    assert artifact_format(Path("fn.zip")) == "zip"
    assert artifact_format(Path("fn.TAR.GZ")) == "tar.gz"
    assert artifact_format(Path("model.onnx")) == "file"


def test_artifact_arguments_are_checked():
    assert parse_artifact_arg("model=/tmp/m.onnx") == ("model", Path("/tmp/m.onnx"))
    with pytest.raises(FleetError, match="expected NAME=PATH"):
        parse_artifact_arg("/tmp/m.onnx")
    with pytest.raises(FleetError, match="got 'my model'"):
        parse_artifact_arg("my model=/tmp/m.onnx")


def test_the_document_keeps_the_base_and_adds_the_artifacts():
    base = {"schemaVersion": 1, "config": {"models": [{"name": "m", "path": {"artifact": "m"}}]},
            "artifacts": {"old": {"url": "https://h/o", "sha256": "0" * 64, "size": 1}}}
    entry = {"url": placeholder("b", "k"), "sha256": "1" * 64, "size": 2, "format": "file"}
    doc = build_document(base, {"m": entry}, name="v2")
    assert doc["artifacts"] == {"old": base["artifacts"]["old"], "m": entry}
    assert doc["name"] == "v2" and doc["config"] == base["config"]
    assert build_document(None, {})["schemaVersion"] == 1


def test_a_config_artifact_nobody_provides_is_refused():
    base = {"config": {"models": [{"name": "m", "path": {"artifact": "weights"}}]}}
    with pytest.raises(FleetError, match="uses artifact 'weights'.*--artifact weights=PATH"):
        build_document(base, {})


def test_a_document_over_the_jobs_limit_is_refused():
    with pytest.raises(FleetError, match=f"at most {DOCUMENT_LIMIT}"):
        document_text({"config": {"log_level": "x" * DOCUMENT_LIMIT}})


def test_the_job_request_carries_every_config():
    doc = document_text(build_document(None, {"m": {"url": placeholder("b", "k"),
                                                    "sha256": "1" * 64, "size": 2}}))
    request = job_request(JobOptions(
        job_id="lichen-v2", targets=[GROUP], role_arn=ROLE, expires_in_s=600,
        max_per_minute=20, abort_failed_percent=10, abort_min_executed=5,
        in_progress_timeout_min=30, description="v2"), doc)
    assert request == {
        "jobId": "lichen-v2", "targets": [GROUP], "document": doc,
        "targetSelection": "SNAPSHOT", "description": "v2",
        "presignedUrlConfig": {"roleArn": ROLE, "expiresInSec": 600},
        "jobExecutionsRolloutConfig": {"maximumPerMinute": 20},
        "abortConfig": {"criteriaList": [{"failureType": "FAILED", "action": "CANCEL",
                                          "thresholdPercentage": 10.0,
                                          "minNumberOfExecutedThings": 5}]},
        "timeoutConfig": {"inProgressTimeoutInMinutes": 30},
    }


@pytest.mark.parametrize(("options", "message"), [
    ({"job_id": "bad id"}, "job id 'bad id' must be"),
    ({"targets": []}, "no target"),
    ({"role_arn": None}, "give --role-arn"),
    ({"expires_in_s": 30}, "--expires-in must be between 60 and 3600, got 30"),
    ({"max_per_minute": 0}, "--max-per-minute must be between 1 and 1000, got 0"),
    ({"abort_failed_percent": 101}, "--abort-failed-percent must be between 0 and 100"),
    ({"in_progress_timeout_min": 0}, "--in-progress-timeout must be between 1 and 10080"),
])
def test_bad_job_options_are_refused_with_the_flag_and_value(options, message):
    doc = document_text(build_document(None, {"m": {"url": placeholder("b", "k"),
                                                    "sha256": "1" * 64, "size": 2}}))
    fields = {"job_id": "j", "targets": [GROUP], "role_arn": ROLE} | options
    with pytest.raises(FleetError, match=message):
        job_request(JobOptions(**fields), doc)


def test_summaries_count_the_executions_and_name_the_unsuccessful():
    def execution(thing: str, status: str) -> dict:
        return {"thingArn": f"arn:aws:iot:us-east-1:1:thing/{thing}",
                "jobExecutionSummary": {"status": status}}

    job = {"jobId": "j", "status": "IN_PROGRESS"}
    s = summarize(job, [execution("gw1", "SUCCEEDED"), execution("gw2", "FAILED"),
                        execution("gw3", "QUEUED")])
    assert s.counts == {"SUCCEEDED": 1, "FAILED": 1, "QUEUED": 1}
    assert s.unsuccessful == ["gw2: FAILED"]
    assert not s.done and not s.succeeded
    assert s.line() == "job j: IN_PROGRESS; 3 execution(s): 1 FAILED, 1 QUEUED, 1 SUCCEEDED"

    done = summarize({"jobId": "j", "status": "COMPLETED"}, [execution("gw1", "SUCCEEDED")])
    assert done.done and done.succeeded
    aborted = summarize({"jobId": "j", "status": "CANCELED", "comment": "aborted"}, [])
    assert aborted.done and not aborted.succeeded and aborted.line().endswith("(aborted)")
