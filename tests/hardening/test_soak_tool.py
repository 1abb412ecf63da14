"""tools/soak.py is run by hand for minutes; this keeps it from rotting with a six-second run."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support import REPO


@pytest.mark.slow
def test_soak_tool_runs_end_to_end(tiny_models: Path) -> None:
    argv = [
        sys.executable,
        str(REPO / "tools" / "soak.py"),
        "--models-dir",
        str(tiny_models),
        "--model",
        "tiny-clip",
        "--minutes",
        "0.1",
        "--concurrency",
        "2",
        "--sample-s",
        "1",
    ]
    done = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=180, check=False)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    summary = json.loads(done.stdout[done.stdout.index("{\n") : done.stdout.rindex("\n}") + 2])
    assert summary["answers"]["OK"] > 0
    assert set(summary["answers"]) <= {"OK", "INVALID_ARGUMENT", "RESOURCE_EXHAUSTED"}
    assert summary["exit_code"] == 0 and "RSS drift" in done.stdout
