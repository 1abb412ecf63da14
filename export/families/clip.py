"""CLIP on the export side: loading, the PyTorch references, the modules exported (the image tower's
`get_image_features`, the text tower's `get_text_features`), the tokenizer's rules, and the
random-init recipe (architectures, processor values, CLIP's real tokenizer built offline).

The vocabulary: the BPE merges ship inside the `open_clip_torch` wheel
(`open_clip/bpe_simple_vocab_16e6.txt.gz`, MIT licence), installed with `--no-deps` and only read,
never imported. From them the vocabulary is built as CLIP builds it: the 256 byte symbols
(printable bytes first, as themselves, then the rest mapped past U+0100), the same with the
end-of-word marker, one token per merge, and the two special tokens. Written as `vocab.json` +
`merges.txt`, a `CLIPTokenizer` loads it; `save_tokenizer` writes the whole tokenizer, slow and fast.
"""

from __future__ import annotations

import gzip
import importlib.metadata
import importlib.util
import json
from pathlib import Path
from typing import Any

import torch
from transformers import (
    AddedToken,
    CLIPConfig,
    CLIPImageProcessor,
    CLIPModel,
    CLIPTokenizer,
    CLIPTokenizerFast,
    PreTrainedModel,
)

from .base import Architecture, Family, TextHooks, TextRules, processor_config, required_ids

OPENAI_CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
OPENAI_CLIP_STD = [0.26862954, 0.26130258, 0.27577711]
PROCESSOR = processor_config("CLIPImageProcessor", 224, 224, OPENAI_CLIP_MEAN, OPENAI_CLIP_STD)

# --- the random-init architectures -----------------------------------------------------------------

# The hub's openai/clip-vit-base-patch32 config.json keeps the legacy special-token ids of its
# text config (bos 0, eos 2, pad 1; the tokenizer's are 49406 and 49407). With eos_token_id 2,
# transformers pools the text at argmax(input_ids), the end-of-text token (the highest id), so the
# random-init builds carry the same ids and pool exactly as the real checkpoint.
LEGACY_TOKEN_IDS = {"bos_token_id": 0, "eos_token_id": 2, "pad_token_id": 1}
VOCAB_SIZE = 49408  # the real BPE vocabulary (below), tiny models included
B32_TEXT = {
    "vocab_size": VOCAB_SIZE,
    "hidden_size": 512,
    "intermediate_size": 2048,
    "num_hidden_layers": 12,
    "num_attention_heads": 8,
    "max_position_embeddings": 77,
    "hidden_act": "quick_gelu",
    **LEGACY_TOKEN_IDS,
}
TINY_TEXT = {
    "vocab_size": VOCAB_SIZE,
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "max_position_embeddings": 77,
    **LEGACY_TOKEN_IDS,
}
TINY_VISION = {
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "image_size": 224,
    "patch_size": 32,
}
ARCHITECTURES = {
    # CLIPConfig's vision defaults are ViT-B/32's (768 wide, 12 layers, patch 32); the text config
    # is written out for its legacy token ids.
    "openai/clip-vit-base-patch32": Architecture(
        "clip", {"text_config": B32_TEXT, "projection_dim": 512}, PROCESSOR
    ),
    "tiny-clip": Architecture(
        "clip",
        {"text_config": TINY_TEXT, "vision_config": TINY_VISION, "projection_dim": 16},
        PROCESSOR,
        pretrained=False,
    ),
}

# --- the vocabulary and tokenizer, offline ---------------------------------------------------------

MERGES_FILE = "open_clip/bpe_simple_vocab_16e6.txt.gz"
N_MERGES = 49152 - 256 - 2  # CLIP uses the first 48,894 merges of the file
START, END = "<|startoftext|>", "<|endoftext|>"


def byte_symbols() -> list[str]:
    """One printable character per byte value, in CLIP's order."""
    printable = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), ord("ÿ") + 1),
    ]
    others = [b for b in range(256) if b not in printable]
    return [chr(b) for b in printable] + [chr(256 + i) for i in range(len(others))]


def merges_path() -> Path:
    try:
        path = Path(str(importlib.metadata.distribution("open_clip_torch").locate_file(MERGES_FILE)))
    except importlib.metadata.PackageNotFoundError:
        raise SystemExit(
            "the CLIP vocabulary comes from the open_clip_torch wheel: "
            "pip install --no-deps open_clip_torch (the Makefile's venv has it)"
        ) from None
    if not path.is_file():
        raise SystemExit(f"{path} is missing from the open_clip_torch wheel")
    return path


