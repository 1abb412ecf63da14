"""Fixtures shared by the whole suite: models exported once per session through the real CLI.

Every export goes through `python -m export ...` in a subprocess, exactly as a user runs it, so
the tests exercise argument parsing, checkpoint loading, the ONNX export and the parity gate
together. Nothing downloads: tiny and full-size models are built from seeded random weights,
and the subprocesses run with the Hugging Face hub forced offline so an accidental hub id fails
fast instead of hanging on the network.

Session-scoped export directories are shared by many tests and must never be modified; a test
that changes a model copies it first (`models_root` hands out such copies).
"""

from __future__ import annotations

import os
import resource
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import settings

REPO_ROOT = Path(__file__).parents[1]
TINY_SEED = 7  # not the CLI default (0), so a test can tell the seed really travelled
CHECKPOINT_SEED = 11
EXPORT_TIMEOUT_S = 900

ExportCli = Callable[..., "subprocess.CompletedProcess[str]"]

# Every hypothesis test draws the same examples on every run (a commit's verdict never changes),
# and nothing is written into the repository (.hypothesis/).
settings.register_profile("embedder", derandomize=True, database=None)
settings.load_profile("embedder")


def _cli_env() -> dict[str, str]:
    env = dict(os.environ)
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    return env


def run_module(module: str, *args: str | Path) -> subprocess.CompletedProcess[str]:
    """`python -m MODULE ARGS` from the repo root, output captured (never raises on exit code)."""
    return subprocess.run(
        [sys.executable, "-m", module, *map(str, args)],
        cwd=REPO_ROOT,
        env=_cli_env(),
        capture_output=True,
        text=True,
        timeout=EXPORT_TIMEOUT_S,
        check=False,
    )


def run_export(
    family: str, source: str | Path, out: Path, *extra_args: str | Path
) -> subprocess.CompletedProcess[str]:
    return run_module("export", family, source, "--out", out, *extra_args)


def describe(process: subprocess.CompletedProcess[str]) -> str:
    """The end of a CLI run's output, for assertion messages."""
    stdout, stderr = process.stdout[-4000:], process.stderr[-4000:]
    return f"exit {process.returncode}\n--- stdout ---\n{stdout}\n--- stderr ---\n{stderr}"


@dataclass(frozen=True)
class ExportRun:
    """One CLI export: where it went, what the CLI said, how long it took (wall clock) and the CPU
    time it used (user + system; unlike wall time, barely moved by other load on the machine)."""

    directory: Path
    process: subprocess.CompletedProcess[str]
    seconds: float
    cpu_seconds: float
    seed: int | None = None


def export_or_fail(
    family: str, source: str | Path, out: Path, *extra_args: str | Path, seed: int | None = None
) -> ExportRun:
    """Export for a fixture; a failed export fails every test that needs it, with the CLI output."""
    cpu_before = _children_cpu_seconds()
    started = time.perf_counter()
    process = run_export(family, source, out, *extra_args)
    seconds = time.perf_counter() - started
    if process.returncode != 0:
        pytest.fail(f"export of {source} to {out} failed: {describe(process)}", pytrace=False)
    return ExportRun(out, process, seconds, _children_cpu_seconds() - cpu_before, seed)


def _children_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)  # finished (waited-for) children only
    return usage.ru_utime + usage.ru_stime


@pytest.fixture(scope="session")
def export_model() -> ExportCli:
    """`export_model(family, source, out, *extra_args)`: run `python -m export`, return the
    CompletedProcess (stdout/stderr captured as text) so a test can assert on exit code and output."""
    return run_export


def run_gate(model_dir: Path, *extra_args: str | Path) -> subprocess.CompletedProcess[str]:
    return run_module("export.parity", model_dir, *extra_args)


@pytest.fixture(scope="session")
def run_parity() -> ExportCli:
    """`run_parity(model_dir, *extra_args)`: run `python -m export.parity`, return the CompletedProcess."""
    return run_gate


# --- tiny models (seconds) -------------------------------------------------------------------


