"""`make bench`: one run, same images, every side measured; writes bench/RESULTS.md and results.json.

    python -m bench --models-dir models [--smoke] [--clip NAME] [--dinov2 NAME] [--siglip NAME]

--smoke runs seconds-long measurements (CI), on whatever models are named.
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

from embedder.cpus import available_cpus
from embedder.repository import Repository
from embedder.sessions import describe
from embedder.spec import ModelSpec
from export.spec_writer import library_versions
from tests.support.images import photo_jpeg
from tests.support.processes import ServerProcess

from . import cpu as cpu_flags
from . import int8 as int8_bench
from . import measure, timings
from . import siglip as siglip_bench
from .http import bench_http
from .report import render
from .service import bench_server, run_load
from .text import bench_text

LOADS = [(1, 1), (4, 1), (16, 1), (2, 8)]  # (concurrency, images per request), on 640x480 frames
PAIRED_ROUNDS = 6  # the service-over-ceiling ratio: ceiling and service alternate this many times


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench")
    parser.add_argument("--models-dir", type=Path, default=Path("models"))
    parser.add_argument("--clip", default="clip-vit-base-patch32")
    parser.add_argument("--dinov2", default="dinov2-small")
    parser.add_argument("--siglip", default="siglip2-base-patch16-224", help="measured when exported")
    parser.add_argument("--smoke", action="store_true", help="seconds, not minutes (CI)")
    parser.add_argument("--out", type=Path, default=Path("bench"))
    return parser.parse_args()


def bench_images(count: int = 64, large: int = 4) -> tuple[list[bytes], list[bytes]]:
    """`count` 640x480 frames (keyframe-sized) and `large` 4032x3024 photos, all distinct."""
    frames = [photo_jpeg(640, 480, seed) for seed in range(count)]
    photos = [photo_jpeg(4032, 3024, 10_000 + seed) for seed in range(large)]
    return frames, photos


def machine() -> dict[str, object]:
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor(),
    )
    flags = Path("/proc/cpuinfo").read_text()
    return {
        "cpu": cpu,
        "cpus_available": available_cpus(),
        "avx512": "avx512f" in flags,
        "vnni": "vnni" in flags,
        "kernels_chosen_by": cpu_flags.describe(),  # what CPUID tells ORT (bench/cpu.py's mask changes it)
        "python": platform.python_version(),
        "versions": library_versions(),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }


def bench_model(
    repo: Repository,
    name: str,
    frames: list[bytes],
    dirs: dict[str, Path],
    server: ServerProcess,
    seconds: float,
    scratch: Path,
) -> dict[str, object]:
    entry = repo.entries[name]
    result: dict[str, object] = {
        "model": name,
        "family": entry.spec.family,
        "weights": entry.spec.weights_kind,
        "dim": entry.spec.embedding_dim,
    }
    result["pytorch"] = measure.torch_pipeline(entry.spec, frames, seconds, scratch / name)
    result["ceiling_default"] = measure.ceiling(entry.onnx_path, entry.spec, seconds)
    result["ceiling_served_settings"] = measure.ceiling(
        entry.onnx_path, entry.spec, seconds, default_settings=False
    )
    result["decode_ms"] = measure.decode_cost(entry.spec, frames, seconds / 2)
    result["service"] = [
        run_load(server.address, name, dirs["frames"], c, k, seconds * 1.5, warmup=min(2.0, seconds / 2))
        for c, k in LOADS
    ]
    # Phone-photo-sized JPEGs: decoding and resizing 12 MP costs more than the model; shown apart.
    result["service_large_photos"] = run_load(
        server.address, name, dirs["photos"], 4, 1, seconds * 1.5, warmup=2.0
    )
    result["paired_c16"] = paired_rounds(
        server,
        name,
        entry.onnx_path,
        entry.spec,
        dirs["frames"],
        seconds,
        PAIRED_ROUNDS if seconds >= 5 else 1,
    )
    int8 = repo.entries.get(f"{name}-int8")
    if int8 is not None and int8.onnx_path.exists():
        result["int8"] = {
            "model": int8.name,
            "batch_invariant": int8.spec.batch_invariant,
            "quantization": int8.spec.provenance.quantization if int8.spec.provenance else None,
            "min_cosine_to_fp32": int8.spec.parity.min_cosine if int8.spec.parity else None,
            "ceiling_default": measure.ceiling(int8.onnx_path, int8.spec, seconds),
        }
    return result


def paired_rounds(
    server: ServerProcess,
    name: str,
    onnx_path: Path,
    spec: ModelSpec,
    frames: Path,
    seconds: float,
    rounds: int,
) -> list[dict[str, float]]:
    """The ceiling (ORT batch 8, default settings) and the service at concurrency 16, measured in
    alternating order, `rounds` times. The machine's speed drifts by several percent over minutes,
    so a ratio of two measurements taken minutes apart carries that drift; alternating them in
    short pieces keeps both sides under the same conditions."""
    session = measure.default_session(onnx_path)
    out = []
    for r in range(rounds):
        row: dict[str, float] = {}
        for side in ("ceiling", "service") if r % 2 == 0 else ("service", "ceiling"):
            if side == "ceiling":
                row["ceiling_b8_images_per_s"] = measure.session_rate(session, spec, 8, seconds / 2)[
                    "images_per_s"
                ]
            else:
                load = run_load(
                    server.address, name, frames, 16, 1, seconds * 0.75, warmup=min(1.0, seconds / 4)
                )
                row["service_c16_images_per_s"] = float(load["images_per_s"])  # type: ignore[arg-type]
        out.append(row)
    return out


def bench_int8(
    repo: Repository,
    models_dir: Path,
    model: dict[str, object],
    fp32_server: ServerProcess,
    frames: list[bytes],
    frames_dir: Path,
    seconds: float,
    scratch: Path,
) -> None:
    """The int8 variant on a server of its own, measured in alternation with the fp32 service (up
    beside it) and the PyTorch pipeline (bench/int8.py)."""
    name = str(model["model"])
    int8_name = f"{name}-int8"
    entries = {"fp32": repo.entries[name], "int8": repo.entries[int8_name]}
    torch_single = measure.torch_runner(entries["fp32"].spec, frames, scratch / f"{int8_name}-torch")
    with int8_bench.int8_server(models_dir, int8_name, scratch) as server:
        servers = {"fp32": (fp32_server, name), "int8": (server, int8_name)}
        rounds = int8_bench.paired_rounds(
            servers, entries, torch_single, frames_dir, seconds, int8_bench.ROUNDS if seconds >= 5 else 1
        )
    int8: dict[str, object] = model["int8"]  # type: ignore[assignment]
    int8["paired"] = rounds
    int8["service"] = int8_bench.summary(rounds, "int8")
    int8["fp32_service"] = int8_bench.summary(rounds, "fp32")


def main() -> int:
    args = parse_args()
    seconds = 1.0 if args.smoke else 10.0
    repo = Repository.scan(args.models_dir)
    names = [n for n in (args.clip, args.dinov2) if n in repo.entries]
    frames, photos = bench_images(count=16 if args.smoke else 64, large=1 if args.smoke else 4)
    results: dict[str, object] = {
        "machine": machine(),
        "smoke": args.smoke,
        "seconds_per_measurement": seconds,
    }
    with tempfile.TemporaryDirectory() as tmp:
        scratch, clip_only = Path(tmp), Path(tmp) / "clip-only"
        dirs = {"frames": scratch / "frames", "photos": scratch / "photos"}
        for kind, images in (("frames", frames), ("photos", photos)):
            dirs[kind].mkdir()
            for i, data in enumerate(images):
                (dirs[kind] / f"{i:04d}.jpg").write_bytes(data)
        clip_only.mkdir()
        (clip_only / args.clip).symlink_to((args.models_dir / args.clip).resolve())
        with bench_server(clip_only, scratch / "cold.log") as (_, ready_seconds):
            results["cold_start_clip_s"] = ready_seconds
        models_dir = scratch / "served"
        models_dir.mkdir()
        for name in names:
            (models_dir / name).symlink_to((args.models_dir / name).resolve())
        with bench_server(models_dir, scratch / "served.log") as (server, _):
            results["models"] = [bench_model(repo, n, frames, dirs, server, seconds, scratch) for n in names]
            clip = repo.entries.get(args.clip)
            if clip is not None and clip.spec.text is not None:
                results["text"] = {"model": args.clip, **bench_text(clip, server, scratch, seconds)}
            results["rss_both_loaded_mb"] = server.rss_mib()
            # Once batches stop, the server hands freed heap back within ~2-7 s (embedder/memory.py).
            results["rss_at_rest_after_s"] = 1.0 if args.smoke else 8.0
            time.sleep(results["rss_at_rest_after_s"])  # type: ignore[arg-type]
            results["rss_at_rest_mb"] = server.rss_mib()
            # every graph the server has loaded by now: the text section loaded CLIP's text tower
            results["onnx_mb"] = {
                describe((n, modality)): repo.entries[n].graph_path(modality).stat().st_size / 2**20
                for n in names
                for modality in repo.entries[n].spec.modalities
            }
            for model in results["models"]:  # type: ignore[attr-defined]
                if "int8" in model:
                    bench_int8(repo, args.models_dir, model, server, frames, dirs["frames"], seconds, scratch)
        if args.clip in repo.entries:  # both front ends of one server, alternating (bench/http.py)
            results["http"] = bench_http(args.models_dir, args.clip, scratch, seconds, args.smoke)
        if args.clip in repo.entries:  # the speeds `make test` holds only as properties (issue 26)
            results["timings"] = timings.measure(args.models_dir, args.clip, scratch, args.smoke)
        if args.siglip in repo.entries:  # SigLIP 2 on a server of its own (bench/siglip.py, issue 24)
            siglip = siglip_bench.bench_siglip(args.models_dir, args.siglip, dirs["frames"], scratch, seconds)
            if not args.smoke:
                siglip["export"] = siglip_bench.export_cost(scratch / "siglip-export" / args.siglip)
            results["siglip"] = siglip
    args.out.mkdir(parents=True, exist_ok=True)
    suffix = "-smoke" if args.smoke else ""
    (args.out / f"results{suffix}.json").write_text(json.dumps(results, indent=2) + "\n")
    report = render(results) + (siglip_bench.render(results["siglip"]) if "siglip" in results else "")
    (args.out / f"RESULTS{suffix}.md").write_text(report)
    print(report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
