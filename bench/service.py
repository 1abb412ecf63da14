"""This service measured from outside: a real `embedder serve` process, a separate load process."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class ServerProcess:
    """`embedder serve --preload` in its own process; `ready_seconds` is spawn -> SERVING."""

    def __init__(self, models_dir: Path, *extra: str) -> None:
        self.address = f"127.0.0.1:{free_port()}"
        started = time.perf_counter()
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "embedder",
                "serve",
                "--preload",
                "--address",
                self.address,
                "--models-dir",
                str(models_dir),
                "--log-level",
                "WARNING",
                *extra,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.ready_seconds = self._wait_serving(started)

    def _wait_serving(self, started: float, timeout: float = 120.0) -> float:
        channel = grpc.insecure_channel(self.address)
        stub = health_pb2_grpc.HealthStub(channel)
        try:
            while time.perf_counter() - started < timeout:
                if self.process.poll() is not None:
                    raise RuntimeError(
                        f"server exited: {self.process.stderr.read() if self.process.stderr else ''}"
                    )
                try:
                    status = stub.Check(health_pb2.HealthCheckRequest(), timeout=0.5).status
                    if status == health_pb2.HealthCheckResponse.SERVING:
                        return time.perf_counter() - started
                except grpc.RpcError:
                    pass
                time.sleep(0.01)
        finally:
            channel.close()
        raise TimeoutError("server did not become SERVING")

    def rss_mb(self) -> float:
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        return float("nan")

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()


def run_load(
    address: str,
    model: str,
    images_dir: Path,
    concurrency: int,
    per_request: int,
    seconds: float,
    warmup: float,
) -> dict[str, object]:
    """One load run from a separate client process."""
    command = [
        sys.executable,
        "-m",
        "bench.load",
        "--server",
        address,
        "--model",
        model,
        "--concurrency",
        str(concurrency),
        "--per-request",
        str(per_request),
        "--seconds",
        str(seconds),
        "--warmup",
        str(warmup),
        "--images",
        str(images_dir),
    ]
    out = subprocess.run(command, check=True, capture_output=True, text=True, env=os.environ.copy())
    return json.loads(out.stdout.strip().splitlines()[-1])
