"""Real `embedder serve` processes for the ops tests, on 127.0.0.1 ports of their own."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
import urllib.request
from collections.abc import Sequence
from pathlib import Path

import grpc
import pytest
from prometheus_client.parser import text_string_to_metric_families

from embedder.client import EmbedderClient

REPO = Path(__file__).resolve().parents[2]
TINY_MODEL = "tiny-clip"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def clean_env(**overrides: str) -> dict[str, str]:
    """This process's environment without any EMBEDDER_* (a developer's shell must not leak in)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("EMBEDDER_")}
    env.update(overrides)
    return env


class ServerProcess:
    """One `embedder serve` subprocess on 127.0.0.1 with its own metrics port; log in a file."""

    def __init__(
        self, command: Sequence[str], models_dir: Path, log_path: Path, env: dict[str, str] | None = None
    ) -> None:
        self.port, self.metrics_port = free_port(), free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.log_path = log_path
        argv = [
            *command,
            "--address",
            self.address,
            "--models-dir",
            str(models_dir),
            "--metrics-address",
            f"127.0.0.1:{self.metrics_port}",
        ]
        with log_path.open("wb") as log:
            self.process = subprocess.Popen(
                argv, stdout=log, stderr=subprocess.STDOUT, env=env or clean_env()
            )

    def log(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def wait_serving(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        with EmbedderClient(self.address, timeout=1.0, retries=0) as client:
            while time.monotonic() < deadline:
                if self.process.poll() is not None:
                    pytest.fail(f"server exited with {self.process.returncode}:\n{self.log()}")
                with contextlib.suppress(grpc.RpcError):  # UNAVAILABLE: not listening yet
                    if client.health() == "SERVING":
                        return
                time.sleep(0.1)
        pytest.fail(f"server not SERVING after {timeout} s:\n{self.log()}")

    def metric(self, name: str, **labels: str) -> float:
        """The sum of a metric's samples matching `labels`, from the server's own /metrics."""
        url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=5) as response:
            text = response.read().decode()
        return sum(
            sample.value
            for family in text_string_to_metric_families(text)
            for sample in family.samples
            if sample.name == name and labels.items() <= sample.labels.items()
        )

    def requests_ok(self, model: str = TINY_MODEL) -> int:
        """Embed calls this server answered OK (`embedder_requests_total{model, code="OK"}`)."""
        return int(self.metric("embedder_requests_total", model=model, code="OK"))

    def terminate(self, timeout: float = 30.0) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            pytest.fail(f"server ignored SIGTERM for {timeout} s:\n{self.log()}")
