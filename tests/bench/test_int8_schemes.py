"""`python -m bench.int8_schemes` on the tiny CLIP: the comparison behind docs/performance.md's int8
table runs, and its accuracy columns say what the docs say of each scheme; the AVX2-only mask the
comparison can run under hides what it says it hides."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from bench import cpu
from tests.support.commands import run_module


@pytest.mark.slow
def test_int8_schemes_table_shows_only_ort_dynamic_depends_on_batch_mates(tiny_clip_dir: Path) -> None:
    done = run_module(
        "bench.int8_schemes", tiny_clip_dir, "--rounds", "2", "--seconds", "0.2", env=os.environ, timeout=600
    )
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.splitlines()
    assert "CPU as ONNX Runtime sees it" in lines[0] and lines[3].startswith("|---")
    rows = {}
    for line in lines[4:]:
        name, per_round, ratio, gate, unseen, clipped, batch_diff = (
            c.strip() for c in line.strip("|").split("|")
        )
        assert per_round == "(as above)" or len(per_round.split()) == 2, line
        assert float(ratio) > 0, line
        rows[name] = (float(gate), float(unseen), clipped, float(batch_diff))
    assert rows["fp32"] == (1.0, 1.0, "", 0.0)
    batch_invariant = [name for name in rows if name != "ORT dynamic, per-tensor scales"]
    assert len(batch_invariant) == 7 and all(rows[name][3] == 0.0 for name in batch_invariant)
    assert rows["ORT dynamic, per-tensor scales"][3] > 0.0
    static = rows["static, percentile 100.0"]
    assert min(static[:2]) >= 0.995 and 0.0 <= float(static[2]) < 0.01, done.stdout
    assert min(rows["per-token"][:2]) >= 0.995, done.stdout
    # what the hybrid is for: attention outputs quantised statically as well lose accuracy
    assert min(rows["static everywhere (attention outputs too), MinMax"][:2]) < min(static[:2]), done.stdout


def test_the_kernels_alone_table_times_both_products(tiny_clip_dir: Path) -> None:
    done = run_module(
        "bench.int8_schemes",
        tiny_clip_dir,
        "--gemm",
        "--rounds",
        "2",
        "--seconds",
        "0.2",
        env=os.environ,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    rows = [line.strip("|").split("|") for line in done.stdout.splitlines() if line.startswith("| ")][1:]
    assert [row[0].strip() for row in rows] == ["fp32 MatMul", "int8 static"]
    for _, per_round, ratio in rows:
        assert len(per_round.split()) == 2 and all(float(v) > 0 for v in per_round.split())
        assert float(ratio) > 0
    assert float(rows[0][2]) == 1.0


def _seen(env: dict[str, str]) -> dict[str, bool]:
    code = "import json; from bench.cpu import features; print(json.dumps(features()))"
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    return json.loads(done.stdout)  # type: ignore[no-any-return]


@pytest.mark.skipif(
    "cpuid_fault" not in Path("/proc/cpuinfo").read_text() or shutil.which("cc") is None,
    reason="needs Linux CPUID faulting and a C compiler",
)
def test_the_avx2_only_mask_hides_avx512_and_vnni_and_keeps_the_rest() -> None:
    native, masked = _seen(dict(os.environ)), _seen(cpu.avx2_only_env())
    assert not any(masked[flag] for flag in ("AVX512F", "AVX512_SKX", "AVX512VNNI", "AVXVNNI", "AVX512_BF16"))
    assert (masked["AVX2"], masked["FMA3"]) == (native["AVX2"], native["FMA3"])
