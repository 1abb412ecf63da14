"""The int8 variants (`NAME-int8` beside `NAME` in the models dir) against their fp32 models.

An int8 variant is served by a server of its own (the fp32 server's memory figures stay its own),
up beside the fp32 server. The PyTorch pipeline one image at a time, each service at concurrency
16 and 1, and each graph alone at batch 8 are measured in alternating order, `rounds` times: the
machine's speed drifts 10-20% within minutes, and a ratio of two figures taken minutes apart
would carry that drift.

    python -m bench.int8 models/NAME-int8   # exit 0 if it is a verified export of the current scheme
    python -m bench.int8 --measure models NAME [--avx2-only] [--seconds S] [--rounds N]

`--measure` runs only this comparison (`make bench` runs it inside the whole report) and prints
the per-round images/s and the ratios, with the CPU flags ONNX Runtime saw; `--avx2-only` runs it
all (servers, graphs and PyTorch) in processes that see no AVX-512 or VNNI (bench/cpu.py).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from statistics import mean, median

from embedder.repository import ModelEntry, Repository
from embedder.spec import SPEC_FILE, load_spec
from export.quantize import SCHEME
from export.ready import problem
from tests.support.images import photo_jpeg
from tests.support.processes import ServerProcess

from . import cpu, measure
from .service import bench_server, run_load

ROUNDS = 4
SIDES = ("pytorch", "fp32", "int8")


def variant_problem(directory: Path) -> str | None:
    """Why `directory` is not a current int8 export (an older scheme is re-exported), or None."""
    why = problem(directory)
    if why is not None:
        return why
    spec = load_spec(directory / SPEC_FILE)
    if spec.provenance is None or spec.provenance.quantization != SCHEME:
        return (
            f"quantised by another scheme ({spec.provenance and spec.provenance.quantization}), not: {SCHEME}"
        )
    if not spec.batch_invariant:
        return "not batch-invariant"
    return None


@contextmanager
def int8_server(models_dir: Path, name: str, scratch: Path) -> Iterator[ServerProcess]:
    """`embedder serve` over a folder holding only the int8 variant."""
    folder = scratch / f"{name}-served"
    folder.mkdir()
    (folder / name).symlink_to((models_dir / name).resolve())
    with bench_server(folder, scratch / f"{name}.log") as (server, _):
        yield server


def paired_rounds(
    servers: dict[str, tuple[ServerProcess, str]],
    entries: dict[str, ModelEntry],
    torch_single: Callable[[int], int],
    frames: Path,
    seconds: float,
    rounds: int,
) -> list[dict[str, object]]:
    """Per round, in alternating order: PyTorch one at a time; for fp32 and int8, the service at
    concurrency 16 and 1 and the graph alone at batch 8 (ORT default settings)."""
    sessions = {side: measure.default_session(entries[side].onnx_path) for side in entries}
    out = []
    for r in range(rounds):
        row: dict[str, object] = {}
        for side in SIDES if r % 2 == 0 else SIDES[::-1]:
            if side == "pytorch":
                row["pytorch_single_images_per_s"], _ = measure.rate(lambda: torch_single(1), seconds / 2)
                continue
            server, name = servers[side]
            warmup = min(1.0, seconds / 4)
            row[f"{side}_c16"] = run_load(server.address, name, frames, 16, 1, seconds * 0.75, warmup=warmup)
            row[f"{side}_c1"] = run_load(server.address, name, frames, 1, 1, seconds / 2, warmup=warmup)
            rate = measure.session_rate(sessions[side], entries[side].spec, 8, seconds / 2)
            row[f"{side}_b8_images_per_s"] = rate["images_per_s"]
        out.append(row)
    return out


def summary(rounds: list[dict[str, object]], side: str) -> list[dict[str, object]]:
    """One row per concurrency for the table: the rounds' mean images/s and p99, median p50."""
    rows = []
    for concurrency in (1, 16):
        loads: list[dict[str, object]] = [r[f"{side}_c{concurrency}"] for r in rounds]  # type: ignore[misc]
        codes: dict[str, int] = {}
        for load in loads:
            for code, count in load["codes"].items():  # type: ignore[attr-defined]
                codes[code] = codes.get(code, 0) + count
        rows.append(
            {
                "concurrency": concurrency,
                "per_request": 1,
                "rounds": len(loads),
                "images_per_s": mean(float(x["images_per_s"]) for x in loads),  # type: ignore[arg-type]
                "p50_ms": median(float(x["p50_ms"]) for x in loads),  # type: ignore[arg-type]
                "p99_ms": mean(float(x["p99_ms"]) for x in loads),  # type: ignore[arg-type]
                "codes": codes,
            }
        )
    return rows


