"""`embedder serve` as a real subprocess on 127.0.0.1, for tests where the process itself is
under test: signals, exit codes, resident memory, log output."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

REPO = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def rss_mb(pid: int) -> float:
    """VmRSS of a live process, in MiB (from /proc, Linux only)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


def health_status(channel: grpc.Channel, timeout: float = 1.0) -> str:
    """SERVING / NOT_SERVING, or the gRPC status name when the check itself fails (UNAVAILABLE...)."""
    try:
        response = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=timeout)
    except grpc.RpcError as exc:
        return str(exc.code().name)
    return str(health_pb2.HealthCheckResponse.ServingStatus.Name(response.status))


class ServerProcess:
    """`python -m embedder serve --address 127.0.0.1:<free> ...`; stderr+stdout into `log_path`.

    Any EMBEDDER_* variable of the calling shell is dropped so only the given flags apply."""

    def __init__(self, models_dir: Path, log_path: Path, *flags: str) -> None:
        self.address = f"127.0.0.1:{free_port()}"
        self.log_path = log_path
        argv = [
            sys.executable,
            "-m",
            "embedder",
            "serve",
            "--address",
            self.address,
            "--models-dir",
            str(models_dir),
            *flags,
        ]
        env = {k: v for k, v in os.environ.items() if not k.startswith("EMBEDDER_")}
        with log_path.open("wb") as log:
            self.process = subprocess.Popen(argv, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, env=env)

    @property
    def pid(self) -> int:
        return self.process.pid

    def log(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def wait_serving(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        with grpc.insecure_channel(self.address) as channel:
            while time.monotonic() < deadline:
                if self.process.poll() is not None:
                    raise RuntimeError(f"server exited with {self.process.returncode}:\n{self.log()}")
                if health_status(channel) == "SERVING":
                    return
                time.sleep(0.1)
        raise RuntimeError(f"server not SERVING after {timeout} s:\n{self.log()}")

    def terminate(self) -> None:
        self.process.send_signal(signal.SIGTERM)

    def stop(self) -> None:
        """SIGTERM, then SIGKILL if it is still there after 20 s (teardown must never hang)."""
        if self.process.poll() is None:
            self.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(20)
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)
