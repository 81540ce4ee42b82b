"""The Jobs agent's pure rules (jobs_state.py), its rows in deployments.sqlite3 (schema 2,
migrated from 1), and the Jobs stand-in's rollout and abort as IoT Core enforces them."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

from deploy.jobs_standin_store import JobStore
from gateway.deployment.jobs_state import (
    ProgressPacer,
    after_rejection,
    detail_value,
    outcome,
    progress_details,
)
from gateway.deployment.store import FAILED, SUCCEEDED, DeploymentStore

DOC = {"schemaVersion": 1, "config": {}}
ABORT = {"criteriaList": [{"failureType": "FAILED", "action": "CANCEL",
                           "thresholdPercentage": 50, "minNumberOfExecutedThings": 2}]}


def test_outcome_and_progress_details(tmp_path: Path) -> None:
    store = DeploymentStore(tmp_path)
    dep_id = store.add("apply", DOC, job_id="j1")
    store.set_state(dep_id, FAILED, reason="health check failed: x\ny; rolled back to version 0")
    assert outcome(store.get(dep_id)) == ("FAILED", {
        "deployment": str(dep_id), "step": "FAILED",
        "reason": "health check failed: x y; rolled back to version 0"})
    store.set_state(dep_id, SUCCEEDED, version=dep_id)
    assert outcome(store.get(dep_id))[0] == "SUCCEEDED"
    assert progress_details(3, "FETCHING", "model 512/2048") == {
        "deployment": "3", "step": "FETCHING", "artifact": "model",
        "bytesDownloaded": "512", "bytesTotal": "2048"}
    assert len(detail_value("x" * 5000)) == 1024
    store.close()


def test_progress_is_paced_but_each_step_goes_at_once() -> None:
    pacer = ProgressPacer(interval_s=2.0)
    pacer.offer({"step": "FETCHING", "bytesDownloaded": "1"})
    assert pacer.take(0.0)["bytesDownloaded"] == "1"
    pacer.offer({"step": "FETCHING", "bytesDownloaded": "2"})
    pacer.offer({"step": "FETCHING", "bytesDownloaded": "3"})
    assert pacer.due(1.0) == 1.0 and pacer.take(1.0) is None
    assert pacer.take(2.0)["bytesDownloaded"] == "3"       # the latest, not each one
    pacer.offer({"step": "STAGED"})
    assert pacer.take(2.1) == {"step": "STAGED"}
    assert pacer.due(5.0) is None


def test_what_a_rejected_update_means() -> None:
    assert after_rejection("SUCCEEDED", "InvalidStateTransition", "SUCCEEDED", 4).note \
        == "already reported"                                # its answer was lost
    d = after_rejection("SUCCEEDED", "InvalidStateTransition", "CANCELED", 4)
    assert (d.action, d.cloud_status) == ("settled", "CANCELED")
    d = after_rejection("SUCCEEDED", "VersionMismatch", "IN_PROGRESS", 7)
    assert (d.action, d.version) == ("retry", 7)
    assert after_rejection("FAILED", "VersionMismatch", None, None).action == "describe"
    assert after_rejection("FAILED", "RequestThrottled", None, None).action == "later"
    d = after_rejection("FAILED", "ResourceNotFound", None, None)
    assert (d.action, d.cloud_status) == ("settled", "REMOVED")
    assert after_rejection("FAILED", "InvalidJson", None, None).action == "give-up"


def test_job_reports_and_what_is_left_to_finish(tmp_path: Path) -> None:
    store = DeploymentStore(tmp_path)
    a = store.add("apply", DOC, job_id="a")
    b = store.add("apply", DOC, job_id="b")
    store.add("apply", DOC)                                   # `lichen deploy`: no job
    store.set_state(a, SUCCEEDED, version=a)
    store.set_job_report("a", version=2, reported="IN_PROGRESS")
    assert [d.id for d in store.jobs_to_finish(("SUCCEEDED",))] == [a, b]
    store.set_job_report("a", reported="SUCCEEDED")           # version kept
    assert store.job_report("a") == (2, "SUCCEEDED")
    assert [d.id for d in store.jobs_to_finish(("SUCCEEDED",))] == [b]
    assert store.by_job("b").id == b and store.by_job("nope") is None
    store.close()


def test_a_schema_1_file_gets_job_reports(tmp_path: Path) -> None:
    db = sqlite3.connect(tmp_path / "deployments.sqlite3")
    db.executescript("""CREATE TABLE deployments (id INTEGER PRIMARY KEY AUTOINCREMENT,
        kind TEXT NOT NULL, job_id TEXT, state TEXT NOT NULL, reason TEXT, version INTEGER,
        previous_version INTEGER, document TEXT, base_dir TEXT,
        attempts INTEGER NOT NULL DEFAULT 0, boots INTEGER NOT NULL DEFAULT 0,
        created_at REAL NOT NULL, updated_at REAL NOT NULL);
        CREATE TABLE events (id INTEGER PRIMARY KEY AUTOINCREMENT,
        deployment_id INTEGER NOT NULL REFERENCES deployments(id), state TEXT NOT NULL,
        detail TEXT, at REAL NOT NULL);
        PRAGMA user_version = 1;""")
    db.execute("INSERT INTO deployments (kind, job_id, state, document, created_at, "
               "updated_at) VALUES ('apply', 'old-job', 'SUCCEEDED', ?, 1, 1)",
               (json.dumps(DOC),))
    db.commit()
    db.close()
    store = DeploymentStore(tmp_path)
    assert store.db.execute("PRAGMA user_version").fetchone()[0] == 2
    assert store.by_job("old-job").state == "SUCCEEDED"
    assert store.job_report("old-job") == (None, None)
    store.close()


def test_rollout_creates_executions_at_the_rate_given() -> None:
    store = JobStore()
    notes = store.add_job("j", DOC, ["a", "b", "c"], now=0, rollout={"maximumPerMinute": 2})
    assert sorted(t.split("/")[2] for t, _ in notes) == ["a", "b"]
    assert store.handle("$aws/things/c/jobs/start-next", b"{}", 30)[0][1].get("execution") \
        is None                                               # not created yet
    assert [t.split("/")[2] for t, _ in store.tick(59)] == []
    assert [t.split("/")[2] for t, _ in store.tick(60)] == ["c"]


def test_abort_cancels_what_has_not_run() -> None:
    store = JobStore()
    store.add_job("j", DOC, ["a", "b", "c", "d"], now=0, rollout={"maximumPerMinute": 3},
                  abort=ABORT)
    for thing in ("a", "b", "c"):
        store.handle(f"$aws/things/{thing}/jobs/start-next", b"{}", 1)
    store.handle("$aws/things/a/jobs/j/update", b'{"status": "FAILED"}', 2)
    assert store.jobs["j"].status == "IN_PROGRESS"            # 1 executed: below the minimum
    store.handle("$aws/things/b/jobs/j/update", b'{"status": "FAILED"}', 3)
    assert store.jobs["j"].status == "CANCELED"
    assert store.status("j") == {"a": "FAILED", "b": "FAILED", "c": "IN_PROGRESS",
                                 "d": "CANCELED"}             # c runs on: no force
    out = store.handle("$aws/things/c/jobs/j/update", b'{"status": "SUCCEEDED"}', 4)
    assert out[0][0].endswith("/accepted")
    assert store.tick(600) == []                              # a canceled job rolls no more


def test_create_job_errors_name_the_field() -> None:
    store = JobStore()
    for kwargs, field in (({"rollout": {"maximumPerMinute": 0}}, "maximumPerMinute"),
                          ({"abort": {"criteriaList": [{"action": "STOP"}]}}, ".action")):
        try:
            store.add_job("j", DOC, ["a"], now=0, **kwargs)
        except ValueError as exc:
            assert field in str(exc)
        else:
            raise AssertionError(kwargs)
