"""Local functions: what a worker process costs per invocation, and inference through a
function against raw onnxruntime on the same model.

    python bench/functions_bench.py                    # ~30 s
    python bench/functions_bench.py --n 2000 --json /tmp/fn.json

1. Invocation overhead, one message at a time (a paho client on 127.0.0.1):
   - plain:    publish -> the broker -> back to the client (no function; the MQTT floor)
   - function: publish -> trigger -> pinned worker (handler returns the event) -> result
               topic -> client
   - direct:   the same handler called in-process with json decode/encode (no gateway)
2. Inference, the digits example model (deploy/examples/digits), one 8x8 image per call:
   - raw onnxruntime: session.run in a loop, 1 intra-op thread
   - through the function: classify.handler behind a pinned function, `--window` requests
     in flight, 1 and 2 instances

Every wait is bounded; the gateway is stopped in `finally`.
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "deploy" / "examples" / "digits"
sys.path.insert(0, str(ROOT))

ECHO = "def handler(event, context):\n    return event\n"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Gateway:
    def __init__(self, tmp: Path, config: str) -> None:
        self.port = free_port()
        cfg = tmp / "lichen.toml"
        cfg.write_text(config)
        self.log = open(tmp / "gateway.log", "wb")  # noqa: SIM115 - closed in stop()
        env = dict(os.environ, PYTHONPATH=str(ROOT))
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "gateway.cli", "run", "--state-dir", str(tmp / "state"),
             "--mqtt-port", str(self.port), "--tls-port", "0", "--discovery-port", "0",
             "--config", str(cfg), "--log-level", "warning"],
            stdout=self.log, stderr=subprocess.STDOUT, cwd=ROOT, env=env)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"gateway exited: {(tmp / 'gateway.log').read_text()}")
            try:
                socket.create_connection(("127.0.0.1", self.port), 0.5).close()
                return
            except OSError:
                time.sleep(0.05)
        raise TimeoutError("gateway did not start within 60 s")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.log.close()


class Client:
    def __init__(self, port: int, *filters: str) -> None:
        import paho.mqtt.client as mqtt

        self.q: queue.Queue = queue.Queue()
        self.c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"bench-{port}")
        self.c.on_message = lambda c, u, m: self.q.put((time.perf_counter(), m.topic,
                                                       m.payload))
        self.c.connect("127.0.0.1", port)
        self.c.loop_start()
        for f in filters:
            self.c.subscribe(f, qos=0)
        self.c.subscribe("bench/probe", qos=0)
        self.c.publish("bench/probe", b"x")
        self.get(10)

    def get(self, timeout: float = 10.0) -> tuple[float, str, bytes]:
        return self.q.get(timeout=timeout)

    def close(self) -> None:
        self.c.loop_stop()
        self.c.disconnect()


def pct(values: list[float], p: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(len(values) * p))]


def round_trips(cl: Client, topic: str, want: str, n: int, payload: bytes) -> list[float]:
    out = []
    for i in range(n + n // 10):  # the first tenth warms up
        t0 = time.perf_counter()
        cl.c.publish(topic, payload)
        t1, got, _ = cl.get(10)
        assert got == want, got
        if i >= n // 10:
            out.append((t1 - t0) * 1e6)
    return out


def summary(us: list[float]) -> dict[str, float]:
    return {"p50_us": round(pct(us, 0.50), 1), "p99_us": round(pct(us, 0.99), 1),
            "mean_us": round(statistics.fmean(us), 1)}


def bench_overhead(tmp: Path, n: int) -> dict[str, Any]:
    code = tmp / "echo"
    code.mkdir()
    (code / "echo.py").write_text(ECHO)
    gw = Gateway(tmp, f'[[functions]]\nname = "echo"\ncode = "{code}"\nhandler = '
                      '"echo.handler"\nlifecycle = "pinned"\ntriggers = ["bench/in"]\n'
                      'result_topic = "bench/out"\n')
    payload = json.dumps({"t": 21.5, "id": "sensor-1"}).encode()
    try:
        cl = Client(gw.port, "bench/out", "bench/plain")
        plain = round_trips(cl, "bench/plain", "bench/plain", n, payload)
        function = round_trips(cl, "bench/in", "bench/out", n, payload)
        cl.close()
    finally:
        gw.stop()
    sys.path.insert(0, str(code))
    from echo import handler  # the same code, called in-process

    direct = []
    for _ in range(n):
        t0 = time.perf_counter()
        json.dumps(handler(json.loads(payload), None)).encode()
        direct.append((time.perf_counter() - t0) * 1e6)
    res = {"plain_mqtt": summary(plain), "function": summary(function),
           "direct_call": summary(direct)}
    res["function_minus_plain_p50_us"] = round(res["function"]["p50_us"]
                                               - res["plain_mqtt"]["p50_us"], 1)
    return res


def raw_onnxruntime(seconds: float, images: np.ndarray) -> float:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    sess = ort.InferenceSession(str(EXAMPLE / "digits.onnx"), opts,
                                providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    for img in images[:100]:
        sess.run(None, {name: img.reshape(1, 64)})
    count, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        for img in images[:200]:
            sess.run(None, {name: img.reshape(1, 64)})
        count += 200
    return count / (time.perf_counter() - t0)


def through_function(tmp: Path, n: int, window: int, instances: int,
                     images: np.ndarray) -> dict[str, float]:
    meta = json.loads((EXAMPLE / "digits.json").read_text())
    gw = Gateway(tmp, f'[[models]]\nname = "digits"\npath = "{EXAMPLE / "digits.onnx"}"\n'
                      f'sha256 = "{meta["sha256"]}"\n[[functions]]\nname = "classify"\n'
                      f'code = "{EXAMPLE}"\nhandler = "classify.handler"\nlifecycle = '
                      f'"pinned"\ninstances = {instances}\nqueue_size = {window * 2}\n'
                      'memory_mb = 512\ntriggers = ["digits/in"]\nresult_topic = '
                      '"digits/out"\nerror_topic = "digits/err"\n')
    payloads = [json.dumps({"pixels": img.tolist()}).encode() for img in images]
    try:
        cl = Client(gw.port, "digits/out", "digits/err")
        for p in payloads[:50]:  # warm: every instance has loaded its session
            cl.c.publish("digits/in", p)
            assert cl.get(30)[1] == "digits/out"
        sent = done = 0
        t0 = time.perf_counter()
        while done < n:
            while sent < n and sent - done < window:
                cl.c.publish("digits/in", payloads[sent % len(payloads)])
                sent += 1
            _, topic, body = cl.get(30)
            assert topic == "digits/out", body
            done += 1
        rate = n / (time.perf_counter() - t0)
        cl.close()
    finally:
        gw.stop()
    return {"instances": instances, "window": window, "inferences_per_s": round(rate)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=1000, help="invocations per measurement")
    ap.add_argument("--window", type=int, default=32, help="inference requests in flight")
    ap.add_argument("--seconds", type=float, default=3.0, help="raw onnxruntime duration")
    ap.add_argument("--json", help="write the figures here too")
    args = ap.parse_args()
    from sklearn.datasets import load_digits  # bundled data, no download

    images = (load_digits().data / 16.0).astype(np.float32)
    results: dict[str, Any] = {"cpus": os.cpu_count(), "python": sys.version.split()[0]}
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        for sub in ("a", "b", "c"):
            (tmp / sub).mkdir()
        results["overhead"] = bench_overhead(tmp / "a", args.n)
        results["inference"] = {
            "raw_onnxruntime_per_s": round(raw_onnxruntime(args.seconds, images)),
            "function_1": through_function(tmp / "b", args.n, args.window, 1, images),
            "function_2": through_function(tmp / "c", args.n, args.window, 2, images),
        }
    print(json.dumps(results, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
