"""Local functions: what a worker process costs per invocation, and inference through a
function against raw onnxruntime on the same model.

    python bench/functions_bench.py                    # ~1.5 min
    python bench/functions_bench.py --batch 64 --window 256 --seconds 3 --json /tmp/fn.json

1. Invocation overhead, one message at a time (a paho client on 127.0.0.1):
   - plain:    publish -> the broker -> back to the client (no function; the MQTT floor)
   - function: publish -> trigger -> pinned worker (handler returns the event) -> result
               topic -> client
   - direct:   the same handler called in-process with json decode/encode (no gateway)
2. Inference, the digits example model (deploy/examples/digits), one 8x8 image a message,
   for two message formats: JSON ({"pixels": [64 numbers]}) and binary (256 bytes of
   float32). Every figure is images per second.
   - raw onnxruntime, inference alone: session.run on ready float32 arrays, 1 intra-op
     thread, one image a call (b1) and `--batch` images a call
   - in process: each message's whole work with no gateway, in this process: the payload
     decoded as a worker decodes it, classify.handler (b1) or classify.batch_handler on
     `--batch` messages, each result encoded to JSON
   - through a function: a stream of MQTT messages into a pinned function, `--window`
     requests in flight, results back over MQTT: classify.handler (un-batched), and
     classify.batch_handler with batch_max = `--batch` on 1 and 2 instances. The client is
     a minimal MQTT client on a raw socket; its CPU share is reported with the gateway's
     and the workers'.
   Each function figure comes with its ratio to every baseline.

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


class StreamClient:
    """Just enough MQTT 3.1.1 on a blocking socket to stream requests: PUBLISHes pre-encoded
    and written in runs, replies (QoS 0) split by hand. It costs a few µs of CPU a message,
    where paho costs tens, so the client is not what is measured; its CPU time is reported."""

    def __init__(self, port: int, *filters: str) -> None:
        from gateway.mqtt import packets as pk

        self.sock = socket.create_connection(("127.0.0.1", port), timeout=30)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = bytearray()
        self.sock.sendall(pk.encode(pk.Connect(f"stream-{port}", keepalive=600)))
        self.sock.sendall(pk.encode(pk.Subscribe(1, [pk.Subscription(f) for f in filters])))
        got: list[int] = []
        while 0x90 not in got:  # CONNACK, then SUBACK
            got += [first for first, _ in self._frames()]

    def _frames(self) -> list[tuple[int, memoryview]]:
        """The whole frames received so far (at least one): (first byte, body)."""
        out: list[tuple[int, memoryview]] = []
        while not out:
            data = self.sock.recv(1 << 20)
            if not data:
                raise ConnectionError("the gateway closed the connection")
            self.buf += data
            view, pos, end = memoryview(self.buf), 0, len(self.buf)
            while pos + 2 <= end:
                length, shift, i = 0, 0, pos + 1
                while i < end:
                    byte = view[i]
                    length |= (byte & 0x7F) << shift
                    shift += 7
                    i += 1
                    if not byte & 0x80:
                        break
                else:
                    break
                if i + length > end:
                    break
                out.append((view[pos], bytes(view[i:i + length])))
                pos = i + length
            view.release()
            del self.buf[:pos]
        return out

    def replies(self) -> list[tuple[str, bytes]]:
        """The (topic, payload) of the PUBLISHes received so far (at least one)."""
        out = []
        for first, body in self._frames():
            if first >> 4 == 3:
                tlen = (body[0] << 8) | body[1]
                out.append((body[2:2 + tlen].decode(), body[2 + tlen:]))
        return out

    def stream(self, frames: list[bytes], window: int, want: str, n: int | None = None,
               seconds: float | None = None) -> tuple[int, float]:
        """Send requests (cycling through `frames`) with at most `window` unanswered, n of
        them or for `seconds`; every reply must be on `want`. (replies, seconds from the
        first send to the last reply)."""
        sent = done = 0
        t0 = time.perf_counter()
        end = t0 + seconds if seconds is not None else float("inf")
        limit = n if n is not None else 1 << 62
        while True:
            if sent < limit and time.perf_counter() >= end:
                limit = sent  # time is up: collect what is in flight
            k = min(limit - sent, window - (sent - done))
            if k > 0:
                self.sock.sendall(b"".join(frames[(sent + j) % len(frames)]
                                           for j in range(k)))
                sent += k
            if done >= sent:
                return done, time.perf_counter() - t0
            for topic, payload in self.replies():
                if topic != want:
                    raise AssertionError(f"{topic}: {payload[:300]!r}")
                done += 1

    def close(self) -> None:
        self.sock.close()


def publish_frames(topic: str, payloads: list[bytes]) -> list[bytes]:
    from gateway.mqtt.packets import encode_publish

    return [encode_publish(topic.encode(), p, 0, False, False, None, None) for p in payloads]


def digits_session() -> Any:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    return ort.InferenceSession(str(EXAMPLE / "digits.onnx"), opts,
                                providers=["CPUExecutionProvider"])


def rate(seconds: float, images: int, work: Any) -> float:
    """Images per second of `work()` (which handles `images` of them), over `seconds`."""
    for _ in range(max(1, 100 // images)):
        work()
    count, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        for _ in range(max(1, 200 // images)):
            work()
            count += images
    return count / (time.perf_counter() - t0)


def raw_onnxruntime(seconds: float, images: np.ndarray, batch: int) -> float:
    """session.run on ready float32 arrays, `batch` images a call: inference alone."""
    sess = digits_session()
    name = sess.get_inputs()[0].name
    stacks = [images[i:i + batch] for i in range(0, len(images) - batch + 1, batch)]
    it = iter(())

    def work() -> None:
        nonlocal it
        x = next(it, None)
        if x is None:
            it = iter(stacks)
            x = next(it)
        sess.run(None, {name: x})

    return rate(seconds, batch, work)


class _Context:
    """What classify.py uses of a function's context: infer, on a session in this process."""

    def __init__(self) -> None:
        from gateway.ml import ModelRegistry, ModelSettings

        meta = json.loads((EXAMPLE / "digits.json").read_text())
        self.registry = ModelRegistry([ModelSettings("digits", str(EXAMPLE / "digits.onnx"),
                                                     meta["sha256"])])

    def infer(self, model: str, inputs: dict) -> dict:
        return self.registry.infer(model, inputs)


