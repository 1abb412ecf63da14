"""Thread planning reads the CPUs really available: affinity and cgroup quota, not cpu_count."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from embedder.cpus import cgroup_quota_cpus, plan_threads


@pytest.mark.skipif(shutil.which("taskset") is None, reason="taskset not installed")
def test_restricted_affinity_is_what_gets_planned() -> None:
    code = "from embedder.cpus import plan_threads; p = plan_threads(); print(p.cpus, p.intra_op, p.preprocess_workers)"
    out = subprocess.run(
        ["taskset", "-c", "0", sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert out.stdout.split() == ["1", "1", "1"]


def test_affinity_set_in_process_is_read() -> None:
    original = os.sched_getaffinity(0)
    try:
        os.sched_setaffinity(0, {min(original)})
        assert plan_threads().cpus == 1
    finally:
        os.sched_setaffinity(0, original)


def test_cgroup_v2_quota(tmp_path: Path) -> None:
    (tmp_path / "cpu.max").write_text("150000 100000\n")
    assert cgroup_quota_cpus(tmp_path) == 1.5
    (tmp_path / "cpu.max").write_text("max 100000\n")
    assert cgroup_quota_cpus(tmp_path) is None


def test_cgroup_v1_quota(tmp_path: Path) -> None:
    (tmp_path / "cpu").mkdir()
    (tmp_path / "cpu" / "cpu.cfs_quota_us").write_text("50000\n")
    (tmp_path / "cpu" / "cpu.cfs_period_us").write_text("100000\n")
    assert cgroup_quota_cpus(tmp_path) == 0.5
    (tmp_path / "cpu" / "cpu.cfs_quota_us").write_text("-1\n")
    assert cgroup_quota_cpus(tmp_path) is None


def test_explicit_settings_win() -> None:
    plan = plan_threads(intra_op=3, workers=5, cpus=2)
    assert (plan.cpus, plan.intra_op, plan.preprocess_workers) == (2, 3, 5)
