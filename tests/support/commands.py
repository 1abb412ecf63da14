"""A repository command line run as a user runs it: `python -m MODULE ARGS` from the repository
root, output captured as text, the exit code left to the caller to judge."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

from tests.support import REPO


def run_module(
    module: str, *args: str | Path, env: Mapping[str, str], timeout: float
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", module, *map(str, args)],
        cwd=REPO,
        env=dict(env),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