def in_process(seconds: float, payloads: list[bytes], batch: int) -> float:
    """The messages' whole per-message work with no gateway: each payload decoded as the
    worker decodes it, classify.py's handler (batch 1) or batch_handler (`batch` events a
    call) run on a session in this process, and each result encoded to JSON."""
    sys.path.insert(0, str(EXAMPLE))
    import classify

    from gateway.functions.handling import decode_event, result_json

    ctx = _Context()
    groups = [payloads[i:i + batch] for i in range(0, len(payloads) - batch + 1, batch)]
    it = iter(())

    def work() -> None:
        nonlocal it
        group = next(it, None)
        if group is None:
            it = iter(groups)
            group = next(it)
        if batch == 1:
            result_json(classify.handler(decode_event(group[0]), ctx))
        else:
            for r in classify.batch_handler([decode_event(p) for p in group], ctx):
                result_json(r)

    return rate(seconds, batch, work)


def cpu_seconds(procs: list[Any]) -> list[float]:
    out = []
    for p in procs:
        try:
            t = p.cpu_times()
            out.append(t.user + t.system)
        except Exception:  # a worker that went away
            out.append(0.0)
    return out


def through_function(tmp: Path, duration: float, window: int, instances: int,
                     payloads: list[bytes], batch_max: int = 1) -> dict[str, Any]:
    import psutil

    meta = json.loads((EXAMPLE / "digits.json").read_text())
    handler = "classify.batch_handler" if batch_max > 1 else "classify.handler"
    batching = f"batch_max = {batch_max}\n" if batch_max > 1 else ""
    gw = Gateway(tmp, f'[[models]]\nname = "digits"\npath = "{EXAMPLE / "digits.onnx"}"\n'
                      f'sha256 = "{meta["sha256"]}"\n[[functions]]\nname = "classify"\n'
                      f'code = "{EXAMPLE}"\nhandler = "{handler}"\nlifecycle = '
                      f'"pinned"\ninstances = {instances}\nqueue_size = {window * 2}\n'
                      f'memory_mb = 512\n{batching}triggers = ["digits/in"]\nresult_topic = '
                      '"digits/out"\nerror_topic = "digits/err"\n')
    frames = publish_frames("digits/in", payloads)
    try:
        cl = StreamClient(gw.port, "digits/out", "digits/err")
        cl.stream(frames, 4, "digits/out", n=200 * instances)  # every instance has its session
        gateway = psutil.Process(gw.proc.pid)
        procs = [gateway, psutil.Process(), *gateway.children()]
        before = cpu_seconds(procs)
        n, seconds = cl.stream(frames, window, "digits/out", seconds=duration)
        used = [b - a for a, b in zip(before, cpu_seconds(procs), strict=True)]
        cl.close()
        counters = function_status(tmp / "state")
    finally:
        gw.stop()
    pct = [round(100 * u / seconds) for u in used]
    out = {"instances": instances, "batch_max": batch_max, "window": window,
           "inferences_per_s": round(n / seconds),
           "cpu_pct": {"gateway": pct[0], "client": pct[1], "workers": pct[2:]}}
    if batch_max > 1:
        out["mean_batch"] = round(counters["invocations"] / max(1, counters["batches"]), 1)
    return out


