"""SigLIP, the third family (issue 24): its rules as model.json records them, the gate through the
real CLI, and the choices the family module makes written out as checks.

- the tiny export's model.json: resize to exactly 224 x 224 with no crop, bilinear as the
  checkpoint's processor says; text lowercased, no start token, padded to 64, ids only;
- parity.json: at least 200 texts, every one with transformers' ids and within 1e-6;
- the offline tokenizer: trained the same on every run, Gemma's conventions;
- the window: 63 one-piece words make exactly 64 tokens, longer texts keep their end token;
- lowercasing is Python's (final sigma), not the Rust `Lowercase` normalizer's;
- why no attention mask and why bilinear: the alternatives measurably move the vectors;
- NaFlex (`Siglip2Model`) checkpoints are refused, naming a fixed-resolution one.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from tokenizers import Tokenizer, normalizers
from transformers import (
    AutoTokenizer,
    Siglip2Config,
    Siglip2Model,
    SiglipConfig,
    SiglipImageProcessor,
    SiglipModel,
    SiglipTokenizer,
)

from embedder.preprocess import Preprocessor
from embedder.spec import load_spec
from embedder.text import TextTokenizer
from export.families.siglip import ARCHITECTURES, WINDOW_WORDS, siglip_texts, train_sentencepiece
from export.images import parity_images
from export.spec_writer import preprocessing_from_processor
from tests.conftest import describe, run_export

TOLERANCE = 1e-6  # the gate's contract, restated: a test must not follow a loosening
WINDOW = 64


def unit(vectors: np.ndarray) -> np.ndarray:
    vectors = np.asarray(vectors, dtype=np.float64)
    return vectors / np.linalg.norm(vectors, axis=-1, keepdims=True)


@pytest.fixture(scope="module")
def checkpoint(tiny_checkpoints: dict[str, Path]) -> Path:
    """The tiny architecture saved by its random-init recipe: a checkpoint from_pretrained reads."""
    return tiny_checkpoints["siglip"]


def test_model_json_records_the_rules(tiny_siglip_dir: Path) -> None:
    spec = load_spec(tiny_siglip_dir / "model.json")
    assert spec.family == "siglip" and spec.pooling == "head" and spec.verified
    pre = spec.preprocessing
    assert pre.processor_class == "SiglipImageProcessor"
    assert pre.resize is not None and (pre.resize.height, pre.resize.width) == (224, 224)
    assert pre.resize.shortest_edge is None and pre.center_crop is None
    assert pre.resample == "bilinear" and pre.mean == pre.std == (0.5, 0.5, 0.5)
    text = spec.text
    assert text is not None and text.verified
    assert (text.max_length, text.pad_id, text.start_of_text_id, text.end_of_text_id) == (WINDOW, 0, None, 1)
    assert (text.lowercase, text.padding, text.input_names) == (True, "max_length", ("input_ids",))


def test_gate_covers_the_text_set_token_for_token(tiny_siglip_dir: Path) -> None:
    report = json.loads((tiny_siglip_dir / "parity.json").read_text())
    texts = report["text"]["texts"]
    assert report["verified"] and report["text"]["verified"] and report["text"]["tokens_identical"]
    assert len(texts) == len(siglip_texts()) >= 200
    assert all(t["ids_identical"] and t["normalized_max_abs"] <= TOLERANCE for t in texts)
    assert report["text"]["batch_shape"] == [len(texts), WINDOW]
    assert report["text"]["batch_normalized_max_abs"] <= TOLERANCE
    lengths = [t["tokens"] for t in texts]
    assert 1 in lengths and WINDOW in lengths  # the empty text (end token alone) and a full window
    categories = {t["category"] for t in texts}
    assert {"cjk", "emoji", "right_to_left", "mixed_case", "empty", "window_64"} <= categories


def test_offline_tokenizer_is_deterministic_with_gemmas_conventions(checkpoint: Path) -> None:
    assert train_sentencepiece() == train_sentencepiece() == (checkpoint / "tokenizer.model").read_bytes()
    tokenizer = AutoTokenizer.from_pretrained(checkpoint)
    assert type(tokenizer).__name__ == "GemmaTokenizerFast" and tokenizer.padding_side == "right"
    assert (tokenizer.pad_token_id, tokenizer.eos_token_id, tokenizer.bos_token_id) == (0, 1, 2)
    ids = tokenizer("a photo of a cat")["input_ids"]
    assert ids[-1] == 1 and 2 not in ids  # end token appended, no start token
    assert len(tokenizer) <= ARCHITECTURES["tiny-siglip"].config["text_config"]["vocab_size"]


def test_window_cases_fill_64_tokens_and_keep_the_end_token(tiny_siglip_dir: Path) -> None:
    spec = load_spec(tiny_siglip_dir / "model.json")
    assert spec.text is not None
    ours = TextTokenizer.load(tiny_siglip_dir / spec.text.tokenizer_file, spec.text)
    rows = ours.encode([" ".join(["a"] * count) for count in WINDOW_WORDS])
    for count, row in zip(WINDOW_WORDS, rows):
        assert len(row) == min(count + 1, WINDOW) and row[-1] == spec.text.end_of_text_id, count
    assert len(ours.encode([" ".join(["a"] * 63)])[0]) == WINDOW  # exactly the window, nothing cut
    feeds = ours.feeds(rows)
    assert list(feeds) == ["input_ids"] and feeds["input_ids"].shape == (len(rows), WINDOW)
    assert feeds["input_ids"][0, 3:].tolist() == [spec.text.pad_id] * (WINDOW - 3)  # "a a" + end, then pads


# Letters whose lowercase Python and the Rust `Lowercase` normalizer (char by char) disagree on:
# a word-final capital sigma becomes ς in Python (Unicode's Final_Sigma rule), σ in Rust.
FINAL_SIGMA = ("ΣΊΣΥΦΟΣ", "ὈΔΥΣΣΕΎΣ", "ΟΔΥΣΣΕΥΣ ΚΑΙ ΣΙΣΥΦΟΣ")


@pytest.mark.parametrize("text", FINAL_SIGMA)
def test_lowercasing_is_pythons_str_lower(text: str, tiny_siglip_dir: Path, checkpoint: Path) -> None:
    rust = normalizers.Lowercase().normalize_str(text)
    assert rust != text.lower() and "ς" in text.lower() and "ς" not in rust
    spec = load_spec(tiny_siglip_dir / "model.json")
    assert spec.text is not None and spec.text.lowercase
    ours = TextTokenizer.load(tiny_siglip_dir / spec.text.tokenizer_file, spec.text).encode([text])[0]
    tokenizer = AutoTokenizer.from_pretrained(checkpoint)
    assert ours.tolist() == tokenizer(text.lower())["input_ids"]
    assert ours.tolist() != tokenizer(rust)["input_ids"]  # the Rust lowercasing would change the ids
    assert "İ".lower() == "i\u0307"  # dotted capital I: two code points in both, the same ids follow


def test_an_attention_mask_would_change_the_vectors(checkpoint: Path) -> None:
    """SigLIP pools the last position with no mask in training; transformers' tokenizer returns a
    mask, and passing it on gives other vectors (random-init: cosine far from 1)."""
    model = SiglipModel.from_pretrained(checkpoint).eval()
    tokenizer = AutoTokenizer.from_pretrained(checkpoint)
    inputs = tokenizer(
        ["a photo of a cat", "a dog"], padding="max_length", max_length=WINDOW, return_tensors="pt"
    )
    with torch.no_grad():
        trained = model.get_text_features(input_ids=inputs["input_ids"]).numpy()
        masked = model.get_text_features(**inputs).numpy()
    cosine = (unit(trained) * unit(masked)).sum(axis=1)
    assert cosine.max() < 0.9, cosine


def test_the_checkpoints_filter_is_read_bicubic_would_move_the_pixels(checkpoint: Path) -> None:
    processor = SiglipImageProcessor.from_pretrained(checkpoint)
    assert processor.resample == 2  # bilinear, from the checkpoint's config
    image = next(i for i in parity_images(include_huge=False) if i.name == "photo_640x480.jpg")
    pil = Image.open(io.BytesIO(image.data)).convert("RGB")
    hf = processor(images=pil, return_tensors="np")["pixel_values"][0]
    bilinear = preprocessing_from_processor(processor)
    bicubic = bilinear.model_copy(update={"resample": "bicubic"})
    assert np.array_equal(Preprocessor(bilinear)(pil), hf)
    assert np.abs(Preprocessor(bicubic)(pil) - hf).max() > 0.01


def test_a_naflex_checkpoint_is_refused_naming_a_fixed_resolution_one(tmp_path: Path) -> None:
    tiny = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 4}
    torch.manual_seed(0)
    model = Siglip2Model(Siglip2Config(text_config={**tiny, "vocab_size": 64}, vision_config=tiny))
    model.save_pretrained(tmp_path / "naflex-checkpoint")
    process = run_export("siglip", tmp_path / "naflex-checkpoint", tmp_path / "out", "--no-huge")
    assert process.returncode != 0, describe(process)
    assert "NaFlex" in process.stderr and "google/siglip2-base-patch16-224" in process.stderr
    assert not (tmp_path / "out" / "model.json").exists()


def test_the_servers_tokenizer_file_is_the_checkpoints(tiny_siglip_dir: Path, checkpoint: Path) -> None:
    """tokenizer.json as exported runs the checkpoint's tokenizer (not a re-trained one): the
    tiny export and the local checkpoint are built from the same committed corpus."""
    served = Tokenizer.from_file(str(tiny_siglip_dir / "tokenizer.json"))
    assert served.get_vocab() == AutoTokenizer.from_pretrained(checkpoint).backend_tokenizer.get_vocab()


def test_a_slow_only_tokenizer_exports_the_image_tower_alone_and_says_why(tmp_path: Path) -> None:
    """SigLIP 1: transformers has only the slow `SiglipTokenizer` (no tokenizer.json for the server
    to run), and its processor resizes bicubic. The export writes the image tower, gated, and names
    the reason it left the text tower out."""
    checkpoint = tmp_path / "siglip1-checkpoint"
    config = ARCHITECTURES["tiny-siglip"].config
    torch.manual_seed(0)
    SiglipModel(SiglipConfig(**config)).save_pretrained(checkpoint)
    processor = {
        k: v for k, v in ARCHITECTURES["tiny-siglip"].processor.items() if k != "image_processor_type"
    }
    SiglipImageProcessor(**{**processor, "resample": 3}).save_pretrained(checkpoint)
    (checkpoint / "spiece.model").write_bytes(train_sentencepiece())
    SiglipTokenizer(vocab_file=str(checkpoint / "spiece.model")).save_pretrained(checkpoint)
    out = tmp_path / "siglip1"
    process = run_export("siglip", checkpoint, out, "--no-huge")
    assert process.returncode == 0, describe(process)
    assert "exporting the image tower only" in process.stderr and "SiglipTokenizer" in process.stderr
    spec = load_spec(out / "model.json")
    assert spec.text is None and spec.verified and spec.preprocessing.resample == "bicubic"
    assert not (out / "text.onnx").exists()


def test_base_architecture_is_the_published_siglip2_base_patch16_224() -> None:
    """The random-init recipe's full-size build (exported by `make bench`, not here): both towers
    ViT-B, patch 16 at 224, a 256,000-token vocabulary and 64 positions, the published processor."""
    arch = ARCHITECTURES["google/siglip2-base-patch16-224"]
    config = SiglipConfig(**arch.config)
    for tower in (config.text_config, config.vision_config):
        shape = (
            tower.hidden_size,
            tower.num_hidden_layers,
            tower.num_attention_heads,
            tower.intermediate_size,
        )
        assert shape == (768, 12, 12, 3072)
    assert (config.text_config.vocab_size, config.text_config.max_position_embeddings) == (256_000, WINDOW)
    assert (config.vision_config.patch_size, config.vision_config.image_size) == (16, 224)
    pre = preprocessing_from_processor(
        SiglipImageProcessor(**{k: v for k, v in arch.processor.items() if k != "image_processor_type"})
    )
    assert (
        pre.resize is not None
        and (pre.resize.height, pre.resize.width) == (224, 224)
        and pre.center_crop is None
    )
    assert (pre.resample, pre.mean, pre.std) == ("bilinear", (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
