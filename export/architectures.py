"""Architectures `--random-init` can build without a download: the hub checkpoints' configs and
processor configs, written out, plus tiny ones for tests. Weights are seeded and random; every
model built from here is labelled random-init, not pretrained."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

OPENAI_CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
OPENAI_CLIP_STD = [0.26862954, 0.26130258, 0.27577711]
IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]


def _processor(
    processor_type: str, shortest_edge: int, mean: list[float], std: list[float]
) -> dict[str, Any]:
    """A slow processor config as the checkpoints' preprocessor_config.json files load it."""
    return {
        "image_processor_type": processor_type,
        "size": {"shortest_edge": shortest_edge},
        "crop_size": {"height": 224, "width": 224},
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


CLIP_PROCESSOR = _processor("CLIPImageProcessor", 224, OPENAI_CLIP_MEAN, OPENAI_CLIP_STD)
DINOV2_PROCESSOR = _processor("BitImageProcessor", 256, IMAGENET_MEAN, IMAGENET_STD)


def _dinov2(hidden: int, heads: int, layers: int = 12, mlp_ratio: int = 4) -> dict[str, Any]:
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


# The hub's openai/clip-vit-base-patch32 config.json keeps the legacy special-token ids of its
# text config (bos 0, eos 2, pad 1; the tokenizer's are 49406 and 49407). With eos_token_id 2,
# transformers pools the text at argmax(input_ids), the end-of-text token (the highest id), so the
# random-init builds carry the same ids and pool exactly as the real checkpoint.
CLIP_LEGACY_TOKEN_IDS = {"bos_token_id": 0, "eos_token_id": 2, "pad_token_id": 1}
CLIP_VOCAB_SIZE = 49408  # the real BPE vocabulary (export/clip_vocab.py), tiny models included
CLIP_B32_TEXT = {
    "vocab_size": CLIP_VOCAB_SIZE,
    "hidden_size": 512,
    "intermediate_size": 2048,
    "num_hidden_layers": 12,
    "num_attention_heads": 8,
    "max_position_embeddings": 77,
    "hidden_act": "quick_gelu",
    **CLIP_LEGACY_TOKEN_IDS,
}
TINY_CLIP_TEXT = {
    "vocab_size": CLIP_VOCAB_SIZE,
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "max_position_embeddings": 77,
    **CLIP_LEGACY_TOKEN_IDS,
}
TINY_CLIP_VISION = {
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "image_size": 224,
    "patch_size": 32,
}


@dataclass(frozen=True)
class Architecture:
    family: str  # "clip" | "dinov2"
    config: dict[str, Any]  # kwargs of CLIPConfig / Dinov2Config
    processor: dict[str, Any]
    pretrained: bool = field(default=True)  # False for test-only architectures with no hub checkpoint


ARCHITECTURES: dict[str, Architecture] = {
    # CLIPConfig's vision defaults are ViT-B/32's (768 wide, 12 layers, patch 32); the text config
    # is written out for its legacy token ids.
    "openai/clip-vit-base-patch32": Architecture(
        "clip", {"text_config": CLIP_B32_TEXT, "projection_dim": 512}, CLIP_PROCESSOR
    ),
    "facebook/dinov2-small": Architecture("dinov2", _dinov2(384, 6), DINOV2_PROCESSOR),
    "facebook/dinov2-base": Architecture("dinov2", _dinov2(768, 12), DINOV2_PROCESSOR),
    "tiny-clip": Architecture(
        "clip",
        {"text_config": TINY_CLIP_TEXT, "vision_config": TINY_CLIP_VISION, "projection_dim": 16},
        CLIP_PROCESSOR,
        pretrained=False,
    ),
    "tiny-dinov2": Architecture(
        "dinov2", _dinov2(32, 4, layers=2, mlp_ratio=2), DINOV2_PROCESSOR, pretrained=False
    ),
}


def architecture(name: str) -> Architecture:
    try:
        return ARCHITECTURES[name]
    except KeyError:
        raise SystemExit(
            f"--random-init knows no architecture {name!r}; known: {', '.join(sorted(ARCHITECTURES))}"
        ) from None
