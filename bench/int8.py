"""The int8 variants (`NAME-int8` beside `NAME` in the models dir) against their fp32 models.

An int8 variant is served by a server of its own (the fp32 server's memory figures stay its own),
up beside the fp32 server. The PyTorch pipeline one image at a time, each service at concurrency
16 and 1, and each graph alone at batch 8 are measured in alternating order, `rounds` times: the
machine's speed drifts 10-20% within minutes, and a ratio of two figures taken minutes apart
would carry that drift.

    python -m bench.int8 models/NAME-int8   # exit 0 if it is a verified export of the current scheme
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from statistics import mean, median

from embedder.repository import ModelEntry
from embedder.spec import SPEC_FILE, load_spec
from export.quantize import SCHEME
from export.ready import problem
from tests.support.processes import ServerProcess

from . import measure
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


if __name__ == "__main__":
    why = variant_problem(Path(sys.argv[1]))
    if why:
        print(f"{sys.argv[1]}: {why}")
    raise SystemExit(1 if why else 0)
