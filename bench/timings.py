"""Speeds that `make test` used to hold to wall-clock budgets, measured here instead (issue 26):
the tests keep the property (an order of events, a count, a wide bound), these give the figures.

- export: `python -m export clip ... --random-init` (export + the full parity gate), wall and CPU;
- idle CPU: what a session's ORT threads burn in idle gaps after runs, served settings against
  ORT's default spinning (tests/engine/test_runtime.py keeps the thread states);
- shutdown: SIGTERM to exit of a serve process with an open health Watch, and with an open
  reflection stream (tests/hardening/test_shutdown.py keeps the order of events);
- overload: single-call latency idle and right after a load at twice the capacity
  (tests/hardening/test_load.py keeps the shed load, the bounded memory and the empty queue).

The cold start to SERVING is measured by bench/__main__.py itself (`cold_start_clip_s`).
"""

from __future__ import annotations

import os
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from embedder.client import build_request
from embedder.v1 import embedder_pb2 as pb
from embedder.v1 import embedder_pb2_grpc as pb_grpc
from tests.support.graphs import TWO_MATMULS_SCRIPT
from tests.support.images import photo_jpeg
from tests.support.processes import ServerProcess

CALL_TIMEOUT_S = 10.0

# Two 512 x 512 MatMuls written to argv[1]; prints the CPU seconds the process used in ten idle
# gaps of 0.1 s, each right after a run: a session from open_session, then ORT's default spinning.
IDLE_AFTER_RUNS = (
    TWO_MATMULS_SCRIPT
    + """
def idle_cpu_after_runs(session):
    session.run(None, {"x": x})
    used = 0.0
    for _ in range(10):
        session.run(None, {"x": x})
        before = time.process_time()
        time.sleep(0.1)
        used += time.process_time() - before
    return used
options = ort.SessionOptions()
options.intra_op_num_threads = 2
options.add_session_config_entry("session.intra_op.allow_spinning", "1")
control = ort.InferenceSession(sys.argv[1], sess_options=options, providers=["CPUExecutionProvider"])
print(idle_cpu_after_runs(open_session(sys.argv[1], 2)), idle_cpu_after_runs(control))
"""
)


def _children_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def export_seconds(family: str, source: str, scratch: Path, *flags: str) -> dict[str, object]:
    """One random-init export through the CLI, gate included: wall and CPU seconds, and the load
    average at the end (other work on the machine only adds to the wall time)."""
    out = scratch / f"export-{source.replace('/', '-')}"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    command = [sys.executable, "-m", "export", family, source, "--random-init", "--out", str(out), *flags]
    cpu_before, started = _children_cpu_seconds(), time.perf_counter()
    subprocess.run(command, check=True, capture_output=True, text=True, env=env)
    return {
        "source": source,
        "wall_s": time.perf_counter() - started,
        "cpu_s": _children_cpu_seconds() - cpu_before,
        "load_average": os.getloadavg()[0],
    }


def idle_cpu_seconds() -> dict[str, float]:
    """CPU seconds in 1 s of idle gaps after runs: the served session and the spinning control."""
    with tempfile.TemporaryDirectory() as tmp:
        out = subprocess.run(
            [sys.executable, "-c", IDLE_AFTER_RUNS, str(Path(tmp) / "matmuls.onnx")],
            check=True,
            capture_output=True,
            text=True,
        )
    served, control = (float(f) for f in out.stdout.split())
    return {"served": served, "spinning_control": control}


def _sigterm_seconds(server: ServerProcess, until_streaming: list[tuple[float, str]], grace: float) -> float:
    """SIGTERM once the stream has delivered something: the signal's time.monotonic(); waits
    for the exit."""
    deadline = time.monotonic() + 10
    while not until_streaming and time.monotonic() < deadline:
        time.sleep(0.01)
    signalled = time.monotonic()
    server.sigterm()
    server.process.wait(grace + 10)
    return signalled


def _read(stream: Iterator[object], seen: list[tuple[float, str]]) -> None:
    """Each message of a stream (or the status ending it), with its time.monotonic()."""
    try:
        for message in stream:
            seen.append((time.monotonic(), str(getattr(message, "status", "message"))))
    except grpc.RpcError as exc:
        seen.append((time.monotonic(), exc.code().name))


