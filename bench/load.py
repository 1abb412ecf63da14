"""Load generator, run as its own process so the client's CPU is not the server's Python:

    python -m bench.load --server ADDR --model M --concurrency C --per-request K --seconds S --images DIR
    python -m bench.load ... --texts FILE      # EmbedText, one text per line of FILE

Prints one JSON object: items (images or texts)/s, requests, p50/p99 latency (ms), errors by status.

images/s is the slope of completed images against completion time inside the window. Counting
completions in a fixed window would be off by up to one batch: with 8-image batches finishing
every ~0.45 s, a 15 s window catches 33 or 34 of them depending on phase, a +-3% error. The
slope of that staircase is its rate whatever the phase. The plain count is kept beside it.
"""

from __future__ import annotations

import argparse
import json
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import numpy as np

from embedder.client import build_request
from embedder.v1 import embedder_pb2 as pb
from embedder.v1 import embedder_pb2_grpc as pb_grpc
from embedder.wire import channel_options


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--server", required=True)
    parser.add_argument("--model", required=True)
    parser.add_argument("--concurrency", type=int, default=1)
    parser.add_argument("--per-request", type=int, default=1)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--warmup", type=float, default=1.0)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--images", type=Path, help="a folder of .jpg files: Embed")
    source.add_argument("--texts", type=Path, help="a file of texts, one per line: EmbedText")
    parser.add_argument("--max-requests", type=int, default=1_000_000)
    args = parser.parse_args()
    channel = grpc.insecure_channel(args.server, options=channel_options(256 << 20, round_robin=False))
    stub = pb_grpc.EmbedderStub(channel)
    if args.texts is not None:
        texts = args.texts.read_text(encoding="utf-8").splitlines()

        def call(items: list[str]) -> object:
            return stub.EmbedText(pb.EmbedTextRequest(model=args.model, texts=items), timeout=120)

        print(json.dumps(drive(call, args, texts)))
    else:
        images = [p.read_bytes() for p in sorted(args.images.glob("*.jpg"))]
        print(
            json.dumps(
                drive(lambda items: stub.Embed(build_request(args.model, items), timeout=120), args, images)
            )
        )


def drive(
    call: Callable[[list[Any]], object], args: argparse.Namespace, items: list[Any]
) -> dict[str, object]:
    lock = threading.Lock()
    latencies: list[float] = []
    completions: list[float] = []
    codes: Counter[str] = Counter()
    counter = iter(range(10**12))
    start = time.perf_counter()
    measure_from = start + args.warmup
    stop_at = measure_from + args.seconds

    def worker() -> None:
        while time.perf_counter() < stop_at:
            n = next(counter)
            if n >= args.max_requests:
                return
            batch = [items[(n * args.per_request + i) % len(items)] for i in range(args.per_request)]
            sent = time.perf_counter()
            try:
                call(batch)
                code = "OK"
            except grpc.RpcError as exc:
                code = exc.code().name
            done = time.perf_counter()
            if measure_from <= done <= stop_at:  # completions inside the window count
                with lock:
                    codes[code] += 1
                    if code == "OK":
                        completions.append(done)
                    if sent >= measure_from:
                        latencies.append(done - sent)

    threads = [threading.Thread(target=worker) for _ in range(args.concurrency)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    ok = codes.get("OK", 0)
    lat = np.array(latencies) * 1000 if latencies else np.array([np.nan])
    return {
        "concurrency": args.concurrency,
        "per_request": args.per_request,
        "seconds": args.seconds,
        "requests": int(sum(codes.values())),
        "images_per_s": completion_rate(completions, args.per_request, args.seconds),
        "images_per_s_counted": ok * args.per_request / args.seconds,
        "p50_ms": float(np.percentile(lat, 50)),
        "p99_ms": float(np.percentile(lat, 99)),
        "codes": dict(codes),
    }


def completion_rate(completions: list[float], per_request: int, seconds: float) -> float:
    """Least-squares slope of cumulative images over completion times (images/s)."""
    if len(set(completions)) < 3:
        return len(completions) * per_request / seconds
    times = np.sort(np.asarray(completions))
    cumulative = np.arange(1, len(times) + 1) * per_request
    return float(np.polyfit(times - times[0], cumulative, 1)[0])


if __name__ == "__main__":
    main()
