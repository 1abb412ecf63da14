"""`python -m bench.int8_schemes` on the tiny CLIP: the comparison behind docs/performance.md's int8
table runs, and its accuracy columns say what the docs say of each scheme."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.conftest import TINY_SEED, ExportCli
from tests.support.commands import run_module


@pytest.mark.slow
def test_int8_schemes_table_shows_only_ort_dynamic_depends_on_batch_mates(
    tiny_clip_dir: Path, tmp_path: Path, export_model: ExportCli
) -> None:
    int8 = tmp_path / "tiny-clip-int8"
    exported = export_model(
        "clip",
        "tiny-clip",
        int8,
        "--random-init",
        "--seed",
        str(TINY_SEED),
        "--quantize",
        "int8",
        "--no-huge",
    )  # the same weights as the session's tiny-clip
    assert exported.returncode == 0, exported.stderr[-3000:]
    done = run_module(
        "bench.int8_schemes",
        tiny_clip_dir,
        int8,
        "--rounds",
        "2",
        "--seconds",
        "0.2",
        env=os.environ,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    rows = {}
    for line in done.stdout.splitlines()[2:]:
        name, per_round, ratio, cosine, batch_diff = (cell.strip() for cell in line.strip("|").split("|"))
        assert len(per_round.split()) == 2 and float(ratio) > 0, line
        rows[name] = (float(cosine), float(batch_diff))
    assert rows["fp32"] == (1.0, 0.0)
    assert rows["per-token int8 (`--quantize int8`)"][1] == 0.0
    assert rows["static QDQ, calibrated"][1] == 0.0
    assert rows["ORT dynamic, per-tensor scales"][1] > 0.0
    assert all(cosine >= 0.99 for cosine, _ in rows.values()), done.stdout
