"""The HTTP front end against gRPC on one server, in one run, the two sides alternating:

- images: distinct 640x480 JPEGs, 16 concurrent clients, one image per request; HTTP sends each as
  a base64 data URI and reads the JSON float response (what an OpenAI-style client does);
- one short text query at concurrency 1: p50 latency on each front end, the two sides taking
  turns request by request (`--pairs`), so both see the same load on the machine.

As its own load process (the server's CPU is not the client's Python):

    python -m bench.http --port PORT --model M --concurrency C --seconds S --images DIR | --texts FILE

prints the same JSON object as bench.load (images_per_s is items/s), and

    python -m bench.http --port PORT --grpc ADDR --model M --pairs N --texts FILE

the p50 of each side over N alternating single-text requests.
"""

from __future__ import annotations

import argparse
import base64
import http.client
import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import grpc
import numpy as np

from bench.load import drive
from bench.service import run_load
from embedder.v1 import embedder_pb2 as pb
from embedder.v1 import embedder_pb2_grpc as pb_grpc
from tests.support.images import photo_jpeg
from tests.support.processes import ServerProcess

IMAGES = 200
CONCURRENCY = 16
ROUNDS = 4  # each side measured this many times, alternating (the machine's speed drifts)
SHORT_QUERY = "a photo of a dog"
QUERY_PAIRS = 300  # per round: gRPC and HTTP requests of the short query, taking turns


class HttpStatus(grpc.RpcError):
    """A non-200 answer, shaped as bench.load.drive counts failures (by `code().name`)."""

    def __init__(self, status: int) -> None:
        super().__init__()
        self.status = status

    def code(self) -> Any:
        return type("Code", (), {"name": f"HTTP_{self.status}"})()


def _connect(port: int) -> http.client.HTTPConnection:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    connection.connect()
    # http.client writes headers and body in two sends: without NODELAY, Nagle holds the body
    # until the server's delayed ACK (40 ms). httpx (the openai SDK) sets it too.
    connection.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return connection


def _caller(port: int) -> Any:
    """A per-thread keep-alive connection; each call posts one prepared body and parses the answer."""
    local = threading.local()

    def call(items: list[bytes]) -> object:
        connection = getattr(local, "connection", None)
        if connection is None:
            connection = local.connection = _connect(port)
        (body,) = items
        connection.request("POST", "/v1/embeddings", body, {"content-type": "application/json"})
        response = connection.getresponse()
        data = response.read()
        if response.status != 200:
            raise HttpStatus(response.status)
        return json.loads(data)["data"]

    return call


def _bodies(args: argparse.Namespace) -> list[bytes]:
    """Request bodies built once: the client's base64 encoding is not what is measured."""
    if args.texts is not None:
        texts = args.texts.read_text(encoding="utf-8").splitlines()
        return [
            json.dumps({"model": args.model, "input": t, "encoding_format": "float"}).encode() for t in texts
        ]
    uris = [
        "data:image/jpeg;base64," + base64.b64encode(p.read_bytes()).decode()
        for p in sorted(args.images.glob("*.jpg"))
    ]
    return [
        json.dumps({"model": args.model, "input": [u], "encoding_format": "float"}).encode() for u in uris
    ]