@pytest.fixture(scope="session")
def tiny_clip_export(tmp_path_factory: pytest.TempPathFactory) -> ExportRun:
    out = tmp_path_factory.mktemp("tiny-exports") / "tiny-clip"
    return export_or_fail(
        "clip", "tiny-clip", out, "--random-init", "--seed", TINY_SEED, "--no-huge", seed=TINY_SEED
    )


@pytest.fixture(scope="session")
def tiny_dinov2_export(tmp_path_factory: pytest.TempPathFactory) -> ExportRun:
    out = tmp_path_factory.mktemp("tiny-exports") / "tiny-dinov2"
    return export_or_fail(
        "dinov2", "tiny-dinov2", out, "--random-init", "--seed", TINY_SEED, "--no-huge", seed=TINY_SEED
    )


@pytest.fixture(scope="session")
def tiny_clip_dir(tiny_clip_export: ExportRun) -> Path:
    """Random-init tiny CLIP (projected, dim 16), verified without the huge images. Read-only."""
    return tiny_clip_export.directory


@pytest.fixture(scope="session")
def tiny_dinov2_dir(tiny_dinov2_export: ExportRun) -> Path:
    """Random-init tiny DINOv2 (cls pooling, dim 32), verified without the huge images. Read-only."""
    return tiny_dinov2_export.directory


@pytest.fixture(scope="session")
def tiny_checkpoints(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """family -> a local checkpoint directory (save_pretrained model + slow processor config) of
    the tiny architecture with seeded random weights, for exports through `from_pretrained(dir)`."""
    from export.architectures import ARCHITECTURES  # torch-heavy: imported only when needed
    from export.families import save_random_init

    root = tmp_path_factory.mktemp("tiny-checkpoints")
    checkpoints = {}
    for family, arch in (("clip", "tiny-clip"), ("dinov2", "tiny-dinov2")):
        checkpoints[family] = root / f"{arch}-checkpoint"
        save_random_init(ARCHITECTURES[arch], CHECKPOINT_SEED, checkpoints[family])
    return checkpoints


@pytest.fixture
def models_root(tmp_path: Path, tiny_clip_dir: Path, tiny_dinov2_dir: Path) -> Path:
    """A models directory holding copies of both tiny exports (`tiny-clip/`, `tiny-dinov2/`).

    Copies, not symlinks: a test may rewrite or corrupt a model.json here without touching the
    session's exports. Both are small (well under a megabyte).
    """
    root = tmp_path / "models"
    for source in (tiny_clip_dir, tiny_dinov2_dir):
        shutil.copytree(source, root / source.name)
    return root


# --- full-size models (tens of seconds each; used by @pytest.mark.slow tests) ----------------


@pytest.fixture(scope="session")
def clip_b32_export(tmp_path_factory: pytest.TempPathFactory) -> ExportRun:
    """Full-size random-init openai/clip-vit-base-patch32 through the full gate (huge images included)."""
    out = tmp_path_factory.mktemp("full-exports") / "clip-vit-base-patch32"
    return export_or_fail("clip", "openai/clip-vit-base-patch32", out, "--random-init", seed=0)


@pytest.fixture(scope="session")
def dinov2_small_export(tmp_path_factory: pytest.TempPathFactory) -> ExportRun:
    """Full-size random-init facebook/dinov2-small through the full gate (huge images included)."""
    out = tmp_path_factory.mktemp("full-exports") / "dinov2-small"
    return export_or_fail("dinov2", "facebook/dinov2-small", out, "--random-init", seed=0)


@pytest.fixture(scope="session")
def clip_b32_dir(clip_b32_export: ExportRun) -> Path:
    """Named like the committed model (`clip-vit-base-patch32`), random weights. Read-only."""
    return clip_b32_export.directory


@pytest.fixture(scope="session")
def dinov2_small_dir(dinov2_small_export: ExportRun) -> Path:
    """Named like the committed model (`dinov2-small`), random weights. Read-only."""
    return dinov2_small_export.directory
