"""Soak test for `embedder serve`: steady mixed traffic for minutes, resident memory watched.

Starts `python -m embedder serve` on a free 127.0.0.1 port over a models directory, then drives
CONCURRENCY closed-loop callers for MINUTES with a mix of valid images (JPEG, PNG, WebP, GIF of
varied sizes, 1-4 per request) and invalid ones (random bytes, truncated JPEGs, PDFs, a PNG whose
header claims 50000x50000). Every 5 s it samples the server's VmRSS from /proc (Linux only).

At the end it prints the answers by status, latency percentiles, and the RSS drift: the change
from the median of the first minute to the median of the last minute, in percent. A leak shows
as a drift that keeps growing with the duration. Allocator and thread-arena warm-up fill most of
the first minute (RSS climbs for ~40 s), so on short runs that warm-up dominates the figure:
`--warmup-s 60` starts the first window after it.

Not part of the test suite (it takes minutes by design). Examples:

    python tools/soak.py --models-dir models                      # 10 minutes, 8 callers
    python tools/soak.py --models-dir /tmp/tiny --minutes 2 --concurrency 4 --model tiny-clip
    python tools/soak.py --models-dir models --server-arg=--max-batch-size --server-arg=32

Exit status: 0; 1 if any answer was other than OK / INVALID_ARGUMENT / RESOURCE_EXHAUSTED, the
server died, or the drift exceeded --max-drift-pct (when given).
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import tempfile
import threading
import time
import zlib
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from embedder.v1 import embedder_pb2 as pb
from embedder.v1 import embedder_pb2_grpc as pb_grpc
from embedder.wire import channel_options
from tests.support.images import encode, picture, png
from tests.support.processes import ServerProcess

EXPECTED = {"OK", "INVALID_ARGUMENT", "RESOURCE_EXHAUSTED"}


# --- traffic ---------------------------------------------------------------------------------


FORMATS = [("JPEG", {"quality": 85}), ("PNG", {}), ("WEBP", {"quality": 80}), ("GIF", {})]


def valid_images(rng: np.random.Generator, count: int = 24) -> list[bytes]:
    """Noisy gradients of varied sizes and formats: decoders and resizes of many shapes."""
    images = []
    for i in range(count):
        width, height = (int(n) for n in rng.integers(32, 1024, 2))
        seed = int(rng.integers(1 << 31))
        fmt, params = FORMATS[i % len(FORMATS)]
        images.append(encode(picture(width, height, seed, "P" if fmt == "GIF" else "RGB"), fmt, **params))
    return images


def invalid_images(rng: np.random.Generator, valid: list[bytes]) -> list[bytes]:
    return [
        rng.integers(0, 256, 4096, dtype=np.uint8).tobytes(),
        valid[0][: len(valid[0]) // 2],  # truncated JPEG
        b"%PDF-1.4\n%%EOF\n",
        png(50_000, 50_000, zlib.compress(bytes(64))),  # a header claiming 2.5 Gpx
        b"",
    ]


@dataclass
class Traffic:
    valid: list[bytes]
    invalid: list[bytes]
    invalid_fraction: float

    def request(self, model: str, rng: random.Random) -> pb.EmbedRequest:
        images = [rng.choice(self.valid) for _ in range(rng.randint(1, 4))]
        if rng.random() < self.invalid_fraction:
            images[rng.randrange(len(images))] = rng.choice(self.invalid)
        return pb.EmbedRequest(model=model, images=[pb.Image(data=d) for d in images])


# --- the server ------------------------------------------------------------------------------


def start_server(models_dir: Path, extra: list[str], log_path: Path) -> ServerProcess:
    """`embedder serve --preload` over `models_dir`, SERVING; exits the tool if it never is."""
    server = ServerProcess(models_dir, log_path, "--preload", "--log-level", "WARNING", *extra)
    try:
        server.wait_serving(timeout=120.0, poll_s=0.2)
    except RuntimeError as exc:
        server.stop()
        raise SystemExit(f"soak: {exc}") from None
    return server


def first_model(address: str) -> str:
    with grpc.insecure_channel(address) as channel:
        models = pb_grpc.EmbedderStub(channel).ListModels(pb.ListModelsRequest(), timeout=10).models
    serving = [m.info.name for m in models if m.state == pb.MODEL_STATE_SERVING]
    if not serving:
        raise SystemExit("soak: no model is SERVING (export one first)")
    return serving[0]


# --- the run ---------------------------------------------------------------------------------


@dataclass
class Tally:
    codes: Counter[str] = field(default_factory=Counter)
    latencies: list[float] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, code: str, seconds: float) -> None:
        with self.lock:
            self.codes[code] += 1
            if code == "OK":
                self.latencies.append(seconds)


def caller(address: str, model: str, traffic: Traffic, until: float, tally: Tally, seed: int) -> None:
    rng = random.Random(seed)
    with grpc.insecure_channel(address, options=channel_options(64 << 20, round_robin=False)) as channel:
        stub = pb_grpc.EmbedderStub(channel)
        while time.monotonic() < until:
            started = time.perf_counter()
            try:
                stub.Embed(traffic.request(model, rng), timeout=30.0)
                code = "OK"
            except grpc.RpcError as exc:
                code = exc.code().name
            tally.add(code, time.perf_counter() - started)
            if code == "UNAVAILABLE":
                time.sleep(0.1)


def median_between(samples: list[tuple[float, float]], start: float, end: float) -> float:
    values = [rss for t, rss in samples if start <= t <= end]
    return statistics.median(values) if values else float("nan")


def summarise(
    samples: list[tuple[float, float]], tally: Tally, seconds: float, window: float, warmup: float
) -> dict[str, object]:
    first = median_between(samples, warmup, warmup + window)
    last = median_between(samples, seconds - window, seconds)
    latencies = sorted(tally.latencies) or [float("nan")]
    return {
        "seconds": round(seconds, 1),
        "answers": dict(tally.codes),
        "requests_per_s": round(sum(tally.codes.values()) / seconds, 1),
        "latency_ms_p50": round(latencies[len(latencies) // 2] * 1000, 1),
        "latency_ms_p99": round(latencies[int(len(latencies) * 0.99)] * 1000, 1),
        "rss_mib_first_window_median": round(first, 1),
        "rss_mib_last_window_median": round(last, 1),
        "rss_mib_max": round(max(rss for _, rss in samples), 1),
        "window_s": round(window, 1),
        "warmup_s": round(warmup, 1),
        "rss_drift_pct": round((last - first) / first * 100, 2),
    }


def run(args: argparse.Namespace) -> int:
    rng = np.random.default_rng(args.seed)
    valid = valid_images(rng)
    traffic = Traffic(valid, invalid_images(rng, valid), args.invalid_fraction)
    log_path = Path(tempfile.mkdtemp(prefix="soak-")) / "server.log"
    server = start_server(args.models_dir, args.server_arg, log_path)
    process, address = server.process, server.address
    try:
        model = args.model or first_model(address)
        seconds = args.minutes * 60
        print(
            f"soak: {model} on {address} (pid {process.pid}), {args.concurrency} callers for {seconds:.0f} s; "
            f"server log {log_path}",
            flush=True,
        )
        tally = Tally()
        started = time.monotonic()
        until = started + seconds
        threads = [
            threading.Thread(
                target=caller, args=(address, model, traffic, until, tally, args.seed + i), daemon=True
            )
            for i in range(args.concurrency)
        ]
        for thread in threads:
            thread.start()
        samples: list[tuple[float, float]] = []
        while (now := time.monotonic()) < until and process.poll() is None:
            samples.append((now - started, server.rss_mib()))
            with tally.lock:
                codes = dict(tally.codes)
            print(f"  t={now - started:6.0f} s  rss={samples[-1][1]:7.1f} MiB  {codes}", flush=True)
            time.sleep(min(args.sample_s, max(0.0, until - time.monotonic())))
        if process.poll() is None:
            samples.append((time.monotonic() - started, server.rss_mib()))
        for thread in threads:
            thread.join(60)
        if process.poll() is not None:
            print(f"soak: the server died with exit code {process.returncode}; see {log_path}")
            return 1
        warmup = min(args.warmup_s, seconds / 2)
        summary = summarise(samples, tally, seconds, min(args.window_s, (seconds - warmup) / 2), warmup)
    finally:
        server.stop(timeout=60.0)
    summary["exit_code"] = process.returncode
    print(json.dumps(summary, indent=2))
    print(
        f"RSS drift (median of {summary['window_s']} s after {summary['warmup_s']} s -> median of the last "
        f"{summary['window_s']} s): {summary['rss_drift_pct']:+.2f} %"
    )
    unexpected = set(tally.codes) - EXPECTED
    if unexpected:
        print(f"soak: unexpected statuses {sorted(unexpected)}; see {log_path}")
    too_much = args.max_drift_pct is not None and float(summary["rss_drift_pct"]) > args.max_drift_pct  # type: ignore[arg-type]
    return 1 if unexpected or too_much or process.returncode != 0 else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models-dir", type=Path, required=True, help="models directory to serve")
    parser.add_argument("--model", help="model to call (default: the first SERVING one)")
    parser.add_argument("--minutes", type=float, default=10.0, help="duration of the load (default 10)")
    parser.add_argument("--concurrency", type=int, default=8, help="closed-loop callers (default 8)")
    parser.add_argument("--invalid-fraction", type=float, default=0.2, help="requests with an invalid image")
    parser.add_argument("--sample-s", type=float, default=5.0, help="RSS sampling interval (default 5 s)")
    parser.add_argument(
        "--window-s", type=float, default=60.0, help="first/last window for the drift (default 60 s)"
    )
    parser.add_argument(
        "--warmup-s",
        type=float,
        default=0.0,
        help="leave the first seconds out of the first window (allocator and arena warm-up)",
    )
    parser.add_argument("--max-drift-pct", type=float, help="exit 1 if the drift is above this")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--server-arg", action="append", default=[], help="extra `embedder serve` flag (repeatable)"
    )
    return run(parser.parse_args())


if __name__ == "__main__":
    raise SystemExit(main())