def paired_query(port: int, address: str, model: str, text: str, pairs: int) -> dict[str, float]:
    """One text, gRPC and HTTP in turn (the order swapping every pair), one request at a time."""
    stub = pb_grpc.EmbedderStub(grpc.insecure_channel(address))
    connection = _connect(port)
    body = json.dumps({"model": model, "input": text, "encoding_format": "float"}).encode()
    grpc_request = pb.EmbedTextRequest(model=model, texts=[text], normalize=True)

    def over_grpc() -> None:
        stub.EmbedText(grpc_request, timeout=60)

    def over_http() -> None:
        connection.request("POST", "/v1/embeddings", body, {"content-type": "application/json"})
        response = connection.getresponse()
        json.loads(response.read())
        assert response.status == 200, response.status

    times: dict[str, list[float]] = {"grpc": [], "http": []}
    for i in range(pairs + 5):  # the first five warm both paths up
        sides = [("grpc", over_grpc), ("http", over_http)]
        for side, call in sides if i % 2 == 0 else sides[::-1]:
            started = time.perf_counter()
            call()
            if i >= 5:
                times[side].append((time.perf_counter() - started) * 1000)
    difference = np.subtract(times["http"], times["grpc"])
    return {
        "pairs": pairs,
        "grpc_p50_ms": float(np.median(times["grpc"])),
        "http_p50_ms": float(np.median(times["http"])),
        "pair_difference_p50_ms": float(np.median(difference)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.http")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--model", required=True)
    parser.add_argument("--concurrency", type=int, default=1)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument("--grpc", help="with --pairs: the same server's gRPC address")
    parser.add_argument("--pairs", type=int, help="alternate gRPC and HTTP single-text requests")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--images", type=Path)
    source.add_argument("--texts", type=Path)
    args = parser.parse_args()
    if args.pairs:
        text = args.texts.read_text(encoding="utf-8").splitlines()[0]
        print(json.dumps(paired_query(args.port, args.grpc, args.model, text, args.pairs)))
        return
    args.per_request, args.max_requests = 1, 1_000_000
    print(json.dumps(drive(_caller(args.port), args, _bodies(args))))


def run_http_load(
    port: int,
    model: str,
    source: Path,
    concurrency: int,
    seconds: float,
    warmup: float,
    texts: bool,
    *extra: str,
) -> dict[str, object]:
    command = [
        sys.executable,
        "-m",
        "bench.http",
        "--port",
        str(port),
        "--model",
        model,
        "--concurrency",
        str(concurrency),
        "--seconds",
        str(seconds),
        "--warmup",
        str(warmup),
        "--texts" if texts else "--images",
        str(source),
        *extra,
    ]
    out = subprocess.run(command, check=True, capture_output=True, text=True, env=os.environ.copy())
    return json.loads(out.stdout.strip().splitlines()[-1])


@contextmanager
def http_server(models_dir: Path, log_path: Path) -> Iterator[tuple[ServerProcess, int]]:
    """`embedder serve --preload`, SERVING; its gRPC address and HTTP port (a free one)."""
    server = ServerProcess(models_dir, log_path, "--preload", "--log-level", "WARNING", metrics=True)
    try:
        server.wait_serving(timeout=120.0)
        yield server, server.http_port
    finally:
        server.stop(timeout=30.0)


def bench_http(models_dir: Path, model: str, scratch: Path, seconds: float, smoke: bool) -> dict[str, object]:
    """Both front ends of one `embedder serve` over `model` alone, alternating ROUNDS times."""
    served = scratch / "http-served"
    served.mkdir()
    (served / model).symlink_to((models_dir / model).resolve())
    frames = scratch / "http-frames"
    frames.mkdir()
    for seed in range(16 if smoke else IMAGES):
        (frames / f"{seed:04d}.jpg").write_bytes(photo_jpeg(640, 480, 20_000 + seed))
    (scratch / "http-query.txt").write_text(SHORT_QUERY + "\n", encoding="utf-8")
    rounds = 1 if smoke else ROUNDS
    piece, warmup = seconds * 0.75, min(1.0, seconds / 4)
    out: dict[str, Any] = {"model": model, "images": len(list(frames.glob("*.jpg"))), "rounds": []}
    with http_server(served, scratch / "http-server.log") as (server, port):
        for r in range(rounds):
            row: dict[str, object] = {}
            for side in ("grpc", "http") if r % 2 == 0 else ("http", "grpc"):
                if side == "grpc":
                    row["grpc_c16"] = run_load(server.address, model, frames, CONCURRENCY, 1, piece, warmup)
                else:
                    row["http_c16"] = run_http_load(port, model, frames, CONCURRENCY, piece, warmup, False)
            pairs = ("--grpc", server.address, "--pairs", str(QUERY_PAIRS // (10 if smoke else 1)))
            query = scratch / "http-query.txt"
            row["query"] = run_http_load(port, model, query, 1, piece, warmup, True, *pairs)
            out["rounds"].append(row)
    for key in ("grpc_c16", "http_c16"):
        out[f"{key}_images_per_s"] = _mean(out["rounds"], key, "images_per_s")
    for key in ("grpc_p50_ms", "http_p50_ms", "pair_difference_p50_ms"):
        out[f"query_{key}"] = _mean(out["rounds"], "query", key)
    out["http_over_grpc_rate"] = out["http_c16_images_per_s"] / out["grpc_c16_images_per_s"]
    out["query_p50_http_minus_grpc_ms"] = out["query_http_p50_ms"] - out["query_grpc_p50_ms"]
    out["load_average"] = os.getloadavg()
    return out


def _mean(rounds: list[dict[str, Any]], key: str, field: str) -> float:
    return sum(float(r[key][field]) for r in rounds) / len(rounds)


def http_section(h: dict[str, Any]) -> list[str]:
    """The report's section (bench/report.py)."""
    rate, extra = h["http_over_grpc_rate"], h["query_p50_http_minus_grpc_ms"]
    lines = [f"### HTTP front end beside gRPC ({h['model']}, one server, sides alternating)", ""]
    lines += [
        "| round | gRPC c16 images/s | HTTP c16 images/s | gRPC query p50 ms | HTTP query p50 ms | pair difference p50 ms |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    for i, r in enumerate(h["rounds"], 1):
        q = r["query"]
        lines.append(
            f"| {i} | {r['grpc_c16']['images_per_s']:.2f} | {r['http_c16']['images_per_s']:.2f} | "
            f"{q['grpc_p50_ms']:.2f} | {q['http_p50_ms']:.2f} | {q['pair_difference_p50_ms']:+.2f} |"
        )
    lines += [
        "",
        f"{h['images']} distinct 640x480 JPEGs, {CONCURRENCY} clients, one image per request; HTTP sends a base64",
        "data URI and reads the JSON float response. The query is one short text at concurrency 1, gRPC",
        f"and HTTP requests taking turns ({h['rounds'][0]['query']['pairs']} pairs a round). Load average after the run: "
        + ", ".join(f"{v:.1f}" for v in h.get("load_average", ()))
        + ".",
        "",
        "| ratio | value | target |",
        "|---|---:|---|",
        f"| HTTP images/s over gRPC images/s | {rate:.3f} | >= 0.9: {'met' if rate >= 0.9 else 'NOT met'} |",
        f"| query p50, HTTP minus gRPC | {extra:+.2f} ms | <= +1 ms: {'met' if extra <= 1.0 else 'NOT met'} |",
        "",
    ]
    return lines


if __name__ == "__main__":
    main()
