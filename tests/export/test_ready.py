"""`python -m export.ready` (what `make models` uses to skip work) says yes only for an exported,
verified graph that matches its model.json."""

from __future__ import annotations

import shutil
from pathlib import Path

from export.ready import problem

REPO = Path(__file__).resolve().parents[2]


def test_ready_only_for_a_verified_matching_export(tiny_clip_dir: Path, tmp_path: Path) -> None:
    assert problem(tiny_clip_dir) is None
    committed = REPO / "models" / "clip-vit-base-patch32"
    copy = tmp_path / "clip-vit-base-patch32"
    shutil.copy(committed / "model.json", tmp_path / "model.json")
    copy.mkdir()
    shutil.copy(tmp_path / "model.json", copy / "model.json")
    assert "not exported" in (problem(copy) or "")
    broken = tmp_path / "tiny-clip"
    shutil.copytree(tiny_clip_dir, broken)
    (broken / "model.onnx").write_bytes(b"not a graph")
    assert "does not match" in (problem(broken) or "")