def write_vocabulary(directory: Path) -> tuple[Path, Path]:
    """`vocab.json` and `merges.txt` of CLIP's tokenizer into `directory`."""
    lines = gzip.decompress(merges_path().read_bytes()).decode("utf-8").split("\n")
    merges = [line.split() for line in lines[1 : N_MERGES + 1]]
    symbols = byte_symbols()
    tokens = [*symbols, *(s + "</w>" for s in symbols), *("".join(pair) for pair in merges), START, END]
    vocab, merges_txt = directory / "vocab.json", directory / "merges.txt"
    vocab.write_text(
        json.dumps({token: i for i, token in enumerate(tokens)}, ensure_ascii=False), encoding="utf-8"
    )
    merges_txt.write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges), encoding="utf-8")
    return vocab, merges_txt


def save_tokenizer(directory: Path, max_length: int = 77) -> None:
    """CLIP's tokenizer as the hub's openai/clip-vit-base-patch32 configures it, saved into a
    checkpoint directory: the slow `CLIPTokenizer` (vocab.json, merges.txt, tokenizer_config.json),
    then the fast one converted from it (tokenizer.json), which `AutoTokenizer` loads."""
    vocab, merges = write_vocabulary(directory)

    def special(content: str) -> AddedToken:
        return AddedToken(content, lstrip=False, rstrip=False, single_word=False, normalized=True)

    CLIPTokenizer(
        str(vocab),
        str(merges),
        errors="replace",
        unk_token=special(END),
        bos_token=special(START),
        eos_token=special(END),
        pad_token=END,
        model_max_length=max_length,
        do_lower_case=True,
        add_prefix_space=False,
    ).save_pretrained(directory)
    CLIPTokenizerFast.from_pretrained(directory).save_pretrained(directory)


# --- the exported modules --------------------------------------------------------------------------


class ClipImageFeatures(torch.nn.Module):
    """`CLIPModel.get_image_features`: the projected, un-normalised image vector."""

    def __init__(self, model: CLIPModel) -> None:
        super().__init__()
        self.model = model

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.model.get_image_features(pixel_values=pixel_values)


class ClipTextFeatures(torch.nn.Module):
    """`CLIPModel.get_text_features`: the projected, un-normalised text vector."""

    def __init__(self, model: CLIPModel) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.model.get_text_features(input_ids=input_ids, attention_mask=attention_mask)


# --- the family ------------------------------------------------------------------------------------


class ClipText(TextHooks):
    """`get_text_features`: the text model pooled as transformers pools the checkpoint (at the
    end-of-text token), then the projection."""

    reference_name = "CLIPModel.get_text_features"

    def module(self, model: PreTrainedModel) -> torch.nn.Module:
        return ClipTextFeatures(model)  # type: ignore[arg-type]

    def features(self, model: PreTrainedModel, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        features: torch.Tensor = model.get_text_features(**inputs)  # type: ignore[operator]
        return features

    def rules(self, tokenizer: Any, model: PreTrainedModel, source: str) -> TextRules:
        """CLIP's tokenizer starts with <|startoftext|>, ends with <|endoftext|> and pads with it;
        it lowercases inside tokenizer.json itself, so no Python lowercasing; the window is the text
        config's position embeddings (77)."""
        ids = required_ids(
            source,
            pad_id=tokenizer.pad_token_id,
            start_of_text_id=tokenizer.bos_token_id,
            end_of_text_id=tokenizer.eos_token_id,
        )
        return TextRules(max_length=int(model.config.text_config.max_position_embeddings), **ids)

    def save_tokenizer(self, directory: Path, model: PreTrainedModel) -> None:
        save_tokenizer(directory, model.config.text_config.max_position_embeddings)

    def slow_tokenizer(self, source: str) -> tuple[Any | None, str]:
        """The slow `CLIPTokenizer` and what it runs (it cleans text with ftfy when installed)."""
        cleaner = "ftfy" if importlib.util.find_spec("ftfy") else "BasicTokenizer (ftfy not installed)"
        try:
            return CLIPTokenizer.from_pretrained(source), f"CLIPTokenizer with {cleaner}"
        except (OSError, ValueError, TypeError) as exc:
            return None, f"CLIPTokenizer unavailable: {exc}"


class Clip(Family):
    name = "clip"
    model_class = CLIPModel
    config_class = CLIPConfig
    processor_class = CLIPImageProcessor
    architectures = ARCHITECTURES
    text = ClipText()

    def embedding_dim(self, config: Any, pooling: str) -> int:
        return int(config.projection_dim)

    def image_module(self, model: PreTrainedModel, pooling: str, height: int, width: int) -> torch.nn.Module:
        return ClipImageFeatures(model)  # type: ignore[arg-type]


CLIP = Clip()
