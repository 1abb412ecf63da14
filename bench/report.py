"""results.json -> RESULTS.md, with the issue's target ratios checked."""

from __future__ import annotations

from statistics import mean
from typing import Any

from .http import http_section


def _ratios(m: dict[str, Any]) -> dict[str, float]:
    service = {(s["concurrency"], s["per_request"]): s for s in m["service"]}
    ceiling = m["ceiling_default"]
    paired = m["paired_c16"]
    out = {
        # Mean service over mean ceiling, the two measured in alternation (bench/__main__.py).
        "service_c16_over_ceiling_b8": mean(r["service_c16_images_per_s"] for r in paired)
        / mean(r["ceiling_b8_images_per_s"] for r in paired),
        "service_c16_over_ceiling_b8_single_pass": service[(16, 1)]["images_per_s"]
        / ceiling["batch8"]["images_per_s"],
        "service_c16_over_pytorch_single": service[(16, 1)]["images_per_s"]
        / m["pytorch"]["one_at_a_time_images_per_s"],
        "p50_c1_over_b1_plus_decode": service[(1, 1)]["p50_ms"]
        / (ceiling["batch1"]["ms_per_batch"] + m["decode_ms"]),
    }
    if "int8" in m:
        int8 = m["int8"]["ceiling_default"]
        out["int8_b1_over_fp32_b1"] = int8["batch1"]["images_per_s"] / ceiling["batch1"]["images_per_s"]
        out["int8_b1_over_fp32_b8"] = int8["batch1"]["images_per_s"] / ceiling["batch8"]["images_per_s"]
        out.update(_int8_ratios(m["int8"].get("paired", [])))
    return out


def _int8_ratios(paired: list[dict[str, Any]]) -> dict[str, float]:
    """Mean over mean of the rounds in which int8, fp32 and PyTorch alternated (bench/int8.py)."""
    if not paired:
        return {}

    def avg(side: str, key: str) -> float:
        return mean(float(r[side][key]) for r in paired)

    int8_c16 = avg("int8_c16", "images_per_s")
    return {
        "int8_service_c16_over_fp32_service_c16": int8_c16 / avg("fp32_c16", "images_per_s"),
        "int8_service_c16_over_pytorch_single": int8_c16
        / mean(r["pytorch_single_images_per_s"] for r in paired),
        "int8_p50_c1_over_fp32_p50_c1": avg("int8_c1", "p50_ms") / avg("fp32_c1", "p50_ms"),
        "int8_b8_over_fp32_b8_model_only": mean(r["int8_b8_images_per_s"] for r in paired)
        / mean(r["fp32_b8_images_per_s"] for r in paired),
    }


TARGETS = {
    "service_c16_over_ceiling_b8": (">=", 0.93),
    "service_c16_over_pytorch_single": (">=", 2.6),
    "p50_c1_over_b1_plus_decode": ("<=", 1.25),
    "int8_b1_over_fp32_b1": (">=", 1.4),
    "int8_service_c16_over_fp32_service_c16": (">=", 2.0),
    "int8_service_c16_over_pytorch_single": (">=", 3.0),
    "int8_p50_c1_over_fp32_p50_c1": ("<=", 0.7),
}
# Where a family's target differs (None: no target for that family).
FAMILY_TARGETS: dict[str, dict[str, tuple[str, float] | None]] = {
    "dinov2": {
        "int8_service_c16_over_fp32_service_c16": (">=", 1.6),
        "int8_service_c16_over_pytorch_single": None,
    },
}


def _verdict(key: str, value: float, family: str = "") -> str:
    targets = {**TARGETS, **FAMILY_TARGETS.get(family, {})}
    if targets.get(key) is None:
        return ""
    op, target = targets[key]  # type: ignore[misc]
    ok = value >= target if op == ">=" else value <= target
    return f"{op} {target}: {'met' if ok else 'NOT met'}"


