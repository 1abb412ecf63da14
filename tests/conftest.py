"""Fixtures shared by the whole suite: models exported once per session through the real CLI.

Every export goes through `python -m export ...` in a subprocess, exactly as a user runs it, so
the tests exercise argument parsing, checkpoint loading, the ONNX export and the parity gate
together. Nothing downloads: tiny and full-size models are built from seeded random weights,
and the subprocesses run with the Hugging Face hub forced offline so an accidental hub id fails
fast instead of hanging on the network.

Session-scoped export directories are shared by many tests and must never be modified; a test
that changes a model copies it first (`models_root` hands out such copies). `tiny_models` and
`serve` put the tiny exports behind an in-process server (tests/support/ holds the harness).
"""

from __future__ import annotations

import os
import resource
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from hypothesis import settings

from tests.support.commands import run_module
from tests.support.inprocess import Served, serving
from tests.support.models import make_models_dir

TINY_SEED = 7
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


def run_export(
    family: str, source: str | Path, out: Path, *extra_args: str | Path
) -> subprocess.CompletedProcess[str]:
    return run_module(
        "export", family, source, "--out", out, *extra_args, env=_cli_env(), timeout=EXPORT_TIMEOUT_S
    )


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
    return run_module("export.parity", model_dir, *extra_args, env=_cli_env(), timeout=EXPORT_TIMEOUT_S)


@pytest.fixture(scope="session")
def run_parity() -> ExportCli:
    """`run_parity(model_dir, *extra_args)`: run `python -m export.parity`, return the CompletedProcess."""
    return run_gate


# --- models exported once per session, shared read-only ------------------------------------


def session_export(name: str, family: str, source: str, *flags: str | int, seed: int) -> Any:
    """The fixtures `<name>_export` (a random-init export through the CLI, once a session: its
    ExportRun) and `<name>_dir` (its directory, named like the model; read-only). Made here, not
    written out, because the exports differ only in these arguments."""

    def run(tmp_path_factory: pytest.TempPathFactory) -> ExportRun:
        out = tmp_path_factory.mktemp(f"{name}-export") / source.rsplit("/", 1)[-1]
        return export_or_fail(family, source, out, "--random-init", *flags, seed=seed)

    def directory(request: pytest.FixtureRequest) -> Path:
        export: ExportRun = request.getfixturevalue(f"{name}_export")
        return export.directory

    run.__doc__ = f"`python -m export {family} {source} --random-init` run once a session."
    directory.__doc__ = f"The directory of {name}_export (random-init {source}). Read-only."
    export_fixture = pytest.fixture(run, scope="session", name=f"{name}_export")
    return export_fixture, pytest.fixture(directory, scope="session", name=f"{name}_dir")


# Tiny models (seconds), verified without the huge images: CLIP projected to dim 16, DINOv2 with
# cls pooling at dim 32. TINY_SEED is not the CLI default (0), so a test can tell the seed travelled.
TINY = ("--seed", TINY_SEED, "--no-huge")
tiny_clip_export, tiny_clip_dir = session_export("tiny_clip", "clip", "tiny-clip", *TINY, seed=TINY_SEED)
tiny_dinov2_export, tiny_dinov2_dir = session_export(
    "tiny_dinov2", "dinov2", "tiny-dinov2", *TINY, seed=TINY_SEED
)
# SigLIP with --external-data: its graphs keep their weights in .onnx.data files, as a SigLIP 2
# So400m's or giant's text tower must (over protobuf's 2 GB), so every test serving it covers them.
tiny_siglip_export, tiny_siglip_dir = session_export(
    "tiny_siglip", "siglip", "tiny-siglip", *TINY, "--external-data", seed=TINY_SEED
)

# Full-size models (tens of seconds each; for @pytest.mark.slow tests) through the full gate, huge
# images included; named like the committed models (`clip-vit-base-patch32`, `dinov2-small`).
clip_b32_export, clip_b32_dir = session_export("clip_b32", "clip", "openai/clip-vit-base-patch32", seed=0)
dinov2_small_export, dinov2_small_dir = session_export(
    "dinov2_small", "dinov2", "facebook/dinov2-small", seed=0
)


@pytest.fixture(scope="session")
def tiny_checkpoints(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """family -> a local checkpoint directory (save_pretrained model + slow processor config) of
    the tiny architecture with seeded random weights, for exports through `from_pretrained(dir)`."""
    from export.architectures import ARCHITECTURES  # torch-heavy: imported only when needed
    from export.families import save_random_init

    root = tmp_path_factory.mktemp("tiny-checkpoints")
    checkpoints = {}
    for family, arch in (("clip", "tiny-clip"), ("dinov2", "tiny-dinov2"), ("siglip", "tiny-siglip")):
        checkpoints[family] = root / f"{arch}-checkpoint"
        save_random_init(ARCHITECTURES[arch], CHECKPOINT_SEED, checkpoints[family])
    return checkpoints


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory: pytest.TempPathFactory, tiny_clip_dir: Path, tiny_dinov2_dir: Path) -> Path:
    """Both tiny exports side by side under their exported names, for servers. Read-only."""
    return make_models_dir(tmp_path_factory.mktemp("tiny-models"), tiny_clip_dir, tiny_dinov2_dir)


@pytest.fixture
def models_root(tmp_path: Path, tiny_clip_dir: Path, tiny_dinov2_dir: Path) -> Path:
    """This test's own copies of both tiny exports (`tiny-clip/`, `tiny-dinov2/`): it may add,
    rewrite or corrupt files here without touching the session's exports."""
    return make_models_dir(tmp_path / "models", tiny_clip_dir, tiny_dinov2_dir)


@pytest.fixture
def serve(request: pytest.FixtureRequest) -> Iterator[Callable[..., Served]]:
    """`serve(models_dir=tiny_models, **settings)` -> a started in-process server, stopped after
    the test (the tiny models are exported only for a test that serves them)."""
    with ExitStack() as stack:

        def start(models_dir: Path | None = None, **overrides: object) -> Served:
            models_dir = models_dir or request.getfixturevalue("tiny_models")
            return stack.enter_context(serving(models_dir, **overrides))

        yield start
