"""torch module -> ONNX file with the common graph contract, checked by the ONNX checker (and, for
a family with a text tower, the text graph: `input_ids` [, `attention_mask`] -> `embedding`).

Why torch.onnx.export and not optimum's exporter: optimum's CLIP configs export the whole
two-tower model or `image_embeds` from CLIPVisionModelWithProjection, and its DINOv2 config
exports `last_hidden_state`/`pooler_output` with the position-embedding interpolation inside the
graph. Neither is the contract (`pixel_values` -> `embedding`, pooling chosen at export, no
interpolation), so the module is wrapped here and exported directly with the TorchScript-based
exporter, which produces a static, checkable graph with a dynamic batch axis.
"""

from __future__ import annotations

import shutil
import tempfile
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import onnx
import torch

DEFAULT_OPSET = 17
PROTOBUF_LIMIT = 2**31 - 1  # the largest protobuf message: a graph over it keeps its weights outside
DATA_SUFFIX = ".data"  # model.onnx -> model.onnx.data: the external-data file beside its graph


def data_path(path: Path) -> Path:
    """Where the graph at `path` keeps its weights when they are external."""
    return path.with_name(path.name + DATA_SUFFIX)


@contextmanager
def onnx_target(path: Path, external: bool = False) -> Iterator[Path]:
    """Where torch.onnx.export writes, in a scratch folder beside `path`; then the graph moves to
    `path` as written (inline), or, when it is over protobuf's 2 GB limit (the exporter then writes
    one file per tensor) or `external` is asked, is saved again with every weight in one
    external-data file, `data_path(path)`."""
    data_path(path).unlink(missing_ok=True)
    with tempfile.TemporaryDirectory(dir=path.parent, prefix=".export-") as scratch:
        raw = Path(scratch) / path.name
        yield raw
        spilled = any(p != raw for p in Path(scratch).iterdir())
        if not (external or spilled or raw.stat().st_size > PROTOBUF_LIMIT):
            shutil.move(raw, path)  # the exporter's bytes, unchanged
            return
        model = onnx.load(str(raw))  # with the exporter's per-tensor files, if any
        onnx.save_model(
            model,
            str(path),
            save_as_external_data=True,
            all_tensors_to_one_file=True,
            location=data_path(path).name,
            size_threshold=1024,
        )
        data_path(path).chmod(path.stat().st_mode & 0o777)  # onnx creates it 0600; readable as its graph


def export_onnx(
    module: torch.nn.Module,
    path: Path,
    height: int,
    width: int,
    opset: int = DEFAULT_OPSET,
    external: bool = False,
) -> None:
    dummy = torch.zeros(2, 3, height, width)
    with warnings.catch_warnings(), torch.no_grad(), onnx_target(path, external) as target:
        warnings.simplefilter("ignore")  # tracer warnings about python control flow on shapes
        torch.onnx.export(
            module,
            (dummy,),
            str(target),
            input_names=["pixel_values"],
            output_names=["embedding"],
            dynamic_axes={"pixel_values": {0: "batch"}, "embedding": {0: "batch"}},
            opset_version=opset,
            do_constant_folding=True,
            dynamo=False,
        )
    check_graph(path, height, width)


def check_graph(path: Path, height: int, width: int) -> None:
    """ONNX checker plus the contract: one float input [N,3,H,W], one float output [N,D]."""
    onnx.checker.check_model(str(path), full_check=True)
    graph = onnx.load(str(path), load_external_data=False).graph
    inputs = [i for i in graph.input if i.name not in {init.name for init in graph.initializer}]
    if [i.name for i in inputs] != ["pixel_values"] or [o.name for o in graph.output] != ["embedding"]:
        raise SystemExit(f"{path}: graph must map pixel_values -> embedding")
    dims = inputs[0].type.tensor_type.shape.dim
    shape = [d.dim_param or d.dim_value for d in dims]
    if len(shape) != 4 or not isinstance(shape[0], str) or shape[1:] != [3, height, width]:
        raise SystemExit(f"{path}: pixel_values has shape {shape}, expected [batch,3,{height},{width}]")


def export_text_onnx(
    module: torch.nn.Module,
    path: Path,
    inputs: dict[str, torch.Tensor],
    embedding_dim: int,
    opset: int = DEFAULT_OPSET,
    external: bool = False,
) -> None:
    """The text tower: its int64 [N,L] inputs, in the order the module takes them (`input_ids`,
    and `attention_mask` where the family's graph takes it) -> `embedding` [N,D], N and L dynamic.
    Traced on a real padded batch (rows of different lengths)."""
    axes = {0: "batch", 1: "sequence"}
    names = list(inputs)
    with warnings.catch_warnings(), torch.no_grad(), onnx_target(path, external) as target:
        warnings.simplefilter("ignore")  # tracer warnings about python control flow on shapes
        torch.onnx.export(
            module,
            tuple(inputs.values()),
            str(target),
            input_names=names,
            output_names=["embedding"],
            dynamic_axes={**dict.fromkeys(names, axes), "embedding": {0: "batch"}},
            opset_version=opset,
            do_constant_folding=True,
            dynamo=False,
        )
    check_text_graph(path, embedding_dim, tuple(names))


def check_text_graph(
    path: Path, embedding_dim: int, input_names: tuple[str, ...] = ("input_ids", "attention_mask")
) -> None:
    """ONNX checker plus the text contract: the int64 inputs [N,L] named, one float output [N,D]."""
    onnx.checker.check_model(str(path), full_check=True)
    graph = onnx.load(str(path), load_external_data=False).graph
    inputs = [i for i in graph.input if i.name not in {init.name for init in graph.initializer}]
    if [i.name for i in inputs] != list(input_names) or [o.name for o in graph.output] != ["embedding"]:
        raise SystemExit(f"{path}: graph must map {', '.join(input_names)} -> embedding")
    for value in inputs:
        shape = [d.dim_param or d.dim_value for d in value.type.tensor_type.shape.dim]
        if value.type.tensor_type.elem_type != onnx.TensorProto.INT64 or len(shape) != 2:
            raise SystemExit(f"{path}: {value.name} must be int64 [batch, sequence]")
        if not all(isinstance(d, str) for d in shape):
            raise SystemExit(f"{path}: {value.name} has shape {shape}; batch and sequence must be dynamic")
    output = graph.output[0].type.tensor_type
    shape = [d.dim_param or d.dim_value for d in output.shape.dim]
    width_ok = len(shape) == 2 and (isinstance(shape[1], str) or shape[1] in (embedding_dim, 0))
    if output.elem_type != onnx.TensorProto.FLOAT or not width_ok:
        raise SystemExit(f"{path}: embedding has shape {shape}, expected float32 [batch, {embedding_dim}]")