def _model_section(m: dict[str, Any]) -> list[str]:
    lines = [f"### {m['model']} (dim {m['dim']}, weights: {m['weights']})", ""]
    lines += ["| side | setting | images/s | p50 ms | p99 ms |", "|---|---|---:|---:|---:|"]
    p = m["pytorch"]
    lines.append(
        f"| PyTorch pipeline (HF slow processor + eager) | one at a time | {p['one_at_a_time_images_per_s']:.2f} | | |"
    )
    lines.append(f"| PyTorch pipeline | batch 8 | {p['batch8_images_per_s']:.2f} | | |")
    for label, key in (
        ("ORT model-only, default settings", "ceiling_default"),
        ("ORT model-only, served settings", "ceiling_served_settings"),
    ):
        for batch, row in m[key].items():
            lines.append(
                f"| {label} | {batch} | {row['images_per_s']:.2f} | {row['ms_per_batch']:.1f} (per batch) | |"
            )
    if "int8" in m:
        for batch, row in m["int8"]["ceiling_default"].items():
            lines.append(
                f"| ORT model-only int8 | {batch} | {row['images_per_s']:.2f} | {row['ms_per_batch']:.1f} (per batch) | |"
            )
    for s in m["service"]:
        setting = f"concurrency {s['concurrency']}, {s['per_request']} image(s)/request"
        errors = {k: v for k, v in s["codes"].items() if k != "OK"}
        note = f" errors {errors}" if errors else ""
        lines.append(
            f"| this service over gRPC | {setting}{note} | {s['images_per_s']:.2f} | {s['p50_ms']:.1f} | {s['p99_ms']:.1f} |"
        )
    int8 = m.get("int8", {})
    rounds = len(int8.get("paired", []))
    for label, key in (("fp32", "fp32_service"), ("int8 variant, a server of its own", "service")):
        for s in int8.get(key, []):
            lines.append(
                f"| this service over gRPC, {label}, in the int8 rounds (mean of {rounds}) | "
                f"concurrency {s['concurrency']}, 1 image(s)/request | {s['images_per_s']:.2f} | "
                f"{s['p50_ms']:.1f} | {s['p99_ms']:.1f} |"
            )
    photos = m.get("service_large_photos")
    if photos:
        lines.append(
            f"| this service over gRPC | 4032x3024 photos, concurrency 4 | {photos['images_per_s']:.2f} | "
            f"{photos['p50_ms']:.1f} | {photos['p99_ms']:.1f} |"
        )
    lines += ["", f"Decode + preprocess of one 640x480 JPEG: {m['decode_ms']:.2f} ms.", ""]
    lines += [
        "Service at concurrency 16 and the ceiling (ORT batch 8, default settings), measured in alternation:",
        "",
        "| round | ceiling images/s | service images/s | ratio |",
        "|---:|---:|---:|---:|",
    ]
    for i, r in enumerate(m["paired_c16"], 1):
        ceil, svc = r["ceiling_b8_images_per_s"], r["service_c16_images_per_s"]
        lines.append(f"| {i} | {ceil:.2f} | {svc:.2f} | {svc / ceil:.3f} |")
    if int8.get("paired"):
        lines += _int8_rounds(int8)
    lines += ["", "| ratio | value | target |", "|---|---:|---|"]
    for key, value in _ratios(m).items():
        lines.append(f"| {key} | {value:.3f} | {_verdict(key, value, m.get('family', ''))} |")
    return lines + [""]


def _int8_rounds(int8: dict[str, Any]) -> list[str]:
    cosine = int8.get("min_cosine_to_fp32")
    header = (
        f"int8 variant {int8['model']}: {int8.get('quantization')}; min cosine to fp32 on the gate's "
        f"images {cosine if cosine is None else f'{cosine:.5f}'}; batch-invariant {int8.get('batch_invariant')}."
    )
    columns = ("round", "PyTorch 1 at a time", "fp32 c16", "int8 c16", "int8/fp32 c16")
    columns += ("fp32 p50 c1 ms", "int8 p50 c1 ms", "fp32 b8", "int8 b8")
    lines = ["", header, "PyTorch one at a time, the fp32 and int8 services (concurrency 16 and 1) and both"]
    lines += ["graphs alone (batch 8, ORT defaults), measured in alternation:", ""]
    lines += ["| " + " | ".join(columns) + " |", "|" + "---:|" * len(columns)]
    for i, r in enumerate(int8["paired"], 1):
        f16, i16 = r["fp32_c16"]["images_per_s"], r["int8_c16"]["images_per_s"]
        lines.append(
            f"| {i} | {r['pytorch_single_images_per_s']:.2f} | {f16:.2f} | {i16:.2f} | {i16 / f16:.3f} | "
            f"{r['fp32_c1']['p50_ms']:.1f} | {r['int8_c1']['p50_ms']:.1f} | {r['fp32_b8_images_per_s']:.2f} | "
            f"{r['int8_b8_images_per_s']:.2f} |"
        )
    return lines


