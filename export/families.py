"""Family-specific code lives here only: how to load each family, the PyTorch reference
the gate compares against, and the module that is exported to the common graph contract
`pixel_values` [N,3,H,W] -> `embedding` [N,D]. (CLIP's text tower: export/text.py.)"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import (
    AutoImageProcessor,
    BitImageProcessor,
    CLIPConfig,
    CLIPImageProcessor,
    CLIPModel,
    Dinov2Config,
    Dinov2Model,
    PretrainedConfig,
    PreTrainedModel,
)

from embedder.spec import POOLINGS

from .architectures import Architecture
from .clip_vocab import save_tokenizer

FAMILIES = tuple(POOLINGS)


@dataclass(frozen=True)
class Family:
    """What the exporter needs to know of a family, in one row each."""

    model: type[PreTrainedModel]
    config: type[PretrainedConfig]
    processor: type[Any]  # the slow (PIL) image processor its checkpoints use
    dim: Callable[[Any, str], int]  # (config, pooling) -> embedding width

    def random_processor(self, arch: Architecture) -> Any:
        return self.processor(**{k: v for k, v in arch.processor.items() if k != "image_processor_type"})

    def embedding_dim(self, arch: Architecture, pooling: str) -> int:
        return self.dim(self.config(**arch.config), pooling)


TABLE = {
    "clip": Family(CLIPModel, CLIPConfig, CLIPImageProcessor, lambda config, pooling: config.projection_dim),
    "dinov2": Family(
        Dinov2Model,
        Dinov2Config,
        BitImageProcessor,
        lambda config, pooling: config.hidden_size * (2 if pooling == "cls+mean" else 1),
    ),
}


def dinov2_pool(last_hidden_state: torch.Tensor, pooling: str) -> torch.Tensor:
    cls = last_hidden_state[:, 0]
    if pooling == "cls":
        return cls
    mean = last_hidden_state[:, 1:].mean(dim=1)
    return mean if pooling == "mean" else torch.cat([cls, mean], dim=1)


class ClipImageFeatures(torch.nn.Module):
    """`CLIPModel.get_image_features`: the projected, un-normalised image vector."""

    def __init__(self, model: CLIPModel) -> None:
        super().__init__()
        self.model = model

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.model.get_image_features(pixel_values=pixel_values)


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
        return dinov2_pool(self.model(pixel_values=pixel_values).last_hidden_state, self.pooling)


@dataclass
class Loaded:
    """A checkpoint loaded for export: the reference forward, the module to export, the processor,
    and where it was loaded from (the text tower's tokenizer is read from there too)."""

    family: str
    model: torch.nn.Module
    processor: Any
    reference: Callable[[torch.Tensor], torch.Tensor]
    embedding_dim: int
    source: str

    def exportable(self, pooling: str, height: int, width: int) -> torch.nn.Module:
        if self.family == "clip":
            return ClipImageFeatures(self.model).eval()  # type: ignore[arg-type]
        return Dinov2Pooled(self.model, pooling, height, width).eval()  # type: ignore[arg-type]


def load(family: str, source: str, pooling: str) -> Loaded:
    """from_pretrained(source) for the model and its slow (PIL) image processor."""
    try:
        processor = AutoImageProcessor.from_pretrained(source, use_fast=False)
    except OSError as exc:  # no such directory, no hub access, not a checkpoint
        raise SystemExit(f"cannot load an image processor from {source!r}: {exc}") from None
    row = TABLE[family]
    model = row.model.from_pretrained(source).eval()
    dim = row.dim(model.config, pooling)
    if isinstance(model, CLIPModel):
        clip = model
        return Loaded(
            family, clip, processor, lambda px: clip.get_image_features(pixel_values=px), dim, source
        )
    dino = model
    return Loaded(
        family,
        dino,
        processor,
        lambda px: dinov2_pool(dino(pixel_values=px).last_hidden_state, pooling),
        dim,
        source,
    )


def save_random_init(arch: Architecture, seed: int, directory: Path) -> None:
    """Seeded random weights for a known architecture, saved as a checkpoint (no download).

    A CLIP checkpoint gets CLIP's real tokenizer (vocabulary built offline: export/clip_vocab.py),
    configured as the hub's, so its text tower sees the ids the real checkpoint sees."""
    row = TABLE[arch.family]
    torch.manual_seed(seed)
    model = row.model(row.config(**arch.config))
    model.save_pretrained(directory)
    row.random_processor(arch).save_pretrained(directory)
    if isinstance(model, CLIPModel):
        save_tokenizer(directory, model.config.text_config.max_position_embeddings)
