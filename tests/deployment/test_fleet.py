"""deploy/fleet.py against moto's S3 and IoT, served on 127.0.0.1 by ThreadedMotoServer in
this process (so a test can play the devices: moto has no Jobs data plane, see below).

What moto (5.x) does not do, and these tests therefore do not show:
- a job for a thing group gets ONE execution whose thingArn is the group's ARN; the group
  is not expanded into its member things (IoT Core makes one execution per thing);
- nothing moves by itself: jobs stay QUEUED, executions stay QUEUED, jobProcessDetails is
  fixed; rollout rates, abort criteria and timeouts are stored, never enforced;
- cancel_job marks the job CANCELED but leaves its executions as they were;
- there is no iot-jobs-data API (nor the MQTT `$aws/things/T/jobs/...` topics), so the tests
  set execution and job states in moto's backend, as devices and IoT Core would;
- placeholders are never replaced; the tests resolve them with moto's own presigned URLs.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

boto3 = pytest.importorskip("boto3")
moto_server = pytest.importorskip("moto.server")

from deploy import fleet  # noqa: E402
from deploy.fleet_aws import Fleet  # noqa: E402
from deploy.fleet_plan import PLACEHOLDER, resolve_placeholders  # noqa: E402
from gateway.deployment.artifacts import fetch  # noqa: E402
from tests.conftest import ROOT  # noqa: E402

REGION = "us-east-1"
ACCOUNT = "123456789012"  # moto's default account
ROLE = f"arn:aws:iam::{ACCOUNT}:role/lichen-artifacts"
AWS_ENV = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
           "AWS_SESSION_TOKEN": "testing", "AWS_DEFAULT_REGION": REGION,
           "AWS_EC2_METADATA_DISABLED": "true"}


@pytest.fixture(scope="module")
def endpoint() -> Iterator[str]:
    saved = {k: os.environ.get(k) for k in [*AWS_ENV, "AWS_PROFILE", "AWS_ENDPOINT_URL"]}
    os.environ.update(AWS_ENV)
    os.environ.pop("AWS_PROFILE", None)
    os.environ.pop("AWS_ENDPOINT_URL", None)
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.fixture
def aws(endpoint, request) -> dict:
    """A fresh bucket, a thing group of two things, and names unique to this test."""
    tag = request.node.name.replace("_", "-")[-40:].strip("-")
    s3 = boto3.client("s3", endpoint_url=endpoint, region_name=REGION)
    iot = boto3.client("iot", endpoint_url=endpoint, region_name=REGION)
    bucket = f"art-{tag}".lower()[:63]
    s3.create_bucket(Bucket=bucket)
    group = f"floor-{tag}"[:128]
    iot.create_thing_group(thingGroupName=group)
    things = []
    for i in (1, 2):
        name = f"gw{i}-{tag}"
        iot.create_thing(thingName=name)
        iot.add_thing_to_thing_group(thingGroupName=group, thingName=name)
        things.append(name)
    return {"endpoint": endpoint, "s3": s3, "iot": iot, "bucket": bucket, "group": group,
            "things": things, "job": f"job-{tag}"[:64]}


def backend():
    from moto.iot.models import iot_backends
    return iot_backends[ACCOUNT][REGION]


def artifacts_on_disk(tmp_path: Path) -> dict[str, Path]:
    model = tmp_path / "digits.onnx"
    model.write_bytes(os.urandom(300_000))
    bundle = tmp_path / "classify.zip"
    with zipfile.ZipFile(bundle, "w") as z:
        z.writestr("classify.py", "def handler(event, context):\n    return event\n")
    base = tmp_path / "base.json"
    base.write_text(json.dumps({"schemaVersion": 1, "config": {
        "models": [{"name": "digits", "path": {"artifact": "digits"}}],
        "functions": [{"name": "classify", "code": {"artifact": "classify"},
                       "handler": "classify.handler"}]}}))
    return {"digits": model, "classify": bundle, "base": base}


def deploy_args(aws: dict, files: dict[str, Path], *extra: str) -> list[str]:
    return ["--endpoint-url", aws["endpoint"], "deploy", "--bucket", aws["bucket"],
            "--artifact", f"digits={files['digits']}",
            "--artifact", f"classify={files['classify']}", "--base", str(files["base"]),
            "--name", "digits v2", "--job-id", aws["job"], "--thing-group", aws["group"],
            "--role-arn", ROLE, "--expires-in", "900", "--max-per-minute", "50",
            "--abort-failed-percent", "25", "--abort-min-executed", "4",
            "--in-progress-timeout", "60", *extra]


def test_deploy_to_a_thing_group_uploads_and_creates_the_job(aws, tmp_path, capsys):
    files = artifacts_on_disk(tmp_path)
    assert fleet.main(deploy_args(aws, files)) == 0
    out = capsys.readouterr()
    group_arn = aws["iot"].describe_thing_group(thingGroupName=aws["group"])["thingGroupArn"]
    assert f"created arn:aws:iot:{REGION}:{ACCOUNT}:job/{aws['job']} for {group_arn}" in out.out

    doc = json.loads(aws["iot"].get_job_document(jobId=aws["job"])["document"])
    assert doc["name"] == "digits v2" and doc["schemaVersion"] == 1
    for name in ("digits", "classify"):
        body = files[name].read_bytes()
        entry = doc["artifacts"][name]
        assert entry["sha256"] == hashlib.sha256(body).hexdigest()
        assert entry["size"] == len(body)
        match = PLACEHOLDER.fullmatch(entry["url"])
        assert match, entry["url"]
        assert entry["url"].startswith(
            f"${{aws:iot:s3-presigned-url:https://s3.{REGION}.amazonaws.com/{aws['bucket']}/")
        bucket, key = match.groups()
        stored = aws["s3"].get_object(Bucket=bucket, Key=key)["Body"].read()
        assert stored == body
    assert doc["artifacts"]["classify"]["format"] == "zip"
    assert doc["artifacts"]["digits"]["format"] == "file"

    job = aws["iot"].describe_job(jobId=aws["job"])["job"]
    assert job["targets"] == [group_arn]
    assert job["targetSelection"] == "SNAPSHOT"
    assert job["presignedUrlConfig"] == {"roleArn": ROLE, "expiresInSec": 900}
    stored = backend().jobs[aws["job"]]  # moto's describe_job leaves these two out
    assert stored.job_executions_rollout_config == {"maximumPerMinute": 50}
    assert stored.abort_config == {"criteriaList": [{
        "failureType": "FAILED", "action": "CANCEL", "thresholdPercentage": 25.0,
        "minNumberOfExecutedThings": 4}]}
    assert job["timeoutConfig"] == {"inProgressTimeoutInMinutes": 60}


def test_the_document_is_one_the_gateway_accepts(aws, tmp_path, capsys):
    document = pytest.importorskip("gateway.deployment.document")
    pytest.importorskip("jsonschema")
    files = artifacts_on_disk(tmp_path)
    out = tmp_path / "doc.json"
    args = ["--endpoint-url", aws["endpoint"], "document", "--bucket", aws["bucket"],
            "--artifact", f"digits={files['digits']}",
            "--artifact", f"classify={files['classify']}", "--base", str(files["base"]),
            "--out", str(out)]
    assert fleet.main(args) == 0
    document.validate(json.loads(out.read_text()))


def test_the_document_as_jobs_delivers_it_gives_the_gateway_verified_files(aws, tmp_path):
    """What IoT Jobs does on a device's request (placeholders -> presigned URLs), then what
    the gateway does with the document: fetch each artifact from S3 and verify it."""
    files = artifacts_on_disk(tmp_path)
    assert fleet.main(deploy_args(aws, files)) == 0
    text = aws["iot"].get_job_document(jobId=aws["job"])["document"]

    def presign(bucket: str, key: str) -> str:
        return aws["s3"].generate_presigned_url(
            "get_object", Params={"Bucket": bucket, "Key": key}, ExpiresIn=900)

    doc = json.loads(resolve_placeholders(text, presign))
    for name in ("digits", "classify"):
        entry = doc["artifacts"][name]
        assert entry["url"].startswith(aws["endpoint"])
        path = fetch(dict(entry, name=name), tmp_path / "cache")
        assert path.read_bytes() == files[name].read_bytes()


def test_uploading_the_same_bytes_again_is_skipped(aws, tmp_path, capsys):
    f = tmp_path / "m.onnx"
    f.write_bytes(b"weights")
    args = ["--endpoint-url", aws["endpoint"], "upload", "--bucket", aws["bucket"], str(f)]
    assert fleet.main(args) == 0
    first = capsys.readouterr()
    assert fleet.main(args) == 0
    second = capsys.readouterr()
    assert "uploaded" in first.err and "already in S3" in second.err
    assert json.loads(first.out) == json.loads(second.out)
    entry = json.loads(first.out)["m"]
    assert entry["size"] == 7 and entry["sha256"] == hashlib.sha256(b"weights").hexdigest()


def create_thing_job(aws: dict) -> None:
    """A job for the two things by name: moto then has one execution per thing."""
    doc = Path(aws["tmp"]) / "doc.json"
    doc.write_text(json.dumps({"schemaVersion": 1, "config": {}}))
    args = ["--endpoint-url", aws["endpoint"], "create-job", "--document", str(doc),
            "--job-id", aws["job"]]
    for t in aws["things"]:
        args += ["--thing", t]
    assert fleet.main(args) == 0


def set_status(aws: dict, thing: str, status: str) -> None:
    backend().job_executions[(aws["job"], thing)].status = status


def test_status_and_follow_report_the_executions(aws, tmp_path, capsys):
    aws["tmp"] = tmp_path
    create_thing_job(aws)
    gw1, gw2 = aws["things"]
    capsys.readouterr()

    assert fleet.main(["--endpoint-url", aws["endpoint"], "status", aws["job"], "--json"]) == 0
    status = json.loads(capsys.readouterr().out)
    assert status == {"jobId": aws["job"], "status": "QUEUED",
                      "executions": {"QUEUED": 2}, "unsuccessful": [], "reason": None}

    # the devices, between polls: gw1 starts, then both finish, then IoT completes the job
    steps = iter([
        lambda: set_status(aws, gw1, "IN_PROGRESS"),
        lambda: (set_status(aws, gw1, "SUCCEEDED"), set_status(aws, gw2, "FAILED")),
        lambda: setattr(backend().jobs[aws["job"]], "status", "COMPLETED"),
    ])
    lines: list[str] = []
    final = Fleet(REGION, aws["endpoint"]).follow(
        aws["job"], timeout_s=60, interval_s=0, report=lambda s: lines.append(s.line()),
        sleep=lambda _: next(steps)())
    assert lines == [
        f"job {aws['job']}: QUEUED; 2 execution(s): 2 QUEUED",
        f"job {aws['job']}: QUEUED; 2 execution(s): 1 IN_PROGRESS, 1 QUEUED",
        f"job {aws['job']}: QUEUED; 2 execution(s): 1 FAILED, 1 SUCCEEDED",
        f"job {aws['job']}: COMPLETED; 2 execution(s): 1 FAILED, 1 SUCCEEDED",
    ]
    assert final is not None and final.unsuccessful == [f"{gw2}: FAILED"]

    # the command: a completed job with a failed thing is not a success
    assert fleet.main(["--endpoint-url", aws["endpoint"], "follow", aws["job"]]) == 1
    assert f"  {gw2}: FAILED" in capsys.readouterr().out
    set_status(aws, gw2, "SUCCEEDED")
    assert fleet.main(["--endpoint-url", aws["endpoint"], "follow", aws["job"]]) == 0


def test_follow_gives_up_after_its_timeout(aws, tmp_path, capsys):
    aws["tmp"] = tmp_path
    create_thing_job(aws)
    code = fleet.main(["--endpoint-url", aws["endpoint"], "follow", aws["job"],
                       "--timeout", "0.3", "--interval", "0.1"])
    assert code == fleet.EXIT_TIMEOUT
    assert "still running after 0.3 s" in capsys.readouterr().err


def test_cancel_cancels_the_job(aws, tmp_path, capsys):
    aws["tmp"] = tmp_path
    create_thing_job(aws)
    capsys.readouterr()
    assert fleet.main(["--endpoint-url", aws["endpoint"], "cancel", aws["job"],
                       "--comment", "bad build", "--reason-code", "BAD_BUILD"]) == 0
    assert capsys.readouterr().out.startswith(f"job {aws['job']}: CANCELED;")
    job = aws["iot"].describe_job(jobId=aws["job"])["job"]
    assert (job["status"], job["comment"], job["reasonCode"]) == (
        "CANCELED", "bad build", "BAD_BUILD")
    assert fleet.main(["--endpoint-url", aws["endpoint"], "follow", aws["job"]]) == 1


def run_cli(aws: dict, *args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, **AWS_ENV, PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, str(ROOT / "deploy" / "fleet.py"),
                           "--endpoint-url", aws["endpoint"], *args],
                          capture_output=True, text=True, timeout=120, env=env, cwd="/")


def test_the_script_runs_as_an_operator_runs_it(aws, tmp_path):
    files = artifacts_on_disk(tmp_path)
    done = run_cli(aws, *deploy_args(aws, files)[2:])
    assert done.returncode == 0, done.stderr
    assert f"job/{aws['job']} for " in done.stdout

    missing = run_cli(aws, *deploy_args(aws, files)[2:], "--thing-group", "nope")
    assert missing.returncode == 1
    assert missing.stderr.strip().splitlines()[-1].startswith(
        "fleet: thing group 'nope': ResourceNotFoundException")
    assert "Traceback" not in missing.stderr

    bad = run_cli(aws, "status", "no-such-job")
    assert bad.returncode == 1 and bad.stderr.startswith("fleet: job no-such-job:")
