"""`embedder serve` as a real subprocess on 127.0.0.1, for where the process itself matters:
signals, exit codes, resident memory, log output, its /metrics, a load from another process."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client.parser import text_string_to_metric_families

from tests.support import REPO

SERVE = (sys.executable, "-m", "embedder", "serve")


def free_port() -> int:
    return free_ports(1)[0]


def free_ports(count: int) -> list[int]:
    """`count` distinct free ports: all held open while picked, so none is handed out twice."""
    with ExitStack() as stack:
        socks = [stack.enter_context(socket.socket()) for _ in range(count)]
        for sock in socks:
            sock.bind(("127.0.0.1", 0))
        return [int(sock.getsockname()[1]) for sock in socks]


def clean_env(**overrides: str) -> dict[str, str]:
    """This process's environment without any EMBEDDER_* (a developer's shell must not leak in)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("EMBEDDER_")}
    env.update(overrides)
    return env


def health_status(channel: grpc.Channel, timeout: float = 1.0) -> str:
    """SERVING / NOT_SERVING, or the gRPC status name when the check itself fails (UNAVAILABLE...)."""
    try:
        response = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=timeout)
    except grpc.RpcError as exc:
        return str(exc.code().name)
    return str(health_pb2.HealthCheckResponse.ServingStatus.Name(response.status))


class ServerProcess:
    """`embedder serve` (or `command`) on 127.0.0.1:<free port> over `models_dir`, stdout and
    stderr into `log_path`, in an environment with no EMBEDDER_* but `env`.

    The address and models dir are flags (they win over any EMBEDDER_* of `env`, such as an
    image's own), or with `via_env` EMBEDDER_* variables. `metrics` adds a /metrics port. HTTP
    listens on a free port of its own (`http_port`).
    """

    def __init__(
        self,
        models_dir: Path,
        log_path: Path,
        *flags: str,
        command: Sequence[str] = SERVE,
        env: Mapping[str, str] | None = None,
        metrics: bool = False,
        via_env: bool = False,
    ) -> None:
        # A port of its own for HTTP too: the default 8000 would make two servers collide.
        self.port, self.http_port, metrics_port = free_ports(3)
        self.address = f"127.0.0.1:{self.port}"
        self.metrics_port = metrics_port if metrics else None
        self.log_path = log_path
        settings = {
            "address": self.address,
            "models-dir": str(models_dir),
            "http-address": f"127.0.0.1:{self.http_port}",
        }
        if self.metrics_port is not None:
            settings["metrics-address"] = f"127.0.0.1:{self.metrics_port}"
        if via_env:  # `env` may still override them: a test of bad settings does
            variables = {f"EMBEDDER_{k.upper().replace('-', '_')}": v for k, v in settings.items()}
            environment, argv = clean_env(**{**variables, **(env or {})}), [*command, *flags]
        else:
            pinned = (part for k, v in settings.items() for part in (f"--{k}", v))
            environment, argv = clean_env(**(env or {})), [*command, *pinned, *flags]
        with log_path.open("wb") as log:
            self.process = subprocess.Popen(
                argv, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, env=environment
            )
        self.started = time.perf_counter()

    @property
    def pid(self) -> int:
        return self.process.pid

    def log(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def wait_serving(self, timeout: float = 60.0, poll_s: float = 0.1) -> float:
        """Seconds from spawn until health first answers SERVING; raises if it exits or times out."""
        with grpc.insecure_channel(self.address) as channel:
            while time.perf_counter() - self.started < timeout:
                if self.process.poll() is not None:
                    raise RuntimeError(f"server exited with {self.process.returncode}:\n{self.log()}")
                if health_status(channel) == "SERVING":
                    return time.perf_counter() - self.started
                time.sleep(poll_s)
        raise RuntimeError(f"server not SERVING after {timeout} s:\n{self.log()}")

    def rss_mib(self) -> float:
        """VmRSS of the live process, in MiB (from /proc, Linux only)."""
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        raise RuntimeError(f"no VmRSS for pid {self.pid}")

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

    def requests_ok(self, model: str) -> int:
        """Embed calls this server answered OK (`embedder_requests_total{model, code="OK"}`)."""
        return int(self.metric("embedder_requests_total", model=model, code="OK"))

    def sigterm(self) -> None:
        self.process.send_signal(signal.SIGTERM)

    def terminate(self, timeout: float = 30.0) -> int:
        """SIGTERM and the exit code; a server that ignores it for `timeout` s is killed, and
        that is an error."""
        if not self._exits_on_sigterm(timeout):
            self.process.kill()
            self.process.wait(10)
            raise RuntimeError(f"server ignored SIGTERM for {timeout} s:\n{self.log()}")
        return self.process.returncode

    def stop(self, timeout: float = 20.0) -> int:
        """SIGTERM, then SIGKILL if it is still there after `timeout` s (teardown must never
        hang); the exit code."""
        if not self._exits_on_sigterm(timeout):
            self.process.kill()
        return self.process.wait(10)

    def _exits_on_sigterm(self, timeout: float) -> bool:
        if self.process.poll() is None:
            self.sigterm()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(timeout)
        return self.process.poll() is not None


@contextmanager
def running(*servers: ServerProcess, timeout: float = 60.0) -> Iterator[list[ServerProcess]]:
    """The servers, all SERVING inside the block; each terminated after it (`terminate`: one
    that ignores SIGTERM is an error), whatever happened."""
    with ExitStack() as stack:
        for server in servers:
            stack.callback(server.terminate)
        for server in servers:
            server.wait_serving(timeout)
        yield list(servers)
