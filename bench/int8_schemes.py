"""int8 schemes side by side on one fp32 image graph: the per-token graph `--quantize int8` writes,
ORT's dynamic quantisation (one activation scale per tensor) and static QDQ calibrated on the gate's
images, each against fp32 at batch 8, in alternating rounds (docs/performance.md, "int8").

    python -m bench.int8_schemes models/clip-vit-base-patch32 models/clip-vit-base-patch32-int8

Prints a markdown table: images/s per round, the median ratio to fp32, the minimum cosine to fp32
on the gate's images, and a row alone against the same row in a batch of 8.
"""

from __future__ import annotations

import argparse
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
from export.images import parity_images

from .measure import rate

BATCH = 8


class _GateImages(CalibrationDataReader):  # type: ignore[misc]
    def __init__(self, name: str, pixels: np.ndarray) -> None:
        self._feeds: Iterator[dict[str, np.ndarray]] = iter({name: p[None]} for p in pixels)

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._feeds, None)


def alternatives(fp32: Path, pixels: np.ndarray, input_name: str, scratch: Path) -> dict[str, Path]:
    """ORT's dynamic (per-tensor activations) and static QDQ graphs of `fp32`: both U8S8, weights per
    channel with 7-bit range, as the per-token graph; static quantises the weight MatMuls only
    (norms, softmax, GELU and attention products stay fp32, as in the per-token graph), the
    patch embedding and the last MatMul excluded, MinMax-calibrated on `pixels`."""
    prepared = scratch / "prepared.onnx"
    quant_pre_process(str(fp32), str(prepared), skip_symbolic_shape=False)
    dynamic, static = scratch / "dynamic.onnx", scratch / "static.onnx"
    quantize_dynamic(
        str(prepared), str(dynamic), weight_type=QuantType.QInt8, per_channel=True, reduce_range=True
    )
    nodes = onnx.load(str(prepared), load_external_data=False).graph.node
    excluded = [n.name for n in nodes if n.op_type == "Conv"]
    excluded += [n.name for n in nodes if n.op_type == "MatMul"][-1:]
    quantize_static(
        str(prepared),
        str(static),
        _GateImages(input_name, pixels),
        quant_format=QuantFormat.QDQ,
        op_types_to_quantize=["MatMul"],
        per_channel=True,
        reduce_range=True,
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
        nodes_to_exclude=excluded,
        extra_options={"MatMulConstBOnly": True},
    )
    return {"ORT dynamic, per-tensor scales": dynamic, "static QDQ, calibrated": static}


def _batch_of(session: ort.InferenceSession, batch: np.ndarray) -> int:
    return len(run(session, batch))


def _unit(v: np.ndarray) -> np.ndarray:
    return v / np.linalg.norm(v, axis=-1, keepdims=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("fp32_dir", type=Path)
    parser.add_argument("int8_dir", type=Path)
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--seconds", type=float, default=8.0)
    args = parser.parse_args()
    spec = load_spec(args.fp32_dir / SPEC_FILE)
    pre = Preprocessor(spec.preprocessing)
    pixels = np.stack([pre.from_bytes(item.data) for item in parity_images(include_huge=False)])
    with tempfile.TemporaryDirectory() as scratch:
        graphs = {"fp32": args.fp32_dir / spec.onnx_file}
        graphs["per-token int8 (`--quantize int8`)"] = args.int8_dir / spec.onnx_file
        graphs.update(alternatives(graphs["fp32"], pixels, spec.input_name, Path(scratch)))
        sessions = {name: open_session(path, 2) for name, path in graphs.items()}
    reference = _unit(run(sessions["fp32"], pixels))
    accuracy = {}
    for name, session in sessions.items():
        single = np.concatenate([run(session, p[None]) for p in pixels])
        full = len(pixels) // BATCH * BATCH
        batched = np.concatenate([run(session, pixels[i : i + BATCH]) for i in range(0, full, BATCH)])
        cosine = float((_unit(single) * reference).sum(axis=1).min())
        accuracy[name] = (cosine, float(np.abs(batched - single[:full]).max()))
    batch = pixels[:BATCH]
    rates: dict[str, list[float]] = {name: [] for name in sessions}
    for r in range(args.rounds):
        for name in list(sessions) if r % 2 == 0 else list(sessions)[::-1]:
            step = partial(_batch_of, sessions[name], batch)
            rates[name].append(rate(step, args.seconds)[0])
    base = median(rates["fp32"])
    print(
        f"| graph, batch {BATCH} | images/s per round | median ÷ fp32 | min cosine to fp32 | row alone vs in batch (raw max-abs) |"
    )
    print("|---|---|---:|---:|---:|")
    for name, values in rates.items():
        cosine, batch_diff = accuracy[name]
        per_round = " ".join(f"{v:.1f}" for v in values)
        print(f"| {name} | {per_round} | {median(values) / base:.2f} | {cosine:.5f} | {batch_diff:.1e} |")


if __name__ == "__main__":
    main()
