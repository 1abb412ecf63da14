"""SigLIP (SigLIP 2 fixed-resolution checkpoints, and SigLIP 1) on the export side: loading (NaFlex
checkpoints refused), the PyTorch references, the modules exported (`get_image_features`, the
attention-pooling head's output; `get_text_features` from `input_ids` alone), the text rules, and
the random-init recipe (architectures, processor values, a SentencePiece tokenizer built offline).

The text rules are the model card's and the training code's, not transformers' defaults: the text
is lowercased (Python's `str.lower()`), tokenized by the checkpoint's own tokenizer (SigLIP 2:
Gemma's, no start token, the end token appended), padded to exactly the text model's position
count (64) with the pad id, and fed without an attention mask: SigLIP was trained without one and
pools the last position, so the padding is part of the input (docs/models.md, "SigLIP").
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import sentencepiece
import torch
from transformers import (
    AutoTokenizer,
    GemmaTokenizerFast,
    PreTrainedModel,
    SiglipConfig,
    SiglipImageProcessor,
    SiglipModel,
)

from ..parity_texts import ParityText, parity_texts
from ..siglip_corpus import CORPUS
from .base import Architecture, Family, Loaded, TextHooks, TextRules, required_ids

# google/siglip2-*'s preprocessor_config.json: resize to exactly height x width (no crop, aspect
# not kept), BILINEAR (SigLIP 1 and the library default are bicubic), rescale, normalise to [-1, 1].
SIGLIP2_PROCESSOR: dict[str, Any] = {
    "image_processor_type": "SiglipImageProcessor",
    "do_resize": True,
    "size": {"height": 224, "width": 224},
    "resample": 2,  # bilinear
    "do_rescale": True,
    "rescale_factor": 0.00392156862745098,
    "do_normalize": True,
    "image_mean": [0.5, 0.5, 0.5],
    "image_std": [0.5, 0.5, 0.5],
}

# --- the random-init architectures -----------------------------------------------------------------

GEMMA_TOKEN_IDS = {"pad_token_id": 0, "eos_token_id": 1, "bos_token_id": 2}  # Gemma's tokenizer's
TEXT_POSITIONS = 64  # SigLIP's text window, the end token included


def _tower(hidden: int, mlp: int, layers: int, heads: int) -> dict[str, Any]:
    return {
        "hidden_size": hidden,
        "intermediate_size": mlp,
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
    }


ARCHITECTURES = {
    # google/siglip2-base-patch16-224: both towers ViT-B (768 wide, 12 layers, 12 heads, MLP 3072).
    "google/siglip2-base-patch16-224": Architecture(
        "siglip",
        {
            "text_config": {
                **_tower(768, 3072, 12, 12),
                "vocab_size": 256_000,
                "max_position_embeddings": TEXT_POSITIONS,
                **GEMMA_TOKEN_IDS,
            },
            "vision_config": {**_tower(768, 3072, 12, 12), "image_size": 224, "patch_size": 16},
        },
        SIGLIP2_PROCESSOR,
    ),
    "tiny-siglip": Architecture(
        "siglip",
        {
            # The vocabulary covers the offline tokenizer's pieces (SPM_VOCAB plus its added tokens).
            "text_config": {
                **_tower(32, 64, 2, 4),
                "vocab_size": 1024,
                "max_position_embeddings": TEXT_POSITIONS,
                **GEMMA_TOKEN_IDS,
            },
            "vision_config": {**_tower(32, 64, 2, 4), "image_size": 224, "patch_size": 32},
        },
        SIGLIP2_PROCESSOR,
        pretrained=False,
    ),
}

# --- the tokenizer, offline ------------------------------------------------------------------------

SPM_VOCAB = 1000  # fits the committed corpus (the trainer may stop below it: hard_vocab_limit off)
TOKENIZER_MODEL = "tokenizer.model"


def train_sentencepiece() -> bytes:
    """A BPE SentencePiece model with Gemma's conventions (pad 0, eos 1, bos 2, unk 3, byte
    fallback, no normalisation, no dummy prefix), trained on the committed corpus. One thread and
    no shuffling: the same bytes on every run."""
    model = io.BytesIO()
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(CORPUS),
        model_writer=model,
        model_type="bpe",
        vocab_size=SPM_VOCAB,
        hard_vocab_limit=False,
        pad_id=0,
        eos_id=1,
        bos_id=2,
        unk_id=3,
        byte_fallback=True,
        character_coverage=1.0,
        normalization_rule_name="identity",
        add_dummy_prefix=False,
        remove_extra_whitespaces=False,
        split_digits=True,
        allow_whitespace_only_pieces=True,
        num_threads=1,
        shuffle_input_sentence=False,
        minloglevel=2,
    )
    return model.getvalue()


def save_tokenizer(directory: Path, max_length: int, vocab_size: int) -> None:
    """The offline tokenizer, wrapped as SigLIP 2's checkpoints wrap Gemma's: `GemmaTokenizerFast`,
    no start token, end token appended, pad id 0, right padding (the class pads left by default)."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / TOKENIZER_MODEL).write_bytes(train_sentencepiece())
    tokenizer = GemmaTokenizerFast(
        vocab_file=str(directory / TOKENIZER_MODEL),
        add_bos_token=False,
        add_eos_token=True,
        padding_side="right",
        model_max_length=max_length,
    )
    if len(tokenizer) > vocab_size:
        raise SystemExit(f"the offline tokenizer has {len(tokenizer)} tokens, the text model {vocab_size}")
    tokenizer.save_pretrained(directory)


