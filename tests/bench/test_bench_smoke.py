"""A seconds-long run of the benchmark harness on the tiny models: every side is measured and the
report is complete. The figures themselves come from `make bench` on the full-size models."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ExportCli

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_bench_smoke_run_measures_every_side(
    models_root: Path, tmp_path: Path, export_model: ExportCli
) -> None:
    for family, arch in (("clip", "tiny-clip"), ("dinov2", "tiny-dinov2")):
        int8 = models_root / f"{arch}-int8"
        exported = export_model(family, arch, int8, "--random-init", "--quantize", "int8", "--no-huge")
        assert exported.returncode == 0, exported.stderr[-3000:]
    out = tmp_path / "bench"
    command = [
        sys.executable,
        "-m",
        "bench",
        "--smoke",
        "--models-dir",
        str(models_root),
        "--clip",
        "tiny-clip",
        "--dinov2",
        "tiny-dinov2",
        "--out",
        str(out),
    ]
    done = subprocess.run(command, check=False, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads((out / "results-smoke.json").read_text())
    assert results["cold_start_clip_s"] > 0
    assert results["rss_both_loaded_mb"] > 0 and results["rss_at_rest_mb"] > 0
    assert [m["model"] for m in results["models"]] == ["tiny-clip", "tiny-dinov2"]
    for model in results["models"]:
        assert model["pytorch"]["one_at_a_time_images_per_s"] > 0
        assert set(model["ceiling_default"]) == {"batch1", "batch8", "batch32"}
        assert model["paired_c16"] and all(v > 0 for r in model["paired_c16"] for v in r.values())
        int8 = model["int8"]  # both int8 variants: served by their own server, beside fp32 and PyTorch
        assert int8["model"] == f"{model['model']}-int8" and int8["batch_invariant"] is True
        assert (
            [r["concurrency"] for r in int8["service"]]
            == [1, 16]
            == [r["concurrency"] for r in int8["fp32_service"]]
        )
        (paired,) = int8["paired"]  # one alternating round in a smoke run
        assert paired["pytorch_single_images_per_s"] > 0 and paired["int8_b8_images_per_s"] > 0
        for run in model["service"] + int8["service"] + int8["fp32_service"]:
            assert run["codes"].get("OK", 0) > 0 and set(run["codes"]) == {"OK"}, run
    text = results["text"]  # the tiny CLIP has a text tower
    assert text["model"] == "tiny-clip" and text["texts"] == 64 and 5 <= text["tokens_min_max"][0]
    assert text["tokens_min_max"][1] <= 40 and text["short_query_tokens"] <= 12
    assert text["service_c4_texts_per_s"] > 0 and text["model_texts_per_s_at_that_batch"] > 0
    assert 0 < text["short_query_model_p50_ms"] and 0 < text["short_query_service_p50_ms"]
    http = results["http"]  # both front ends of one server
    assert http["model"] == "tiny-clip" and http["images"] > 0 and len(http["rounds"]) >= 1
    assert http["grpc_c16_images_per_s"] > 0 and http["http_c16_images_per_s"] > 0
    assert http["query_grpc_p50_ms"] > 0 and http["query_http_p50_ms"] > 0
    assert set(results["timings"]) >= {"export", "idle_cpu_s", "shutdown", "overload"}
    report = (out / "RESULTS-smoke.md").read_text()
    for needle in (
        "Text tower (tiny-clip)",
        "short query p50 over (1.3 x model p50 + 1 ms)",
        "texts/s at concurrency 4 over model-only at the same batch",
        "service_c16_over_ceiling_b8",
        "service_c16_over_pytorch_single",
        "p50_c1_over_b1_plus_decode",
        "measured in alternation",
        "int8 variant, a server of its own",
        "int8_service_c16_over_pytorch_single",
        "| int8_service_c16_over_fp32_service_c16 |",
        "| int8_p50_c1_over_fp32_p50_c1 |",
        ">= 1.6:",  # DINOv2's own int8 target
        "int8 variant tiny-dinov2-int8",
        "Cold start to SERVING",
        "Resident memory",
        "at rest",
    ):
        assert needle in report
