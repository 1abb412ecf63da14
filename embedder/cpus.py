"""How many CPUs this process may really use, and how threads are planned from that.

`os.cpu_count()` reports the host's cores; a container or `taskset` gives the process fewer.
The affinity mask and the cgroup CPU quota both count; the smaller wins.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path


def affinity_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        return os.cpu_count() or 1


def cgroup_quota_cpus(root: Path = Path("/sys/fs/cgroup")) -> float | None:
    """CPUs allowed by the cgroup (v2 `cpu.max`, or v1 cfs quota), None when unlimited."""
    try:
        quota, period = (root / "cpu.max").read_text().split()[:2]
        if quota != "max":
            return int(quota) / int(period)
        return None
    except (OSError, ValueError):
        pass
    try:
        quota_us = int((root / "cpu" / "cpu.cfs_quota_us").read_text())
        period_us = int((root / "cpu" / "cpu.cfs_period_us").read_text())
        return quota_us / period_us if quota_us > 0 and period_us > 0 else None
    except (OSError, ValueError):
        return None


def available_cpus() -> int:
    cpus = affinity_cpus()
    quota = cgroup_quota_cpus()
    if quota is not None:
        cpus = min(cpus, max(1, math.ceil(quota)))
    return max(1, cpus)


@dataclass(frozen=True)
class ThreadPlan:
    """intra-op threads for ONNX Runtime and workers for decode/resize.

    ORT gets every available core: on a CPU-bound server the model is the bottleneck. Decode
    workers get the same count: they spend most of their time in Pillow with the GIL released,
    and decode between inference runs (turns.py), so all the cores serve them then.
    """

    cpus: int
    intra_op: int
    preprocess_workers: int


def plan_threads(
    intra_op: int | None = None, workers: int | None = None, cpus: int | None = None
) -> ThreadPlan:
    cpus = cpus or available_cpus()
    return ThreadPlan(cpus=cpus, intra_op=intra_op or cpus, preprocess_workers=workers or cpus)
