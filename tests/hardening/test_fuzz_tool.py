"""`make fuzz` (tools/fuzz.py) is run by hand for minutes; this keeps it and its recording working.

The campaign here runs with a fixed seed and writes into tmp_path, never into the regression
corpus, so this test's verdict does not depend on what a random campaign would find.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.hardening.fuzz_target import INDEX, REPO, Recorder, seed_images


def test_a_short_campaign_runs_and_reports(tmp_path: Path) -> None:
    pytest.importorskip("atheris")
    findings, state = tmp_path / "findings", tmp_path / "state"
    findings.mkdir()
    argv = [
        sys.executable,
        str(REPO / "tools" / "fuzz.py"),
        "--seconds",
        "8",
        "--jobs",
        "1",
        "--seed",
        "1",
        "--findings",
        str(findings),
        "--state",
        str(state),
    ]
    done = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    summary = re.search(
        r"fuzz campaign: \d+ s, 1 jobs, (\d+) launches, (\d+) executions .* 0 new findings", done.stdout
    )
    assert summary is not None, done.stdout[-3000:]
    assert int(summary[1]) >= 1 and int(summary[2]) > 1000
    kept = {p.name for p in (state / "corpus").iterdir()}
    assert {f"seed-{name}" for name in seed_images()} <= kept
    assert not list(findings.iterdir())


def test_the_recorder_keeps_one_input_per_distinct_failure(tmp_path: Path) -> None:
    recorder = Recorder(tmp_path)
    recorder.record(b"first", "TypeError at ImageFile.py:387", "'float' object")
    recorder.record(b"second", "TypeError at ImageFile.py:387", "another message, same bug")
    recorder.record(
        b"third", "struct.error at TiffImagePlugin.py:12", "unpack requires a buffer | of 4 bytes"
    )
    files = sorted(p for p in tmp_path.iterdir() if p.name != INDEX)
    assert sorted(p.read_bytes() for p in files) == [b"first", b"third"]
    rows = (tmp_path / INDEX).read_text(encoding="utf-8").splitlines()
    assert len(rows) == 2
    assert all(f"`{p.name}`" in "\n".join(rows) for p in files)
    assert "buffer \\| of 4" in rows[1]  # a table cell cannot hold a bare |
    # A second process finding the same failure does not write it twice.
    Recorder(tmp_path).record(b"fourth", "TypeError at ImageFile.py:387", "")
    assert len([p for p in tmp_path.iterdir() if p.name != INDEX]) == 2
