"""The export-side interface of a model family: what `python -m export` asks of a family, and
nothing else. A family module (export/families/clip.py, dinov2.py) implements it; the registry
in export/families/__init__.py lists them. Generic code (the CLI, conversion, the gate, the golden
set) calls these hooks and never names a family.

It lives apart from the registry because each family module imports it while the registry imports
each family module: in one file, a family would import a half-initialised package.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from transformers import AutoImageProcessor, AutoTokenizer, PretrainedConfig, PreTrainedModel

from embedder.families import FAMILIES as SERVED_FAMILIES

from ..parity_texts import ParityText, parity_texts


@dataclass(frozen=True)
class Architecture:
    """A checkpoint `--random-init` can build without a download: its config and the slow processor
    config its checkpoints ship, written out. Weights are seeded and random; every model built from
    one is labelled random-init, not pretrained."""

    family: str  # the registry name of the family that builds it
    config: dict[str, Any]  # kwargs of the family's config class
    processor: dict[str, Any]  # a preprocessor_config.json, as the checkpoints' load
    pretrained: bool = field(default=True)  # False for test-only architectures with no hub checkpoint


def processor_config(
    processor_type: str, shortest_edge: int, crop: int, mean: list[float], std: list[float]
) -> dict[str, Any]:
    """A slow processor config with the keys CLIP's and DINOv2's preprocessor_config.json files
    set (resize the shortest edge, center crop, rescale, normalise, bicubic, RGB)."""
    return {
        "image_processor_type": processor_type,
        "size": {"shortest_edge": shortest_edge},
        "crop_size": {"height": crop, "width": crop},
        "resample": 3,  # bicubic
        "do_resize": True,
        "do_center_crop": True,
        "do_rescale": True,
        "rescale_factor": 0.00392156862745098,
        "do_normalize": True,
        "image_mean": mean,
        "image_std": std,
        "do_convert_rgb": True,
    }


@dataclass(frozen=True)
class TextRules:
    """How a text becomes the text graph's inputs, as model.json's `text` section records it
    (`embedder.spec.TextTower`): data the server follows, so a new tokenizer needs no server code."""

    max_length: int
    pad_id: int
    start_of_text_id: int | None  # None: the tokenizer adds no start token
    end_of_text_id: int
    lowercase: bool = False  # str.lower() before the tokenizer, as the model's own code does
    padding: Literal["longest", "max_length"] = "longest"  # max_length: a graph pooling a fixed position
    input_names: tuple[str, ...] = ("input_ids", "attention_mask")

    def fields(self) -> dict[str, Any]:
        """As keyword arguments of `embedder.spec.TextTower`."""
        return {
            "max_length": self.max_length,
            "pad_id": self.pad_id,
            "start_of_text_id": self.start_of_text_id,
            "end_of_text_id": self.end_of_text_id,
            "lowercase": self.lowercase,
            "padding": self.padding,
            "input_names": self.input_names,
        }


def required_ids(source: str, **ids: int | None) -> dict[str, int]:
    """The tokenizer's special ids a family's rules need; none of them may be missing."""
    missing = [name for name, value in ids.items() if value is None]
    if missing:
        raise SystemExit(f"{source!r}: the tokenizer defines no {', '.join(missing)}")
    return {name: int(value) for name, value in ids.items() if value is not None}


class TextHooks(ABC):
    """A family's text tower: a second graph into the image graph's space."""

    # What the gate names as PyTorch's side, e.g. "CLIPModel.get_text_features".
    reference_name: str

    @abstractmethod
    def module(self, model: PreTrainedModel) -> torch.nn.Module:
        """The module to export: forward(*inputs in `rules().input_names` order) -> [N, D]."""

    @abstractmethod
    def features(self, model: PreTrainedModel, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        """PyTorch's text vector, un-normalised, for the graph's inputs by name: the gate's reference."""

    @abstractmethod
    def rules(self, tokenizer: Any, model: PreTrainedModel, source: str) -> TextRules:
        """The model.json rule fields for this checkpoint's tokenizer and config."""

    @abstractmethod
    def save_tokenizer(self, directory: Path, model: PreTrainedModel) -> None:
        """The random-init recipe's tokenizer, saved into the checkpoint directory (no download)."""

    def tokenizer(self, source: str) -> Any:
        """The tokenizer whose `tokenizer.json` the server runs: the checkpoint's fast one, as
        transformers loads it by default."""
        try:
            tokenizer = AutoTokenizer.from_pretrained(source)
        except (OSError, ValueError) as exc:
            raise SystemExit(
                f"cannot load a tokenizer from {source!r} for the text tower ({exc}); --no-text exports "
                "the image tower alone"
            ) from None
        if not tokenizer.is_fast:
            raise SystemExit(f"{source!r}: no fast tokenizer (tokenizer.json) for the text tower")
        return tokenizer

    def slow_tokenizer(self, source: str) -> tuple[Any | None, str]:
        """A second tokenizer whose differing ids the gate records (not a failure), and its name."""
        return None, "none compared"

    def unavailable(self, source: str) -> str | None:
        """Why this checkpoint's text tower cannot be served (the export then writes the image tower
        alone and says why), or None."""
        return None

    def parity_texts(self) -> list[ParityText]:
        """The gate's text set: the committed one (export/parity_texts.py), unless the family's
        window needs cases of its own."""
        return parity_texts()


