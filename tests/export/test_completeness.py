"""Completeness: every export family is exercised, and every committed model.json is both
current (no drift from `export.committed`) and what a real export of its hub id produces."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest

from embedder.spec import ModelSpec, load_spec
from export.committed import DEFAULT_MODELS, committed_spec
from export.families import FAMILIES

REPO_ROOT = Path(__file__).parents[2]


def committed_models() -> list[str]:
    """Models whose model.json git tracks; `make bench` and `make models` leave other exports
    (the int8 variant) beside them, ignored by git."""
    listed = subprocess.run(
        ["git", "ls-files", "models/*/model.json"], cwd=REPO_ROOT, capture_output=True, text=True, check=False
    )
    if listed.returncode != 0:  # not a git checkout: every model.json there is the committed one
        return sorted(path.parent.name for path in (REPO_ROOT / "models").glob("*/model.json"))
    return sorted(Path(line).parent.name for line in listed.stdout.split())


COMMITTED = committed_models()
# Written by `python -m export`, not committed (the text tower's section names its files' hashes).
EXPORT_ONLY_FIELDS = ("onnx_sha256", "provenance", "parity", "text", "golden")
# Committed model -> the fixture holding a full-size random-init export of its hub id.
EXPORT_FIXTURES = {
    "clip-vit-base-patch32": "clip_b32_dir",
    "dinov2-small": "dinov2_small_dir",
    "dinov2-base": "dinov2_base_dir",
}


def committed_fields(spec: ModelSpec) -> ModelSpec:
    return spec.model_copy(update=dict.fromkeys(EXPORT_ONLY_FIELDS))


@pytest.fixture(scope="module")
def dinov2_base_dir(tmp_path_factory: pytest.TempPathFactory, export_model: Any) -> Path:
    """Only this test needs it, so it is not a session fixture: ~75 s on 2 cores, full gate."""
    out = tmp_path_factory.mktemp("full-exports") / "dinov2-base"
    process = export_model("dinov2", "facebook/dinov2-base", out, "--random-init")
    assert process.returncode == 0, f"{process.stdout[-3000:]}\n{process.stderr[-3000:]}"
    return out


def test_every_family_is_exported_by_the_suite(tiny_clip_dir: Path, tiny_dinov2_dir: Path) -> None:
    covered = {load_spec(directory / "model.json").family for directory in (tiny_clip_dir, tiny_dinov2_dir)}
    assert covered == set(FAMILIES)


def test_committed_models_are_the_default_models() -> None:
    assert COMMITTED == sorted(DEFAULT_MODELS)
    assert set(EXPORT_FIXTURES) == set(DEFAULT_MODELS)  # each one is exported below


@pytest.mark.parametrize("name", COMMITTED)
def test_committed_model_json_has_not_drifted(name: str) -> None:
    spec = load_spec(REPO_ROOT / "models" / name / "model.json")
    expected = committed_spec(name, DEFAULT_MODELS[name])
    if spec.provenance is None:
        assert spec == expected  # as committed: processor values only
    else:
        # Someone ran `python -m export ... --out models/NAME` here, which rewrites the file with the
        # graph's hash and provenance; everything the committed file defines must still agree.
        assert committed_fields(spec) == expected


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(EXPORT_FIXTURES))
def test_export_of_the_hub_id_reproduces_the_committed_model(
    name: str, request: pytest.FixtureRequest
) -> None:
    """Same name, aliases, family, pooling, embedding_dim and preprocessing, and a verified gate."""
    exported = load_spec(request.getfixturevalue(EXPORT_FIXTURES[name]) / "model.json")
    committed = load_spec(REPO_ROOT / "models" / name / "model.json")
    assert exported.verified
    assert exported.provenance is not None and exported.provenance.source == DEFAULT_MODELS[name]
    assert exported.preprocessing == committed.preprocessing
    assert exported.embedding_dim == committed.embedding_dim
    assert committed_fields(exported) == committed_fields(committed)