# --- the text set ----------------------------------------------------------------------------------

# k one-piece words ("a", then " a" each) give k tokens plus the end token: 63 words fill the
# 64-token window exactly (tests/export/test_siglip.py counts them with the offline tokenizer).
WINDOW_WORDS = (2, 40, 61, 62, 63, 64, 65, 66, 200)


def window_cases() -> tuple[str, ...]:
    """Texts around SigLIP's 64-token window, and far over it."""
    cases = [" ".join(["a"] * count) for count in WINDOW_WORDS]
    cases += [
        " ".join(["A"] * 63),  # lowercased first: the same ids as the 63 "a"
        "a photo of a cat " * 40,
        "ΣΊΣΥΦΟΣ " * 30,  # lowercasing (final sigma) in a text that is cut
        "猫" * 300,
        "🐱" * 80,
        "x" * 3000,
    ]
    return tuple(cases)


def siglip_texts() -> list[ParityText]:
    """The gate's set for SigLIP: the shared committed set (every category: scripts, emoji, case,
    whitespace, markup, the empty text, CLIP's 77-token lengths, which are over 64 here), then the
    cases around SigLIP's own 64-token window."""
    return parity_texts() + [ParityText("window_64", text) for text in window_cases()]


# --- the exported modules --------------------------------------------------------------------------


class SiglipImageFeatures(torch.nn.Module):
    """`SiglipModel.get_image_features`: the vision tower, then its attention-pooling head, with
    the head written out for export. `nn.MultiheadAttention` exports its projections as a sliced
    weight and a 2-D Gemm over the batch, which int8 cannot quantise per token and whose fp32
    rounding depends on the batch size; here the probe's query (the same for every image) is
    computed once, and the key, value and output projections are per-token Linear layers, as
    the encoder's are. The gate holds the graph to `get_image_features` itself."""

    def __init__(self, model: SiglipModel) -> None:
        super().__init__()
        vision = model.vision_model
        self.embeddings, self.encoder, self.post_layernorm = (
            vision.embeddings,
            vision.encoder,
            vision.post_layernorm,
        )
        head = vision.head
        attention = head.attention
        self.heads, width = attention.num_heads, attention.embed_dim
        self.head_dim = width // self.heads
        w_q, w_k, w_v = attention.in_proj_weight.detach().chunk(3)
        b_q, b_k, b_v = attention.in_proj_bias.detach().chunk(3)
        with torch.no_grad():
            query = torch.nn.functional.linear(head.probe.detach(), w_q, b_q) * self.head_dim**-0.5
        self.register_buffer("query", query.reshape(1, 1, self.heads, self.head_dim).transpose(1, 2).clone())
        self.key, self.value = torch.nn.Linear(width, width), torch.nn.Linear(width, width)
        with torch.no_grad():
            for linear, weight, bias in ((self.key, w_k, b_k), (self.value, w_v, b_v)):
                linear.weight.copy_(weight)
                linear.bias.copy_(bias)
        self.out, self.layernorm, self.mlp = attention.out_proj, head.layernorm, head.mlp

    def split(self, x: torch.Tensor) -> torch.Tensor:
        return x.reshape(x.shape[0], x.shape[1], self.heads, self.head_dim).transpose(1, 2)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        hidden = self.post_layernorm(
            self.encoder(inputs_embeds=self.embeddings(pixel_values)).last_hidden_state
        )
        scores = torch.matmul(self.query, self.split(self.key(hidden)).transpose(-1, -2))  # [N, heads, 1, L]
        context = torch.matmul(scores.softmax(dim=-1), self.split(self.value(hidden)))  # [N, heads, 1, d]
        pooled = self.out(context.transpose(1, 2).reshape(hidden.shape[0], 1, -1))  # [N, 1, width]
        return (pooled + self.mlp(self.layernorm(pooled)))[:, 0]


