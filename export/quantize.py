"""int8 variants: dynamic quantisation of the fp32 graph, gated by cosine to the fp32 graph.

Choice (measured on this AVX2-without-VNNI CPU, see the README's benchmark section): signed int8
weights (U8S8) per output channel with `reduce_range` (7-bit weights). Without VNNI, ORT's U8S8
kernels use VPMADDUBSW, which saturates on full-range weights; 7-bit weights avoid saturation and
keep U8S8's speed, while U8U8 measured slower.

Dynamic quantisation derives activation scales from the whole input tensor, so an image's vector
depends slightly on its batch-mates. Such a model is written with `batch_invariant: false` and the
server runs it one image per session.run.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path

from onnxruntime.quantization import QuantType, quantize_dynamic
from onnxruntime.quantization.shape_inference import quant_pre_process

from embedder.runtime import open_session, run

from .parity import Reference

log = logging.getLogger(__name__)
SCHEME = "int8 dynamic, U8S8 (uint8 activations, int8 weights), per-channel, reduce_range"


def quantize_int8(fp32_path: Path, out_path: Path) -> None:
    with tempfile.TemporaryDirectory() as scratch:
        prepared = Path(scratch) / "prepared.onnx"
        quant_pre_process(str(fp32_path), str(prepared), skip_symbolic_shape=False)
        quantize_dynamic(
            str(prepared), str(out_path), weight_type=QuantType.QInt8, per_channel=True, reduce_range=True
        )


def fp32_reference(fp32_path: Path, threads: int) -> Reference:
    """The quantised graph's reference: the fp32 graph on the same pixels."""
    session = open_session(fp32_path, threads)

    def embed(hf_pixels: object, ours: object) -> object:
        return run(session, ours[None])[0]  # type: ignore[index]

    return embed  # type: ignore[return-value]