def shutdown_seconds(models_dir: Path, scratch: Path, grace: float = 8.0) -> dict[str, float]:
    """SIGTERM -> exit of an idle `embedder serve`: with an open health Watch (gRPC client-side
    health checking keeps one), and with an open reflection stream (as grpcurl keeps)."""
    out: dict[str, float] = {"grace_s": grace}
    watch = ServerProcess(models_dir, scratch / "shutdown-watch.log", "--shutdown-grace-s", str(grace))
    watch.wait_serving()
    seen: list[tuple[float, str]] = []
    with grpc.insecure_channel(watch.address) as channel:
        stream = health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest(), timeout=60)
        threading.Thread(target=_read, args=(stream, seen), daemon=True).start()
        signalled = _sigterm_seconds(watch, seen, grace)
        out["health_watch_open_s"] = time.monotonic() - signalled
        not_serving = str(health_pb2.HealthCheckResponse.NOT_SERVING)
        flips = [t - signalled for t, status in seen if status == not_serving]
        out["not_serving_after_s"] = flips[0] if flips else float("nan")
    watch.stop()

    reflecting = ServerProcess(
        models_dir, scratch / "shutdown-reflection.log", "--shutdown-grace-s", str(grace)
    )
    reflecting.wait_serving()
    release, answers = threading.Event(), list[tuple[float, str]]()

    def requests() -> Iterator[reflection_pb2.ServerReflectionRequest]:
        yield reflection_pb2.ServerReflectionRequest(list_services="")
        release.wait(30)

    with grpc.insecure_channel(reflecting.address) as channel:
        stream = reflection_pb2_grpc.ServerReflectionStub(channel).ServerReflectionInfo(
            requests(), timeout=60
        )
        threading.Thread(target=_read, args=(stream, answers), daemon=True).start()
        signalled = _sigterm_seconds(reflecting, answers, grace)
        out["reflection_stream_open_s"] = time.monotonic() - signalled
        release.set()
    reflecting.stop()
    return out


def _median_latency(stub: pb_grpc.EmbedderStub, request: pb.EmbedRequest, calls: int) -> float:
    times = []
    for _ in range(calls):
        started = time.perf_counter()
        stub.Embed(request, timeout=CALL_TIMEOUT_S)
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def _closed_loop_rate(
    stub: pb_grpc.EmbedderStub, request: pb.EmbedRequest, seconds: float, callers: int = 8
) -> float:
    done = [0] * callers
    until = time.monotonic() + seconds

    def caller(index: int) -> None:
        while time.monotonic() < until:
            stub.Embed(request, timeout=CALL_TIMEOUT_S)
            done[index] += 1

    threads = [threading.Thread(target=caller, args=(i,)) for i in range(callers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(seconds + 3 * CALL_TIMEOUT_S)
    return sum(done) / seconds


def _open_loop(
    stub: pb_grpc.EmbedderStub, request: pb.EmbedRequest, rate: float, seconds: float
) -> dict[str, object]:
    """Calls sent at `rate` per second whatever the answers; the statuses they ended with."""
    codes: Counter[str] = Counter()
    calls = []
    started = time.monotonic()
    sent = 0
    while (now := time.monotonic()) - started < seconds:
        due = started + sent / rate
        if now < due:
            time.sleep(min(due - now, 0.005))
            continue
        calls.append(stub.Embed.future(request, timeout=CALL_TIMEOUT_S))
        sent += 1
    offered = sent / (time.monotonic() - started)
    for call in calls:
        try:
            call.result(timeout=CALL_TIMEOUT_S + 30)
            codes["OK"] += 1
        except grpc.RpcError as exc:
            codes[exc.code().name] += 1
    return {"offered_per_s": offered, "codes": dict(codes)}


def overload_recovery(models_dir: Path, model: str, scratch: Path, seconds: float) -> dict[str, object]:
    """Single-call latency (median of 30) idle, then capacity (8 callers), `seconds` of open-loop
    load at twice it, then the single-call latency again: how fast a shedding server is back."""
    server = ServerProcess(
        models_dir,
        scratch / "overload.log",
        "--preload",
        "--max-queue-images",
        "32",
        "--log-level",
        "WARNING",
    )
    request = build_request(model, [photo_jpeg(640, 480, 3)])
    try:
        server.wait_serving(timeout=120.0)
        with grpc.insecure_channel(server.address) as channel:
            stub = pb_grpc.EmbedderStub(channel)
            idle = _median_latency(stub, request, 30)
            capacity = _closed_loop_rate(stub, request, max(1.0, seconds / 4))
            load = _open_loop(stub, request, 2 * capacity, seconds)
            after = _median_latency(stub, request, 30)
    finally:
        server.stop(timeout=30.0)
    return {
        "model": model,
        "idle_p50_ms": idle * 1000,
        "capacity_calls_per_s": capacity,
        "load_s": seconds,
        **load,
        "after_load_p50_ms": after * 1000,
    }


def measure(models_dir: Path, clip: str, scratch: Path, smoke: bool) -> dict[str, object]:
    """Every figure of this module. The export is of the full-size CLIP (ViT-B/32); a smoke run
    exports the tiny architecture instead and loads the server for seconds, not half a minute."""
    export = (
        export_seconds("clip", "tiny-clip", scratch, "--no-huge")
        if smoke
        else export_seconds("clip", "openai/clip-vit-base-patch32", scratch)
    )
    served = scratch / "timings-models"
    served.mkdir(exist_ok=True)
    (served / clip).symlink_to((models_dir / clip).resolve())
    return {
        "export": export,
        "idle_cpu_s": idle_cpu_seconds(),
        "shutdown": shutdown_seconds(served, scratch),
        "overload": overload_recovery(served, clip, scratch, 4.0 if smoke else 30.0),
    }
