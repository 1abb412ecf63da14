"""SigLIP 2 measured (issue 24), on an exported model folder (and its `-int8` variant beside it):

- the gate's figures from its parity.json: texts with identical ids, text and image max-abs;
- images, 16 clients, one image per request, against ORT's model-only rate at batch 8 on the
  same graph (ORT defaults), in alternating rounds as bench/__main__.py's `paired_c16`;
- one short text query: the service's p50 against the text graph's `session.run` p50
  (bench/text.py), the target being <= 1.3 x model-only + 1 ms;
- int8: the int8 service against the fp32 service at 16 clients, alternating; its cosine to fp32
  from its gate;
- the resident memory of a server holding both graphs (after the text load), and each graph's
  files on disk;
- where transformers' defaults disagree with SigLIP's rules (`defaults`): the vectors the rules
  give against those the defaults give, on the gate's texts and images (PyTorch);
- the export of the base architecture (`export_cost`): wall time and peak resident memory of
  `python -m export siglip google/siglip2-base-patch16-224 --random-init`.

    python -m bench.siglip models/siglip2-base-patch16-224 [--seconds S] [--export]

`make bench` runs `measure` and `render` through bench/__main__.py when the model is exported.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from embedder.repository import Repository
from embedder.spec import SPEC_FILE, load_spec
from tests.support.images import photo_jpeg

from . import measure
from .service import bench_server, run_load
from .text import bench_text

ROUNDS = 4  # alternating ceiling/service (and fp32/int8) rounds: the machine drifts over minutes
BASE = "google/siglip2-base-patch16-224"


def gate_figures(model_dir: Path) -> dict[str, Any]:
    report = json.loads((model_dir / "parity.json").read_text())
    texts = report["text"]["texts"] if report.get("text") else []
    return {
        "verified": report["verified"],
        "images": len(report["images"]),
        "image_max_abs_normalized": max(r["normalized_max_abs"] for r in report["images"]),
        "image_pixels_max_abs": max(r["pixel_max_abs"] for r in report["images"]),
        "texts": len(texts),
        "texts_ids_identical": sum(bool(r["ids_identical"]) for r in texts),
        "text_max_abs_normalized": max((r["normalized_max_abs"] for r in texts), default=None),
        "text_batch_max_abs_normalized": report["text"]["batch_normalized_max_abs"] if texts else None,
    }


def graph_mib(model_dir: Path) -> dict[str, float]:
    """Every graph and external-data file of the folder, in MiB."""
    return {p.name: p.stat().st_size / 2**20 for p in sorted(model_dir.iterdir()) if ".onnx" in p.name}


def measure_service(
    models_dir: Path, name: str, frames: Path, scratch: Path, seconds: float
) -> dict[str, Any]:
    repo = Repository.scan(models_dir)
    entry = repo.entries[name]
    result: dict[str, Any] = {
        "model": name,
        "weights": entry.spec.weights_kind,
        "gate": gate_figures(entry.directory),
    }
    result["files_mib"] = graph_mib(entry.directory)
    int8 = repo.entries.get(f"{name}-int8")
    served = scratch / "siglip-served"  # this model alone: the resident memory is its own
    served.mkdir(exist_ok=True)
    (served / name).symlink_to(entry.directory.resolve())
    with bench_server(served, scratch / "siglip-served.log") as (server, ready_s):
        result["cold_start_s"] = ready_s
        result["rss_image_and_text_loaded_mib_at_start"] = server.rss_mib()
        session = measure.default_session(entry.onnx_path)
        rounds = []
        for r in range(ROUNDS):
            row: dict[str, float] = {}
            for side in ("ceiling", "service") if r % 2 == 0 else ("service", "ceiling"):
                if side == "ceiling":
                    rate = measure.session_rate(session, entry.spec, 8, seconds / 2)
                    row["ceiling_b8_images_per_s"] = rate["images_per_s"]
                else:
                    load = run_load(server.address, name, frames, 16, 1, seconds * 0.75, warmup=1.0)
                    row["service_c16_images_per_s"] = float(load["images_per_s"])
            rounds.append(row)
        del session
        result["paired_c16"] = rounds
        result["service_over_ceiling"] = float(
            np.median([r["service_c16_images_per_s"] / r["ceiling_b8_images_per_s"] for r in rounds])
        )
        if entry.spec.text is not None:
            text = bench_text(entry, server, scratch, seconds)
            text["target_ms"] = 1.3 * text["short_query_model_p50_ms"] + 1.0
            result["text"] = text
        result["rss_after_load_mib"] = server.rss_mib()
        if int8 is not None and int8.onnx_path.exists():
            result["int8"] = measure_int8(models_dir, name, int8.name, server, frames, scratch, seconds)
    return result


def measure_int8(
    models_dir: Path, name: str, int8_name: str, fp32_server: Any, frames: Path, scratch: Path, seconds: float
) -> dict[str, Any]:
    """The int8 service on a server of its own against the fp32 one, alternating at 16 clients."""
    only = scratch / "int8-only"
    only.mkdir(exist_ok=True)
    (only / int8_name).symlink_to((models_dir / int8_name).resolve())
    spec = load_spec(models_dir / int8_name / SPEC_FILE)
    rounds = []
    with bench_server(only, scratch / "siglip-int8.log") as (server, _):
        for r in range(ROUNDS):
            row: dict[str, float] = {}
            for side in ("fp32", "int8") if r % 2 == 0 else ("int8", "fp32"):
                target, model = (fp32_server, name) if side == "fp32" else (server, int8_name)
                load = run_load(target.address, model, frames, 16, 1, seconds * 0.75, warmup=1.0)
                row[f"{side}_c16_images_per_s"] = float(load["images_per_s"])
            rounds.append(row)
    return {
        "model": int8_name,
        "quantization": spec.provenance.quantization if spec.provenance else None,
        "batch_invariant": spec.batch_invariant,
        "min_cosine_to_fp32": spec.parity.min_cosine if spec.parity else None,
        "paired_c16": rounds,
        "speedup": float(
            np.median([r["int8_c16_images_per_s"] / r["fp32_c16_images_per_s"] for r in rounds])
        ),
    }


def defaults(model_dir: Path) -> dict[str, Any]:
    """The rules' vectors against transformers' defaults, in PyTorch on the model's checkpoint
    (rebuilt from its provenance): cosine per text or image, the smallest and the median."""
    import torch
    from PIL import Image

    from export.images import parity_images
    from export.parity import load_reference

    spec = load_spec(model_dir / SPEC_FILE)
    assert spec.text is not None
    with tempfile.TemporaryDirectory() as scratch:
        loaded = load_reference(spec, Path(scratch) / "checkpoint")
        hooks = loaded.family.text
        assert hooks is not None
        tokenizer = hooks.tokenizer(loaded.source)
        texts = [item.text for item in hooks.parity_texts()]
        model, window = loaded.model, spec.text.max_length

        def vector(text: str, lower: bool = True, pad: bool = True, mask: bool = False) -> np.ndarray:
            encoded = tokenizer(
                text.lower() if lower else text,
                padding="max_length" if pad else False,
                max_length=window,
                truncation=True,
                return_tensors="pt",
            )
            inputs = dict(encoded) if mask else {"input_ids": encoded["input_ids"]}
            with torch.no_grad():
                features: np.ndarray = model.get_text_features(**inputs)[0].double().numpy()  # type: ignore[operator]
            return features / np.linalg.norm(features)

        torch.set_num_threads(1)
        rules = np.stack([vector(t) for t in texts])
        cases = {
            "attention_mask passed to the model": np.stack([vector(t, mask=True) for t in texts]),
            "no padding (the tokenizer's default)": np.stack([vector(t, pad=False) for t in texts]),
            "no lowercasing (the tokenizer's default)": np.stack([vector(t, lower=False) for t in texts]),
        }
        result: dict[str, Any] = {"texts": len(texts)}
        for case, vectors in cases.items():
            cosine = (rules * vectors).sum(axis=1)
            changed = int((np.abs(rules - vectors).max(axis=1) > 0).sum())
            result[case] = {
                "min_cosine": float(cosine.min()),
                "median_cosine": float(np.median(cosine)),
                "max_abs_normalized": float(np.abs(rules - vectors).max()),
                "items_changed": changed,
            }
        images = parity_images(include_huge=False)
        processor = loaded.processor
        swapped = {2: 3, 3: 2}[int(processor.resample)]  # bilinear <-> bicubic
        other = type(processor)(**{**processor.to_dict(), "resample": swapped})

        def image_vectors(proc: Any) -> np.ndarray:
            pils = [Image.open(io.BytesIO(i.data)).convert("RGB") for i in images]
            pixels = proc(images=pils, return_tensors="pt", input_data_format="channels_last")["pixel_values"]
            with torch.no_grad():
                v = model.get_image_features(pixel_values=pixels).double().numpy()  # type: ignore[operator]
            return v / np.linalg.norm(v, axis=1, keepdims=True)

        ours, theirs = image_vectors(processor), image_vectors(other)
        names = {2: "bilinear", 3: "bicubic"}
        label = f"{names[int(other.resample)]} instead of the checkpoint's {names[int(processor.resample)]}"
        result[label] = {
            "min_cosine": float((ours * theirs).sum(axis=1).min()),
            "median_cosine": float(np.median((ours * theirs).sum(axis=1))),
            "max_abs_normalized": float(np.abs(ours - theirs).max()),
            "items_changed": int((np.abs(ours - theirs).max(axis=1) > 0).sum()),
            "images": len(images),
        }
    return result


def export_cost(out: Path, architecture: str = BASE) -> dict[str, Any]:
    """`python -m export siglip ARCH --random-init` (the whole gate): wall seconds, peak resident
    memory of the export process (ru_maxrss of that child alone, from wait4)."""
    command = [sys.executable, "-m", "export", "siglip", architecture, "--random-init", "--out", str(out)]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    started = time.perf_counter()
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    assert process.stderr is not None
    stderr = process.stderr.read()
    _, status, usage = os.wait4(process.pid, 0)
    seconds = time.perf_counter() - started
    return {
        "command": " ".join(["python", *command[1:]]),
        "exit_status": os.waitstatus_to_exitcode(status),
        "seconds": seconds,
        "cpu_seconds": usage.ru_utime + usage.ru_stime,
        "peak_rss_mib": usage.ru_maxrss / 1024,
        "stderr_tail": stderr.decode(errors="replace")[-400:],
        "files_mib": graph_mib(out) if out.is_dir() else {},
    }


def render(result: dict[str, Any]) -> str:
    """The SigLIP section of RESULTS.md."""
    gate, lines = result["gate"], [f"\n## SigLIP: {result['model']} ({result['weights']})\n"]
    lines.append(
        f"Gate: {gate['texts_ids_identical']}/{gate['texts']} texts with identical ids; text max-abs "
        f"{gate['text_max_abs_normalized']:.2e}, batch {gate['text_batch_max_abs_normalized']:.2e}; "
        f"{gate['images']} images, pixels {gate['image_pixels_max_abs']:g}, max-abs {gate['image_max_abs_normalized']:.2e}.\n"
    )
    lines.append("| round | ORT batch 8 (img/s) | service c16 (img/s) | ratio |\n|---:|---:|---:|---:|")
    for i, row in enumerate(result["paired_c16"]):
        ratio = row["service_c16_images_per_s"] / row["ceiling_b8_images_per_s"]
        lines.append(
            f"| {i + 1} | {row['ceiling_b8_images_per_s']:.1f} | {row['service_c16_images_per_s']:.1f} | {ratio:.3f} |"
        )
    lines.append(
        f"\nService over ceiling (median of rounds): **{result['service_over_ceiling']:.3f}** (target >= 0.93)."
    )
    if "text" in result:
        t = result["text"]
        lines.append(
            f"One text query: service p50 {t['short_query_service_p50_ms']:.2f} ms, model-only p50 "
            f"{t['short_query_model_p50_ms']:.2f} ms, target <= {t['target_ms']:.2f} ms."
        )
    if "int8" in result:
        q = result["int8"]
        lines.append(
            f"int8 ({q['quantization']}): {q['speedup']:.2f}x the fp32 service at c16 (median of "
            f"{len(q['paired_c16'])} rounds), min cosine to fp32 {q['min_cosine_to_fp32']:.5f}, "
            f"batch-invariant {q['batch_invariant']}."
        )
    if "export" in result:
        e = result["export"]
        lines.append(
            f"Export (`{e['command']}`, the whole gate): {e['seconds']:.0f} s wall, {e['cpu_seconds']:.0f} s CPU, "
            f"peak resident {e['peak_rss_mib']:.0f} MiB, exit {e['exit_status']}."
        )
    lines.append(
        f"Resident memory of the server (both graphs loaded, after the runs): {result['rss_after_load_mib']:.0f} MiB; "
        f"files: " + ", ".join(f"{k} {v:.0f} MiB" for k, v in result["files_mib"].items()) + "."
    )
    return "\n".join(lines) + "\n"


def bench_siglip(models_dir: Path, name: str, frames: Path, scratch: Path, seconds: float) -> dict[str, Any]:
    """The service figures of the model `name` in `models_dir` (and of `name`-int8 beside it)."""
    return measure_service(models_dir, name, frames, scratch, seconds)


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.siglip")
    parser.add_argument("model_dir", type=Path)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--defaults", action="store_true", help="transformers' defaults against the rules")
    parser.add_argument("--export", action="store_true", help=f"also time the export of {BASE} (minutes)")
    parser.add_argument("--no-service", action="store_true")
    args = parser.parse_args()
    out: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        scratch = Path(tmp)
        if args.export:
            out["export"] = export_cost(scratch / "export" / "siglip2-base-patch16-224")
        if args.defaults:
            out["defaults"] = defaults(args.model_dir)
        if not args.no_service:
            frames = scratch / "frames"
            frames.mkdir()
            for i in range(32):
                (frames / f"{i:04d}.jpg").write_bytes(photo_jpeg(640, 480, i))
            out["service"] = bench_siglip(
                args.model_dir.parent, args.model_dir.name, frames, scratch, args.seconds
            )
            print(render(out["service"]))
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
