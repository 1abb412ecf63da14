"""This service measured from outside: a real `embedder serve` process, a separate load process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tests.support.processes import ServerProcess


@contextmanager
def bench_server(models_dir: Path, log_path: Path) -> Iterator[tuple[ServerProcess, float]]:
    """`embedder serve --preload` over `models_dir`, SERVING, and its spawn -> SERVING seconds
    (health polled every 10 ms: the cold start is a reported figure); stopped after the block."""
    server = ServerProcess(models_dir, log_path, "--preload", "--log-level", "WARNING", metrics=True)
    try:
        yield server, server.wait_serving(timeout=120.0, poll_s=0.01)
    finally:
        server.stop(timeout=30.0)


def run_load(
    address: str,
    model: str,
    images_dir: Path,
    concurrency: int,
    per_request: int,
    seconds: float,
    warmup: float,
    texts: bool = False,
) -> dict[str, object]:
    """One load run from a separate client process; `texts`: `source` is a file of texts."""
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
        "--texts" if texts else "--images",
        str(images_dir),
    ]
    out = subprocess.run(command, check=True, capture_output=True, text=True, env=os.environ.copy())
    return json.loads(out.stdout.strip().splitlines()[-1])
