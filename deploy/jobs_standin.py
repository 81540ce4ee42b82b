"""A stand-in for the IoT Jobs MQTT data plane, beside the mosquitto cloud stand-in
(gateway/cloud/standin.py, which has no Jobs): it connects to that mosquitto as a client and
answers the `$aws/things/THING/jobs/...` requests (get, start-next, JOB/get, JOB/update) from
a job store, publishing notify-next as IoT Core does. Moto has no Jobs data plane either, so
this is where a gateway's Jobs client meets something that answers.

    python deploy/jobs_standin.py --dir STANDIN_DIR --port PORT --jobs JOBS.json
        JOBS.json: [{"jobId": "...", "document": {...}, "things": ["lichen-gateway"],
                     "jobExecutionsRolloutConfig": {"maximumPerMinute": 10},
                     "abortConfig": {"criteriaList": [...]}}]        (the last two optional)

Prints one JSON line per execution status change; runs until SIGTERM/SIGINT.

Control channel (for scripts; any client of the cloud stand-in may use it): a job object
as above published to `$lichen/jobs-standin/create-job` creates it, `{"jobId": ...}` to
`$lichen/jobs-standin/cancel-job` cancels it; the answer goes to the same topic +
`/accepted` or `/rejected` ({"jobId", "message"}).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import signal
import ssl
import sys
import threading
import time
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt

if __package__ in (None, ""):  # run as `python deploy/jobs_standin.py`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from deploy.jobs_standin_store import JobStore, Message  # noqa: E402

REQUEST_FILTERS = ("$aws/things/+/jobs/get", "$aws/things/+/jobs/start-next",
                   "$aws/things/+/jobs/+/get", "$aws/things/+/jobs/+/update")
CONTROL = "$lichen/jobs-standin"
TICK_S = 1.0    # how often executions held back by a rollout rate are looked at


class JobsStandin:
    """The store behind an MQTT client of the cloud stand-in."""

    def __init__(self, port: int, ca: Path, cert: Path, key: Path, host: str = "127.0.0.1",
                 on_change: Any = None, clock: Any = time.time) -> None:
        self.store = JobStore()
        self.lock = threading.Lock()
        self.on_change = on_change  # called with (job_id, thing, status) after each change
        self.clock = clock          # tests may hold time still (no rollout minute passes)
        # every update request's answer: (job_id, thing, status asked for, accepted?)
        self.updates: list[tuple[str, str, str, bool]] = []
        self._ticker = threading.Event()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="jobs-standin")
        self.client.tls_set(ca_certs=str(ca), certfile=str(cert), keyfile=str(key),
                            tls_version=ssl.PROTOCOL_TLS_CLIENT)
        self.client.on_message = self._on_message
        self.host, self.port = host, port

    def start(self, timeout_s: float = 10.0) -> None:
        subscribed = threading.Event()
        self.client.on_subscribe = lambda *a: subscribed.set()
        self.client.connect(self.host, self.port)
        self.client.loop_start()
        self.client.subscribe([(f, 1) for f in REQUEST_FILTERS]
                              + [(f"{CONTROL}/create-job", 1), (f"{CONTROL}/cancel-job", 1)])
        if not subscribed.wait(timeout_s):
            self.stop()
            raise TimeoutError(f"jobs stand-in: no SUBACK from {self.host}:{self.port} "
                               f"within {timeout_s:g} s")
        threading.Thread(target=self._tick, name="jobs-standin-tick", daemon=True).start()

    def stop(self) -> None:
        self._ticker.set()
        self.client.disconnect()
        self.client.loop_stop()

    def add_job(self, job_id: str, document: dict[str, Any], things: list[str],
                rollout: dict[str, Any] | None = None,
                abort: dict[str, Any] | None = None) -> None:
        """ValueError (naming the field) for a job IoT's CreateJob would refuse."""
        with self.lock, self._changes():
            self._publish(self.store.add_job(job_id, document, things, int(self.clock()),
                                             rollout, abort))

    def cancel_job(self, job_id: str) -> None:
        with self.lock, self._changes():
            self._publish(self.store.cancel_job(job_id, int(self.clock())))

    def job(self, job_id: str) -> dict[str, Any]:
        """The job's status (IN_PROGRESS, CANCELED, COMPLETED), why, and its executions."""
        with self.lock:
            job = self.store.jobs[job_id]
            return {"status": job.status, "reason": job.reason,
                    "executions": self.store.status(job_id),
                    "details": {t: dict(e.status_details)
                                for (j, t), e in self.store.executions.items() if j == job_id}}

    def _tick(self) -> None:
        while not self._ticker.wait(TICK_S):
            with self.lock, self._changes():
                self._publish(self.store.tick(int(self.clock())))

    @contextlib.contextmanager
    def _changes(self):
        """Report each execution whose status changed inside the block (or is new)."""
        states = {k: e.status for k, e in self.store.executions.items() if e.created}
        yield
        if self.on_change:
            for (job_id, thing), e in self.store.executions.items():
                if e.created and states.get((job_id, thing)) != e.status:
                    self.on_change(job_id, thing, e.status)

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        if msg.topic.startswith(CONTROL + "/"):
            self._control(msg.topic, msg.payload)
            return
        with self.lock, self._changes():
            out = self.store.handle(msg.topic, msg.payload, int(self.clock()))
            self._publish(out)
            parts = msg.topic.split("/")
            if len(parts) == 6 and parts[5] == "update":
                try:
                    asked = json.loads(msg.payload).get("status")
                except (ValueError, AttributeError):
                    asked = None
                accepted = any(t.endswith("/update/accepted") for t, _ in out)
                self.updates.append((parts[4], parts[2], asked, accepted))

    def _control(self, topic: str, payload: bytes) -> None:
        job: dict[str, Any] = {}
        try:
            job = json.loads(payload)
            if not isinstance(job, dict):
                raise ValueError("the payload must be a JSON object")
            if topic.endswith("/create-job"):
                self.add_job(job["jobId"], job["document"], list(job["things"]),
                             job.get("jobExecutionsRolloutConfig"), job.get("abortConfig"))
            elif topic.endswith("/cancel-job"):
                self.cancel_job(job["jobId"])
            else:
                return
        except (KeyError, TypeError, ValueError) as exc:
            message = f"missing field {exc}" if isinstance(exc, KeyError) else str(exc)
            self.client.publish(f"{topic}/rejected", json.dumps(
                {"jobId": job.get("jobId"), "message": message}), qos=1)
            return
        self.client.publish(f"{topic}/accepted", json.dumps({"jobId": job["jobId"]}), qos=1)

    def _publish(self, messages: list[Message]) -> None:
        for topic, body in messages:
            self.client.publish(topic, json.dumps(body), qos=1)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python deploy/jobs_standin.py",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--dir", required=True, type=Path,
                        help="the cloud stand-in's directory (its CA and observer keys)")
    parser.add_argument("--port", type=int, default=8884)
    parser.add_argument("--jobs", type=Path, help="JSON list of jobs to queue at start")
    args = parser.parse_args(argv)
    jobs: list[dict[str, Any]] = []
    if args.jobs:
        try:
            jobs = json.loads(args.jobs.read_text())
            if not isinstance(jobs, list):
                raise ValueError("must be a JSON list")
        except (OSError, ValueError) as exc:
            print(f"jobs stand-in: --jobs {args.jobs}: {exc}", file=sys.stderr)
            return 1

    def changed(job_id: str, thing: str, status: str) -> None:
        print(json.dumps({"jobId": job_id, "thing": thing, "status": status}), flush=True)

    standin = JobsStandin(args.port, args.dir / "ca.pem", args.dir / "observer.crt",
                          args.dir / "observer.key", on_change=changed)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    try:
        standin.start()
        for job in jobs:
            standin.add_job(job["jobId"], job["document"], list(job["things"]),
                            job.get("jobExecutionsRolloutConfig"), job.get("abortConfig"))
    except (OSError, TimeoutError, KeyError, TypeError, ValueError) as exc:
        print(f"jobs stand-in: {exc}", file=sys.stderr)
        return 1
    stop.wait()
    standin.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
