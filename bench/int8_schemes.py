"""int8 schemes side by side on one fp32 image graph, ORT alone at batch 8, in alternating rounds
(docs/performance.md, "int8"):

- per-token: `--quantize int8 --int8-scheme per-token` (one activation scale per token, computed
  in the graph);
- static: `--quantize int8` (activation ranges calibrated on `export/calibration.py`'s images,
  the bias folded into the integer product), at several calibration percentiles (one speed:
  the percentile changes only the constants);
- ORT's own dynamic (one activation scale per tensor, i.e. per batch) and static QDQ graphs.

    python -m bench.int8_schemes models/clip-vit-base-patch32 [--avx2-only] [--gemm]

`--avx2-only` re-runs the whole comparison in a process that sees a CPU without AVX-512 or VNNI
(bench/cpu.py), so ONNX Runtime picks the AVX2 kernels. Prints a markdown table: images/s per
round, the median ratio to fp32, the minimum cosine to fp32 on the gate's images (which the
calibration never saw) and on the out-of-distribution images, the share of activations the static
ranges clip on those, and a row alone against the same row in a batch of 8. `--gemm` times the
kernels alone instead: one weight MatMul of CLIP's MLP shape, fp32 against the static int8 form
(GMAC/s), which bounds what any int8 graph can gain over fp32 on the CPU.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from statistics import median

import numpy as np
import onnx
import onnxruntime as ort
from onnxruntime.quantization import (
    CalibrationDataReader,
    QuantFormat,
    QuantType,
    quantize_dynamic,
    quantize_static,
)
from onnxruntime.quantization.shape_inference import quant_pre_process

from embedder.preprocess import Preprocessor
from embedder.runtime import open_session, run
from embedder.spec import SPEC_FILE, load_spec
from export.calibration import calibration_images, unseen_images
from export.images import ParityImage, parity_images
from export.quantize import (
    Range,
    activation_ranges,
    probe_session,
    quantize_graph,
    quantize_int8,
    weight_matmuls,
)

from . import cpu
from .measure import rate

BATCH = 8
PERCENTILES = (100.0, 99.999, 99.99)


class _Pixels(CalibrationDataReader):  # type: ignore[misc]
    def __init__(self, name: str, pixels: np.ndarray) -> None:
        self._feeds: Iterator[dict[str, np.ndarray]] = iter({name: p[None]} for p in pixels)

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._feeds, None)


def ort_graphs(fp32: Path, calibration: np.ndarray, input_name: str, scratch: Path) -> dict[str, Path]:
    """ORT's dynamic (per-tensor activations) and static QDQ graphs of `fp32`: U8S8, weights per
    channel with 7-bit range like ours; static quantises the weight MatMuls only, MinMax-calibrated
    on the calibration images."""
    prepared = scratch / "prepared.onnx"
    quant_pre_process(str(fp32), str(prepared), skip_symbolic_shape=False)
    dynamic, static = scratch / "ort_dynamic.onnx", scratch / "ort_static.onnx"
    quantize_dynamic(
        str(prepared), str(dynamic), weight_type=QuantType.QInt8, per_channel=True, reduce_range=True
    )
    quantize_static(
        str(prepared),
        str(static),
        _Pixels(input_name, calibration),
        quant_format=QuantFormat.QDQ,
        op_types_to_quantize=["MatMul"],
        per_channel=True,
        reduce_range=True,
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
        extra_options={"MatMulConstBOnly": True},
    )
    return {"ORT dynamic, per-tensor scales": dynamic, "ORT static QDQ, MinMax": static}


def _batch_of(session: ort.InferenceSession, batch: np.ndarray) -> int:
    return len(run(session, batch))


def _unit(v: np.ndarray) -> np.ndarray:
    return v / np.linalg.norm(v, axis=-1, keepdims=True)


def _pixels(pre: Preprocessor, images: list[ParityImage]) -> np.ndarray:
    return np.stack([pre.from_bytes(item.data) for item in images])


def clipped_share(fp32: Path, pixels: np.ndarray, ranges: dict[str, Range], scratch: Path) -> float:
    """The largest share, over the quantised tensors, of activations outside their static range."""
    names = sorted(ranges)
    session = probe_session(fp32, names, scratch)
    worst = 0.0
    for image in pixels:
        for name, values in zip(
            names, session.run(names, {session.get_inputs()[0].name: image[None]}), strict=True
        ):
            span = ranges[name]
            low, high = min(span.low, 0.0), max(span.high, 0.0)
            worst = max(worst, float(((values < low) | (values > high)).mean()))
    return worst


def compare(model_dir: Path, rounds: int, seconds: float) -> None:
    spec = load_spec(model_dir / SPEC_FILE)
    pre = Preprocessor(spec.preprocessing)
    gate = _pixels(pre, parity_images(include_huge=False))
    unseen = _pixels(pre, unseen_images())
    calibration = _pixels(pre, calibration_images())
    fp32 = model_dir / spec.onnx_file
    with tempfile.TemporaryDirectory() as tmp:
        scratch = Path(tmp)
        graphs = {"fp32": fp32, "per-token": scratch / "per_token.onnx"}
        quantize_int8(fp32, graphs["per-token"])
        ranges = {}
        everywhere = sorted({node.input[0] for node, _ in weight_matmuls(onnx.load(str(fp32)))})
        for p in PERCENTILES:
            (scratch / f"calib{p}").mkdir()
            ranges[p] = activation_ranges(fp32, calibration, scratch / f"calib{p}", p)
            graphs[f"static, percentile {p}"] = scratch / f"static_{p}.onnx"
            quantize_int8(fp32, graphs[f"static, percentile {p}"], ranges[p])
        (scratch / "everywhere").mkdir()
        graphs["static everywhere (attention outputs too), MinMax"] = scratch / "static_everywhere.onnx"
        quantize_int8(
            fp32,
            graphs["static everywhere (attention outputs too), MinMax"],
            activation_ranges(fp32, calibration, scratch / "everywhere", 100.0, everywhere),
        )
        graphs.update(ort_graphs(fp32, calibration, spec.input_name, scratch))
        sessions = {name: open_session(path, 2) for name, path in graphs.items()}
        clipping = {p: clipped_share(fp32, unseen, ranges[p], scratch) for p in PERCENTILES}
    accuracy = {}
    for name, session in sessions.items():
        cosines = []
        for pixels in (gate, unseen):
            reference = _unit(np.concatenate([run(sessions["fp32"], p[None]) for p in pixels]))
            single = np.concatenate([run(session, p[None]) for p in pixels])
            cosines.append(float((_unit(single) * reference).sum(axis=1).min()))
        single = np.concatenate([run(session, p[None]) for p in gate[:BATCH]])
        accuracy[name] = (*cosines, float(np.abs(run(session, gate[:BATCH]) - single).max()))
    timed = [
        n for n in sessions if not n.startswith("static, percentile") or n.endswith(f" {PERCENTILES[0]}")
    ]
    rates: dict[str, list[float]] = {name: [] for name in timed}
    for r in range(rounds):
        for name in timed if r % 2 == 0 else timed[::-1]:
            rates[name].append(rate(partial(_batch_of, sessions[name], gate[:BATCH]), seconds)[0])
    base = median(rates["fp32"])
    print(f"{model_dir.name}, ORT {ort.__version__}, CPU as ONNX Runtime sees it: {cpu.describe()}\n")
    print(
        f"| graph | batch {BATCH} images/s per round | median ÷ fp32 | min cosine, gate images "
        f"| min cosine, out-of-distribution | worst clipped share | row alone vs in batch |"
    )
    print("|---|---|---:|---:|---:|---:|---:|")
    for name in sessions:
        values = rates.get(name) or rates[f"static, percentile {PERCENTILES[0]}"]
        gate_cos, unseen_cos, batch_diff = accuracy[name]
        share = next((f"{clipping[p]:.1e}" for p in PERCENTILES if name == f"static, percentile {p}"), "")
        per_round = " ".join(f"{v:.1f}" for v in values) if name in rates else "(as above)"
        print(
            f"| {name} | {per_round} | {median(values) / base:.2f} | {gate_cos:.5f} | {unseen_cos:.5f} "
            f"| {share} | {batch_diff:.1e} |"
        )


def _gemm_graph(integer: bool, rows: int, depth: int, width: int) -> bytes:
    """One weight MatMul [rows, depth] x [depth, width]: fp32, or as the static scheme writes it."""
    rng = np.random.default_rng(0)
    weight = (rng.standard_normal((depth, width)) / np.sqrt(depth)).astype(np.float32)
    model = onnx.helper.make_model(
        onnx.helper.make_graph(
            [onnx.helper.make_node("MatMul", ["x", "w"], ["y"])],
            "gemm",
            [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [rows, depth])],
            [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [rows, width])],
            [onnx.numpy_helper.from_array(weight, "w")],
        ),
        opset_imports=[onnx.helper.make_opsetid("", 17)],
    )
    if integer:
        quantize_graph(model, {"x": Range(-4.0, 4.0)})
    return model.SerializeToString()  # type: ignore[no-any-return]


def gemm_alone(rounds: int, seconds: float) -> None:
    """The kernels alone: CLIP ViT-B/32's MLP product at batch 8 (400 tokens x 768 x 3072), fp32
    against the static scheme's QuantizeLinear + MatMulIntegerToFloat, alternating."""
    rows, depth, width = 400, 768, 3072
    x = np.random.default_rng(1).uniform(-4, 4, (rows, depth)).astype(np.float32)
    sessions = {}
    for name, integer in (("fp32 MatMul", False), ("int8 static", True)):
        options = ort.SessionOptions()
        options.intra_op_num_threads = 2
        sessions[name] = ort.InferenceSession(
            _gemm_graph(integer, rows, depth, width), options, providers=["CPUExecutionProvider"]
        )
    rates: dict[str, list[float]] = {name: [] for name in sessions}
    for r in range(rounds):
        for name in list(sessions) if r % 2 == 0 else list(sessions)[::-1]:
            step = partial(lambda s: len(s.run(None, {"x": x})[0]), sessions[name])
            rates[name].append(rate(step, seconds)[0] * depth * width / 1e9)  # GMAC/s
    print(
        f"one weight MatMul {rows}x{depth}x{width}, 2 threads; CPU as ONNX Runtime sees it: {cpu.describe()}\n"
    )
    print("| kernel | GMAC/s per round | median ÷ fp32 |\n|---|---|---:|")
    base = median(rates["fp32 MatMul"])
    for name, values in rates.items():
        print(f"| {name} | {' '.join(f'{v:.1f}' for v in values)} | {median(values) / base:.2f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("fp32_dir", type=Path)
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--avx2-only", action="store_true", help="measure the AVX2 kernels (bench/cpu.py)")
    parser.add_argument("--gemm", action="store_true", help="one weight MatMul alone, fp32 against int8")
    args = parser.parse_args()
    if args.avx2_only and not cpu.masked():
        command = [sys.executable, "-m", "bench.int8_schemes", str(args.fp32_dir)]
        command += ["--rounds", str(args.rounds), "--seconds", str(args.seconds)] + (
            ["--gemm"] if args.gemm else []
        )
        raise SystemExit(subprocess.run(command, env=cpu.avx2_only_env(), check=False).returncode)
    if args.gemm:
        gemm_alone(args.rounds, args.seconds)
    else:
        compare(args.fp32_dir, args.rounds, args.seconds)


if __name__ == "__main__":
    main()