def measure_alone(models_dir: Path, name: str, seconds: float, rounds: int) -> None:
    """fp32 and int8 services (a server each), their graphs at batch 8 and PyTorch one at a time,
    alternating `rounds` times on 64 bench frames; a markdown table of the rounds and ratios."""
    repo = Repository.scan(models_dir)
    int8_name = f"{name}-int8"
    entries = {"fp32": repo.entries[name], "int8": repo.entries[int8_name]}
    frames = [photo_jpeg(640, 480, seed) for seed in range(64)]  # make bench's frames
    with tempfile.TemporaryDirectory() as tmp:
        scratch = Path(tmp)
        frames_dir = scratch / "frames"
        frames_dir.mkdir()
        for i, data in enumerate(frames):
            (frames_dir / f"{i:04d}.jpg").write_bytes(data)
        torch_single = measure.torch_runner(entries["fp32"].spec, frames, scratch / "torch")
        with (
            int8_server(models_dir, name, scratch) as fp32,
            int8_server(models_dir, int8_name, scratch) as int8,
        ):
            servers = {"fp32": (fp32, name), "int8": (int8, int8_name)}
            out = paired_rounds(servers, entries, torch_single, frames_dir, seconds, rounds)
    print(
        f"{name}: int8 ({entries['int8'].spec.provenance.quantization if entries['int8'].spec.provenance else '?'})"
    )
    print(f"CPU as ONNX Runtime saw it: {cpu.describe()}\n")
    print(
        "| round | PyTorch 1-at-a-time | fp32 c16 | int8 c16 | int8 ÷ fp32 c16 | fp32 b8 | int8 b8 | int8 ÷ fp32 b8 |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|---:|")
    for i, r in enumerate(out, 1):
        f16, i16 = (float(r[f"{s}_c16"]["images_per_s"]) for s in ("fp32", "int8"))  # type: ignore[index]
        f8, i8 = float(r["fp32_b8_images_per_s"]), float(r["int8_b8_images_per_s"])  # type: ignore[arg-type]
        torch = float(r["pytorch_single_images_per_s"])  # type: ignore[arg-type]
        print(
            f"| {i} | {torch:.2f} | {f16:.2f} | {i16:.2f} | {i16 / f16:.2f} | {f8:.2f} | {i8:.2f} | {i8 / f8:.2f} |"
        )
    service = {s: mean(float(r[f"{s}_c16"]["images_per_s"]) for r in out) for s in ("fp32", "int8")}  # type: ignore[index]
    torch_mean = mean(float(r["pytorch_single_images_per_s"]) for r in out)  # type: ignore[arg-type]
    print(
        f"\nmeans: int8 service ÷ fp32 service {service['int8'] / service['fp32']:.2f}; "
        f"int8 service ÷ PyTorch one at a time {service['int8'] / torch_mean:.2f}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "paths", nargs="+", type=Path, help="NAME-int8 dir; or with --measure: MODELS_DIR NAME"
    )
    parser.add_argument("--measure", action="store_true")
    parser.add_argument("--avx2-only", action="store_true")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--rounds", type=int, default=ROUNDS)
    args = parser.parse_args()
    if not args.measure:
        why = variant_problem(args.paths[0])
        if why:
            print(f"{args.paths[0]}: {why}")
        raise SystemExit(1 if why else 0)
    if args.avx2_only and not cpu.masked():
        command = [sys.executable, "-m", "bench.int8", "--measure", *map(str, args.paths)]
        command += ["--seconds", str(args.seconds), "--rounds", str(args.rounds)]
        raise SystemExit(subprocess.run(command, env=cpu.avx2_only_env(), check=False).returncode)
    measure_alone(args.paths[0], str(args.paths[1]), args.seconds, args.rounds)


if __name__ == "__main__":
    main()
