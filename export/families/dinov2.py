"""DINOv2 on the export side: loading, the PyTorch reference (final-layernormed tokens, pooled), the
module exported (position embeddings frozen for the served size), and the random-init recipe
(architectures and processor values). No text tower."""

from __future__ import annotations

import copy
from typing import Any

import torch
from transformers import BitImageProcessor, Dinov2Config, Dinov2Model, PreTrainedModel

from .base import Architecture, Family, processor_config

IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]
PROCESSOR = processor_config("BitImageProcessor", 256, 224, IMAGENET_MEAN, IMAGENET_STD)


def _config(hidden: int, heads: int, layers: int = 12, mlp_ratio: int = 4) -> dict[str, Any]:
    return {
        "hidden_size": hidden,
        "num_attention_heads": heads,
        "num_hidden_layers": layers,
        "mlp_ratio": mlp_ratio,
        "image_size": 518,
        "patch_size": 14,
        "layerscale_value": 1.0,
        "hidden_act": "gelu",
        "layer_norm_eps": 1e-6,
        "use_swiglu_ffn": False,
    }


ARCHITECTURES = {
    "facebook/dinov2-small": Architecture("dinov2", _config(384, 6), PROCESSOR),
    "facebook/dinov2-base": Architecture("dinov2", _config(768, 12), PROCESSOR),
    "tiny-dinov2": Architecture("dinov2", _config(32, 4, layers=2, mlp_ratio=2), PROCESSOR, pretrained=False),
}


def pool(last_hidden_state: torch.Tensor, pooling: str) -> torch.Tensor:
    cls = last_hidden_state[:, 0]
    if pooling == "cls":
        return cls
    mean = last_hidden_state[:, 1:].mean(dim=1)
    return mean if pooling == "mean" else torch.cat([cls, mean], dim=1)


class Dinov2Pooled(torch.nn.Module):
    """DINOv2's final-layernormed tokens, pooled; position embeddings frozen for one input size.

    DINOv2 checkpoints hold 37x37 position embeddings (518 px) and interpolate them bicubically on
    every call. For the fixed served size that interpolation has one result: compute it once in
    PyTorch and bake it in as a constant, so the graph holds no resize op and ORT cannot differ
    from PyTorch there.
    """

    def __init__(self, model: Dinov2Model, pooling: str, height: int, width: int) -> None:
        super().__init__()
        self.model = copy.deepcopy(model)
        self.pooling = pooling
        embeddings = self.model.embeddings
        patches = (height // embeddings.patch_size) * (width // embeddings.patch_size)
        with torch.no_grad():
            dummy = torch.zeros(1, patches + 1, embeddings.cls_token.shape[-1])
            frozen = embeddings.interpolate_pos_encoding(dummy, height, width).detach().clone()
        self.register_buffer("frozen_positions", frozen)
        embeddings.interpolate_pos_encoding = self._positions  # instance attribute shadows the method

    def _positions(self, embeddings: torch.Tensor, height: int, width: int) -> torch.Tensor:
        return self.frozen_positions

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return pool(self.model(pixel_values=pixel_values).last_hidden_state, self.pooling)


class Dinov2(Family):
    name = "dinov2"
    model_class = Dinov2Model
    config_class = Dinov2Config
    processor_class = BitImageProcessor
    architectures = ARCHITECTURES

    def embedding_dim(self, config: Any, pooling: str) -> int:
        return int(config.hidden_size) * (2 if pooling == "cls+mean" else 1)

    def image_features(
        self, model: PreTrainedModel, pixel_values: torch.Tensor, pooling: str
    ) -> torch.Tensor:
        return pool(model(pixel_values=pixel_values).last_hidden_state, pooling)

    def image_module(self, model: PreTrainedModel, pooling: str, height: int, width: int) -> torch.nn.Module:
        return Dinov2Pooled(model, pooling, height, width)  # type: ignore[arg-type]


DINOV2 = Dinov2()
