"""The checkpoint's own slow image processor -> the server's `Preprocessing` and `ModelSpec`."""

from __future__ import annotations

import importlib.metadata
from typing import Any

from embedder.spec import RESAMPLE_CODES, CropSize, Preprocessing, Resize

# The slow processors whose steps embedder/preprocess.py reproduces bit for bit. A family whose
# checkpoints use another one adds it here once the server reproduces it (docs/adding-a-model.md);
# a list, not read from the registry: bench imports this module and must not import torch for it.
SUPPORTED_PROCESSORS = ("CLIPImageProcessor", "BitImageProcessor", "SiglipImageProcessor")
_RESAMPLE_NAMES = {code: name for name, code in RESAMPLE_CODES.items()}


class UnsupportedProcessor(SystemExit):
    pass


def preprocessing_from_processor(processor: Any) -> Preprocessing:
    """Read every value the slow processor uses; refuse anything this pipeline cannot reproduce."""
    name = type(processor).__name__
    if name not in SUPPORTED_PROCESSORS:
        raise UnsupportedProcessor(
            f"image processor {name} is not supported (supported: {SUPPORTED_PROCESSORS})"
        )
    if getattr(processor, "do_convert_rgb", True) is False:
        raise UnsupportedProcessor(
            "do_convert_rgb=False is not supported: the pipeline always converts to RGB"
        )
    resample = int(processor.resample)
    if resample not in _RESAMPLE_NAMES:
        raise UnsupportedProcessor(f"unknown resample code {resample}")
    return Preprocessing(
        processor_class=name,
        resize=Resize(**dict(processor.size)) if processor.do_resize else None,
        resample=_RESAMPLE_NAMES[resample],  # type: ignore[arg-type]
        # getattr: a processor without a crop step (no do_center_crop attribute) crops nothing
        center_crop=CropSize(**dict(processor.crop_size))
        if getattr(processor, "do_center_crop", False)
        else None,
        rescale_factor=float(processor.rescale_factor) if processor.do_rescale else None,
        mean=_triple(processor.image_mean) if processor.do_normalize else None,
        std=_triple(processor.image_std) if processor.do_normalize else None,
    )


def _triple(values: Any) -> tuple[float, float, float]:
    values = [float(v) for v in (values if isinstance(values, (list, tuple)) else [values] * 3)]
    if len(values) != 3:
        raise UnsupportedProcessor(f"expected 3 channel values, got {values}")
    return values[0], values[1], values[2]


def library_versions() -> dict[str, str]:
    names = ("torch", "transformers", "onnx", "onnxruntime", "numpy", "pillow", "optimum-onnx")
    versions = {}
    for dist in names:
        try:
            versions[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            continue
    return versions