class SiglipTextFeatures(torch.nn.Module):
    """`SiglipModel.get_text_features(input_ids=...)`: no attention mask, as SigLIP was trained."""

    def __init__(self, model: SiglipModel) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.model.get_text_features(input_ids=input_ids)


# --- the family ------------------------------------------------------------------------------------


class SiglipText(TextHooks):
    reference_name = "SiglipModel.get_text_features(input_ids)"

    def module(self, model: PreTrainedModel) -> torch.nn.Module:
        return SiglipTextFeatures(model)  # type: ignore[arg-type]

    def features(self, model: PreTrainedModel, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        # input_ids only: an attention_mask here would give vectors unrelated to the trained ones
        features: torch.Tensor = model.get_text_features(input_ids=inputs["input_ids"])  # type: ignore[operator]
        return features

    def rules(self, tokenizer: Any, model: PreTrainedModel, source: str) -> TextRules:
        """The checkpoint's tokenizer frames a text with its end token (SigLIP 2: no start token);
        padded with its pad id to the text model's positions; lowercased; ids only."""
        ids = required_ids(source, pad_id=tokenizer.pad_token_id, end_of_text_id=tokenizer.eos_token_id)
        framed = tokenizer("")["input_ids"]
        if framed == [ids["end_of_text_id"]]:
            start = None
        elif len(framed) == 2 and framed[1] == ids["end_of_text_id"]:
            start = int(framed[0])
        else:
            raise SystemExit(f"{source!r}: the tokenizer frames an empty text as {framed}, not [..., end]")
        return TextRules(
            max_length=int(model.config.text_config.max_position_embeddings),
            start_of_text_id=start,
            lowercase=True,
            padding="max_length",
            input_names=("input_ids",),
            **ids,
        )

    def save_tokenizer(self, directory: Path, model: PreTrainedModel) -> None:
        text = model.config.text_config
        save_tokenizer(directory, text.max_position_embeddings, text.vocab_size)

    def tokenizer(self, source: str) -> Any:
        tokenizer = super().tokenizer(source)
        if tokenizer.padding_side != "right":
            raise SystemExit(
                f"{source!r}: the tokenizer pads on the {tokenizer.padding_side}; SigLIP pads right"
            )
        return tokenizer

    def unavailable(self, source: str) -> str | None:
        """SigLIP 1's tokenizer is slow-only in transformers: no tokenizer.json for the server to run
        (and the slow one strips punctuation first, which no tokenizer.json reproduces)."""
        try:
            tokenizer = AutoTokenizer.from_pretrained(source)
        except (OSError, ValueError):
            return None  # `tokenizer` says why, failing the export
        if tokenizer.is_fast:
            return None
        return (
            f"its tokenizer is slow-only ({type(tokenizer).__name__}, as SigLIP 1's is in transformers): "
            "no tokenizer.json the server could run with the same ids"
        )

    def parity_texts(self) -> list[ParityText]:
        return siglip_texts()


NAFLEX_ALTERNATIVE = "google/siglip2-base-patch16-224"


class Siglip(Family):
    name = "siglip"
    model_class = SiglipModel
    config_class = SiglipConfig
    processor_class = SiglipImageProcessor
    architectures = ARCHITECTURES
    text = SiglipText()

    def embedding_dim(self, config: Any, pooling: str) -> int:
        return int(config.vision_config.hidden_size)

    def load(self, source: str, pooling: str) -> Loaded:
        """NaFlex checkpoints (`Siglip2Model`, variable resolution) are refused, naming the
        fixed-resolution checkpoints that `SiglipModel` loads."""
        config = Path(source) / "config.json"
        model_type = json.loads(config.read_text()).get("model_type") if config.is_file() else None
        if model_type is None:
            try:
                model_type = SiglipConfig.get_config_dict(source)[0].get("model_type")
            except OSError:  # no hub, no such checkpoint: `Family.load` says so
                model_type = None
        if model_type == "siglip2" or source.endswith("-naflex"):
            # google/siglip2-X-naflex -> google/siglip2-X-224 style ids; a local folder: the base one
            hub_id = source.endswith("-naflex") and not Path(source).exists()
            fixed = source.removesuffix("naflex") + "224" if hub_id else NAFLEX_ALTERNATIVE
            raise SystemExit(
                f"{source!r} is a NaFlex checkpoint (Siglip2Model, variable resolution), which is not "
                f"served: export a fixed-resolution SigLIP 2 checkpoint (SiglipModel) instead, e.g. "
                f"{fixed} (or its -256, -384, -512 sizes)"
            )
        return super().load(source, pooling)

    def image_module(self, model: PreTrainedModel, pooling: str, height: int, width: int) -> torch.nn.Module:
        return SiglipImageFeatures(model)  # type: ignore[arg-type]


SIGLIP = Siglip()