class Family(ABC):
    """One model family on the export side. Subclasses set the class attributes and implement the
    abstract methods; the rest is shared."""

    name: str  # as in embedder/families.py and model.json's `family`
    model_class: type[PreTrainedModel]
    config_class: type[PretrainedConfig]
    processor_class: type[Any]  # the slow (PIL) image processor its checkpoints use
    architectures: Mapping[str, Architecture]  # the random-init recipe: hub ids, and one tiny for tests
    text: TextHooks | None = None  # its text tower, if its checkpoints have one

    @abstractmethod
    def embedding_dim(self, config: Any, pooling: str) -> int:
        """The image graph's output width for a config and a pooling."""

    def image_features(
        self, model: PreTrainedModel, pixel_values: torch.Tensor, pooling: str
    ) -> torch.Tensor:
        """PyTorch's image vector, as the pipeline being replaced computes it: the gate's reference.
        By default the model's own `get_image_features` (CLIP, SigLIP); a family without one overrides."""
        features: torch.Tensor = model.get_image_features(pixel_values=pixel_values)  # type: ignore[operator]
        return features

    @abstractmethod
    def image_module(self, model: PreTrainedModel, pooling: str, height: int, width: int) -> torch.nn.Module:
        """The module exported to the graph contract `pixel_values` [N,3,H,W] -> `embedding` [N,D]."""

    @property
    def poolings(self) -> tuple[str, ...]:
        """The serving side's list (embedder/families.py), the first the default: one source of truth."""
        return SERVED_FAMILIES[self.name].poolings

    @property
    def test_architecture(self) -> str:
        """The tiny test-only architecture the suite exports this family with."""
        tiny = [name for name, arch in self.architectures.items() if not arch.pretrained]
        if len(tiny) != 1:
            raise ValueError(f"family {self.name!r} needs exactly one test-only architecture, has {tiny}")
        return tiny[0]

    def random_processor(self, arch: Architecture) -> Any:
        return self.processor_class(
            **{k: v for k, v in arch.processor.items() if k != "image_processor_type"}
        )

    def architecture_dim(self, arch: Architecture, pooling: str) -> int:
        return self.embedding_dim(self.config_class(**arch.config), pooling)

    def load(self, source: str, pooling: str) -> Loaded:
        """from_pretrained(source) for the model and its slow (PIL) image processor."""
        try:
            processor = AutoImageProcessor.from_pretrained(source, use_fast=False)
        except OSError as exc:  # no such directory, no hub access, not a checkpoint
            raise SystemExit(f"cannot load an image processor from {source!r}: {exc}") from None
        model = self.model_class.from_pretrained(source).eval()
        return Loaded(self, model, processor, pooling, self.embedding_dim(model.config, pooling), source)

    def save_random_init(self, arch: Architecture, seed: int, directory: Path) -> None:
        """Seeded random weights for `arch`, saved as a checkpoint with its processor (and its
        tokenizer, for a family with a text tower), so the export loads it like a real one."""
        torch.manual_seed(seed)
        model = self.model_class(self.config_class(**arch.config))
        model.save_pretrained(directory)
        self.random_processor(arch).save_pretrained(directory)
        if self.text is not None:
            self.text.save_tokenizer(directory, model)


@dataclass
class Loaded:
    """A checkpoint loaded for export: the model, its processor, the pooling, and where it was
    loaded from (the text tower's tokenizer is read from there too)."""

    family: Family
    model: PreTrainedModel
    processor: Any
    pooling: str
    embedding_dim: int
    source: str

    def reference(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """PyTorch's image vectors for the HF processor's pixels."""
        return self.family.image_features(self.model, pixel_values, self.pooling)

    def exportable(self, height: int, width: int) -> torch.nn.Module:
        return self.family.image_module(self.model, self.pooling, height, width).eval()