def _text_section(t: dict[str, Any]) -> list[str]:
    bound = 1.3 * t["short_query_model_p50_ms"] + 1.0
    ratio = t["service_c4_texts_per_s"] / t["model_texts_per_s_at_that_batch"]
    lines = [f"### Text tower ({t['model']})", ""]
    lines += ["| side | setting | texts/s | p50 ms |", "|---|---|---:|---:|"]
    lines.append(
        f"| ORT model-only, served settings | one query of {t['short_query_tokens']} tokens | | {t['short_query_model_p50_ms']:.2f} |"
    )
    lines.append(
        f"| this service over gRPC | the same query, concurrency 1 | | {t['short_query_service_p50_ms']:.2f} |"
    )
    lines.append(
        f"| ORT model-only, served settings | batches of {t['model_batch']} of the {t['texts']} texts "
        f"({t['tokens_min_max'][0]}-{t['tokens_min_max'][1]} tokens) | {t['model_texts_per_s_at_that_batch']:.1f} | |"
    )
    lines.append(
        f"| this service over gRPC | the {t['texts']} texts, 4 callers x 16 texts/request "
        f"(mean batch {t['service_mean_batch'] or 0:.1f}) | {t['service_c4_texts_per_s']:.1f} | |"
    )
    lines += [
        "",
        "| ratio | value | target |",
        "|---|---:|---|",
        (
            f"| short query p50 over (1.3 x model p50 + 1 ms) | {t['short_query_service_p50_ms'] / bound:.3f} | "
            f"<= 1: {'met' if t['short_query_service_p50_ms'] <= bound else 'NOT met'} |"
        ),
        f"| texts/s at concurrency 4 over model-only at the same batch | {ratio:.3f} | >= 0.9: {'met' if ratio >= 0.9 else 'NOT met'} |",
        "",
    ]
    return lines


def render(results: dict[str, Any]) -> str:
    mach = results["machine"]
    lines = [
        "# Benchmark results" + (" (smoke run: too short to quote)" if results["smoke"] else ""),
        "",
        f"Measured {mach['date']} by `make bench` (`python -m bench --models-dir models`), all sides in one run,",
        f"same images (640x480 JPEG frames; 4032x3024 photos in their own row), {results['seconds_per_measurement']} s per measurement.",
        f"Machine: {mach['cpu']}, {mach['cpus_available']} CPUs available, AVX-512 {mach['avx512']}, VNNI {mach['vnni']};",
        f"CPU flags ONNX Runtime picked its kernels by: {mach.get('kernels_chosen_by', 'not recorded')};",
        f"Python {mach['python']}; " + ", ".join(f"{k} {v}" for k, v in mach["versions"].items()) + ".",
        "The service and the load generator are separate processes on the same machine; the service's",
        "images/s is the slope of completed images over completion time in the window (bench/load.py).",
        "",
    ]
    for model in results.get("models", []):
        lines += _model_section(model)
    if results.get("text"):
        lines += _text_section(results["text"])
    if results.get("http"):
        lines += http_section(results["http"])
    onnx_total = sum(results.get("onnx_mb", {}).values())
    budget = 1.5 * onnx_total + 200
    rss = results.get("rss_both_loaded_mb", float("nan"))
    lines += [
        "### Start-up and memory",
        "",
        f"- Cold start to SERVING with CLIP preloaded (process spawn -> health SERVING): {results['cold_start_clip_s']:.2f} s (target <= 3 s).",
        (
            f"- Resident memory with both models loaded and warm: {rss:.0f} MB; graph files loaded {onnx_total:.0f} MB "
            f"({', '.join(f'{k} {v:.0f}' for k, v in results.get('onnx_mb', {}).items())}); "
            f"budget 1.5 x files + 200 MB = {budget:.0f} MB: {'met' if rss <= budget else 'NOT met'}."
        ),
        (
            f"- The same server at rest, {results.get('rss_at_rest_after_s', 0):.0f} s after its last batch: "
            f"{results.get('rss_at_rest_mb', float('nan')):.0f} MB."
        ),
        "",
    ]
    if results.get("timings"):
        lines += _timings_section(results["timings"])
    return "\n".join(lines)


def _timings_section(t: dict[str, Any]) -> list[str]:
    """bench/timings.py: figures `make test` no longer holds to wall-clock budgets."""
    e, cpu, down, o = t["export"], t["idle_cpu_s"], t["shutdown"], t["overload"]
    return [
        "### Timings (properties in `make test`, figures here)",
        "",
        (
            f"- Export + parity gate of `{e['source']}` (random-init): {e['wall_s']:.1f} s wall, "
            f"{e['cpu_s']:.1f} s CPU, load average {e['load_average']:.2f} at the end."
        ),
        (
            f"- CPU seconds in 1 s of idle gaps right after runs: served session {cpu['served']:.3f}, "
            f"ORT's default spinning {cpu['spinning_control']:.3f}."
        ),
        (
            f"- SIGTERM to exit, idle server, grace {down['grace_s']:.0f} s: with an open health Watch "
            f"{down['health_watch_open_s']:.2f} s (the Watch saw NOT_SERVING after {down['not_serving_after_s']:.3f} s); "
            f"with an open reflection stream {down['reflection_stream_open_s']:.2f} s."
        ),
        (
            f"- Overload ({o['model']}, 640x480 JPEGs, --max-queue-images 32): capacity {o['capacity_calls_per_s']:.1f} "
            f"calls/s (8 callers); {o['offered_per_s']:.1f} calls/s offered for {o['load_s']:.0f} s, answers {o['codes']}; "
            f"single-call p50 {o['idle_p50_ms']:.1f} ms idle, {o['after_load_p50_ms']:.1f} ms right after the load."
        ),
        "",
    ]
