"""Fleet deployments through AWS IoT Jobs: real gateway processes, each its own thing with
its own certificate, on the mosquitto cloud stand-in with the Jobs stand-in, awsiotsdk's
IotJobsClientV2 in each gateway, and a paho device connected to each gateway throughout."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tests.deployment.helpers import (
    DIGITS,
    artifact,
    bundle,
    handler_source,
    invoke,
    status,
    wait_for,
)
from tests.deployment.jobs_fleet import THINGS, ArtifactServer, Fleet

ROUTE = {"name": "readings", "direction": "up", "filter": "dev/#",
         "topic": "dt/{thing}/{topic}", "qos": 1}

# A health function that needs what only some sites have: it fails where the gateway's
# environment lacks SITE_SENSOR (set per gateway by the test, as a site's hardware would).
NEEDS_SENSOR = """import os
def handler(event, context):
    if not os.environ.get("SITE_SENSOR"):
        raise RuntimeError("no sensor on this site")
    return {"ok": True}
"""


def job_document(www: Path, server: ArtifactServer | None, functions: dict[str, str], *,
                 model: bool = False, routes: list | None = None,
                 health: str | None = None) -> dict:
    """A deployment document whose artifacts are in `www`, served by `server` (else given
    as file:// URLs, as a test of the document alone would)."""
    def url(name: str) -> str:
        return f"{server.url}/{name}" if server else (www / name).as_uri()

    doc: dict = {"schemaVersion": 1, "config": {"functions": []}, "artifacts": {}}
    for fn, source in functions.items():
        art = f"{fn}-code"
        path = bundle(www, art, {"main.py": source})
        doc["artifacts"][art] = artifact(path, "zip", url(path.name))
        doc["config"]["functions"].append({"name": fn, "code": {"artifact": art},
                                           "handler": "main.handler",
                                           "triggers": [f"in/{fn}"],
                                           "result_topic": f"out/{fn}"})
    if model:
        shutil.copyfile(DIGITS / "digits.onnx", www / "digits.onnx")
        doc["artifacts"]["digits-model"] = artifact(www / "digits.onnx", url=url("digits.onnx"))
        doc["config"]["models"] = [{"name": "digits", "path": {"artifact": "digits-model"}}]
    if routes is not None:
        doc["config"]["routes"] = routes
    if health:
        doc["health"] = {"window_s": 30, "invoke": {"function": health}}
    return doc


def deployed(fleet: Fleet, thing: str) -> dict:
    return status(fleet.state(thing))


def assert_devices_stayed(fleet: Fleet) -> None:
    for thing, device in fleet.devices.items():
        device.round_trip()
        assert device.disconnects == 0 and device.client.is_connected(), thing


def test_a_job_reaches_three_gateways(fleet: Fleet, artifact_server: ArtifactServer,
                                      tmp_path: Path) -> None:
    www = tmp_path / "www"
    for thing in THINGS:
        fleet.start(thing)
    doc = job_document(www, artifact_server, {"echo": handler_source("v1")}, model=True,
                       routes=[ROUTE])
    fleet.jobs.add_job("deploy-1", doc, list(THINGS))
    job = fleet.wait_executions("deploy-1", dict.fromkeys(THINGS, "SUCCEEDED"))
    for thing in THINGS:
        assert invoke(fleet.state(thing), "echo") == {"fn": "v1"}
        last = deployed(fleet, thing)["last"]
        assert last["state"] == "SUCCEEDED" and last["job_id"] == "deploy-1"
        details = job["details"][thing]
        assert details["step"] == "SUCCEEDED" and details["version"] == str(last["version"])
        assert fleet.reports("deploy-1", thing)[-1] == ("SUCCEEDED", True)
        # progress went up while it ran: the download, with bytes
        steps = [c for c in fleet.changes if c[:2] == ("deploy-1", thing)]
        assert [s for _, _, s in steps] == ["QUEUED", "IN_PROGRESS", "SUCCEEDED"]
        config = (fleet.state(thing) / "deployments" / "versions" / str(last["version"])
                  / "config.toml").read_text()
        assert "digits" in config and "dev/#" in config
    assert_devices_stayed(fleet)
    # the route the job added carries a device's reading to the cloud as this thing
    seen = json.loads((fleet.state("gw-1") / "status.json").read_text())["cloud"]
    assert seen["routes_up"] == 1


def test_a_failing_version_is_rolled_back_everywhere(fleet: Fleet, tmp_path: Path) -> None:
    www = tmp_path / "www"
    www.mkdir(exist_ok=True)
    for thing in THINGS:
        fleet.start(thing)
    fleet.jobs.add_job("good", job_document(www, None, {"echo": handler_source("old")}),
                       list(THINGS))
    fleet.wait_executions("good", dict.fromkeys(THINGS, "SUCCEEDED"))
    broken = "def handler(event, context):\n    raise ValueError('sensor offline')\n"
    fleet.jobs.add_job("bad", job_document(www, None, {"echo": handler_source("new"),
                                                       "probe": broken}, health="probe"),
                       list(THINGS))
    job = fleet.wait_executions("bad", dict.fromkeys(THINGS, "FAILED"))
    for thing in THINGS:
        reason = job["details"][thing]["reason"]
        assert "health function probe: ValueError: sensor offline" in reason, reason
        assert "rolled back to version" in reason
        assert invoke(fleet.state(thing), "echo") == {"fn": "old"}
        assert deployed(fleet, thing)["last"]["state"] == "FAILED"
        assert [s for s, ok in fleet.reports("bad", thing) if s == "FAILED"] == ["FAILED"]
    assert_devices_stayed(fleet)


def test_an_invalid_document_is_rejected(fleet: Fleet, tmp_path: Path) -> None:
    www = tmp_path / "www"
    www.mkdir(exist_ok=True)
    fleet.start("gw-1")
    fleet.jobs.add_job("good", job_document(www, None, {"echo": handler_source("old")}),
                       ["gw-1"])
    fleet.wait_executions("good", {"gw-1": "SUCCEEDED"})
    version = deployed(fleet, "gw-1")["version"]
    doc = job_document(www, None, {"echo": handler_source("new")})
    doc["config"]["functions"][0]["timeout_s"] = -5
    fleet.jobs.add_job("invalid", doc, ["gw-1"])
    job = fleet.wait_executions("invalid", {"gw-1": "REJECTED"})
    reason = job["details"]["gw-1"]["reason"]
    assert reason.startswith("$.config.functions[0].timeout_s"), reason
    assert deployed(fleet, "gw-1")["version"] == version
    assert invoke(fleet.state("gw-1"), "echo") == {"fn": "old"}
    assert_devices_stayed(fleet)


def test_abort_stops_the_rollout(fleet: Fleet, tmp_path: Path, monkeypatch) -> None:
    """Two executions at a time (the clock stands still: no second minute); both land on
    sites without the sensor the new version's health check needs, fail, and the abort
    criteria (FAILED >= 50 % once 2 ran) cancel the job before the third site gets it."""
    www = tmp_path / "www"
    www.mkdir(exist_ok=True)
    fleet.start("gw-1")
    fleet.start("gw-2")
    monkeypatch.setenv("SITE_SENSOR", "bme280")
    fleet.start("gw-3")
    monkeypatch.delenv("SITE_SENSOR")
    doc = job_document(www, None, {"echo": handler_source("new"),
                                   "sensor-check": NEEDS_SENSOR}, health="sensor-check")
    fleet.jobs.add_job("risky", doc, list(THINGS), rollout={"maximumPerMinute": 2},
                       abort={"criteriaList": [{"failureType": "FAILED", "action": "CANCEL",
                                                "thresholdPercentage": 50,
                                                "minNumberOfExecutedThings": 2}]})
    job = fleet.wait_executions("risky", {"gw-1": "FAILED", "gw-2": "FAILED",
                                          "gw-3": "CANCELED"})
    assert job["status"] == "CANCELED" and "2 of 2 executions FAILED" in job["reason"]
    for thing in ("gw-1", "gw-2"):
        assert "no sensor on this site" in job["details"][thing]["reason"]
        assert deployed(fleet, thing)["last"]["state"] == "FAILED"
    assert fleet.reports("risky", "gw-3") == []           # it never saw the job
    assert deployed(fleet, "gw-3")["last"] is None
    assert_devices_stayed(fleet)


@pytest.mark.parametrize("step", ["VALIDATED", "HEALTH_CHECK"])
def test_kill_mid_job_then_restart(fleet: Fleet, tmp_path: Path, monkeypatch,
                                   step: str) -> None:
    """kill -9 with the job's deployment paused at `step`; after a restart the job ends in a
    definite state, reported once, and the gateway runs that version."""
    www = tmp_path / "www"
    www.mkdir(exist_ok=True)
    monkeypatch.setenv("LICHEN_DEPLOY_PAUSE_AT", step)
    gw = fleet.start("gw-1")
    monkeypatch.delenv("LICHEN_DEPLOY_PAUSE_AT")
    fleet.jobs.add_job("cut", job_document(www, None, {"echo": handler_source("v1")}),
                       ["gw-1"])
    marker = fleet.state("gw-1") / "deployments" / f"paused-at-{step}"
    wait_for(marker.exists, f"paused at {step}")
    wait_for(lambda: fleet.executions("cut")["gw-1"] == "IN_PROGRESS", "IN_PROGRESS")
    fleet.devices.pop("gw-1").close()
    gw.kill()
    marker.unlink()
    fleet.start("gw-1")
    fleet.wait_executions("cut", {"gw-1": "SUCCEEDED"})
    # status.json (which `lichen fn invoke` reads) may still be the killed process's
    wait_for(lambda: invoke(fleet.state("gw-1"), "echo") == {"fn": "v1"}, "echo answers", 30)
    finals = [(s, ok) for s, ok in fleet.reports("cut", "gw-1") if s != "IN_PROGRESS"]
    assert finals == [("SUCCEEDED", True)]
    statuses = [s for j, t, s in fleet.changes if j == "cut"]
    assert statuses == ["QUEUED", "IN_PROGRESS", "SUCCEEDED"]
    history = deployed(fleet, "gw-1")
    assert history["last"]["job_id"] == "cut" and history["last"]["state"] == "SUCCEEDED"
    # a second restart finds nothing owed and reports nothing again
    sent = len(fleet.jobs.updates)
    fleet.devices.pop("gw-1").close()
    fleet.gateways["gw-1"].stop()
    fleet.start("gw-1")
    fleet.jobs.add_job("after", job_document(www, None, {"echo": handler_source("v2")}),
                       ["gw-1"])
    fleet.wait_executions("after", {"gw-1": "SUCCEEDED"})
    assert [u for u in fleet.jobs.updates[sent:] if u[0] == "cut"] == []