def function_status(state: Path) -> dict[str, Any]:
    """The function's counters from status.json, once rewritten (every 2 s)."""
    path = state / "status.json"
    first = json.loads(path.read_text())["time"]
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        st = json.loads(path.read_text())
        if st["time"] != first:
            return st["functions"]["classify"]
        time.sleep(0.1)
    raise TimeoutError("status.json not rewritten within 10 s")


def stream_figures(tmp: Path, args: argparse.Namespace, payloads: list[bytes],
                   raw: dict[str, float]) -> dict[str, Any]:
    """One message format: the in-process baselines and the function, un-batched and
    batched, each with its ratio to every baseline."""
    b = args.batch
    out: dict[str, Any] = {
        "in_process_b1_per_s": round(in_process(args.seconds, payloads, 1)),
        f"in_process_b{b}_per_s": round(in_process(args.seconds, payloads, b)),
    }
    runs = {"function": (1, 1), "function_batched": (1, b), "function_batched_2": (2, b)}
    for key, (instances, batch_max) in runs.items():
        (tmp / key).mkdir()
        got = out[key] = through_function(tmp / key, args.seconds, args.window, instances,
                                          payloads, batch_max)
        bases = {**raw, **{k: v for k, v in out.items() if k.endswith("_per_s")}}
        got["ratios"] = {k.removesuffix("_per_s"): round(got["inferences_per_s"] / v, 2)
                         for k, v in bases.items()}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=1000, help="invocations per overhead measurement")
    ap.add_argument("--window", type=int, default=256, help="inference requests in flight")
    ap.add_argument("--batch", type=int, default=64,
                    help="batch_max of the batched function, and the raw batch size")
    ap.add_argument("--seconds", type=float, default=3.0, help="each inference measurement")
    ap.add_argument("--formats", default="json,binary", help="message formats to stream")
    ap.add_argument("--skip-overhead", action="store_true")
    ap.add_argument("--json", help="write the figures here too")
    args = ap.parse_args()
    from sklearn.datasets import load_digits  # bundled data, no download

    images = (load_digits().data / 16.0).astype(np.float32)
    formats = {"json": [json.dumps({"pixels": img.tolist()}).encode() for img in images],
               "binary": [img.astype("<f4").tobytes() for img in images]}
    results: dict[str, Any] = {"cpus": os.cpu_count(), "python": sys.version.split()[0]}
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        if not args.skip_overhead:
            (tmp / "overhead").mkdir()
            results["overhead"] = bench_overhead(tmp / "overhead", args.n)
        raw = {"raw_onnxruntime_b1_per_s": round(raw_onnxruntime(args.seconds, images, 1)),
               f"raw_onnxruntime_b{args.batch}_per_s":
                   round(raw_onnxruntime(args.seconds, images, args.batch))}
        inference: dict[str, Any] = dict(raw)
        for name in args.formats.split(","):
            (tmp / name).mkdir()
            inference[name] = stream_figures(tmp / name, args, formats[name], raw)
        results["inference"] = inference
    print(json.dumps(results, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
