"""The text rules in model.json are data the serving path follows: start token or none, end token,
lowercasing, padding to the longest text or to a fixed length, and the graph's inputs.

A real `tokenizers` tokenizer built here (a word-level vocabulary with a template that appends
the end token and, for one rule set, prepends a start token) stands in for a checkpoint's
tokenizer.json; the spec objects are the ones model.json validates into.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from tokenizers import Tokenizer, models, pre_tokenizers, processors

from embedder.spec import SpecError, TextTower, load_spec
from embedder.text import TextTokenizer

PAD, START, END, UNK = 0, 1, 2, 3
WORDS = ["a", "photo", "of", "cat", "σας", "straße", "ǅ"]
VOCAB = {"<pad>": PAD, "<s>": START, "</s>": END, "<unk>": UNK} | {w: i + 4 for i, w in enumerate(WORDS)}
SHA = "0" * 64


def tokenizer(start: bool) -> Tokenizer:
    built = Tokenizer(models.WordLevel(VOCAB, unk_token="<unk>"))
    built.pre_tokenizer = pre_tokenizers.Whitespace()
    framing = "<s> $A </s>" if start else "$A </s>"
    built.post_processor = processors.TemplateProcessing(
        single=framing, special_tokens=[("<s>", START), ("</s>", END)]
    )
    return built


def tower(**rules: Any) -> TextTower:
    fields: dict[str, Any] = {
        "onnx_file": "text.onnx",
        "onnx_sha256": SHA,
        "tokenizer_file": "tokenizer.json",
        "tokenizer_sha256": SHA,
        "max_length": 6,
        "pad_id": PAD,
        "start_of_text_id": START,
        "end_of_text_id": END,
    }
    return TextTower(**(fields | rules))


def test_clip_rules_pad_to_the_longest_and_feed_the_mask() -> None:
    text = TextTokenizer(tokenizer(start=True), tower())
    rows = text.encode(["a photo", "a photo of a cat cat cat"])
    assert [r.tolist() for r in rows] == [[START, 4, 5, END], [START, 4, 5, 6, 4, END]]  # end kept
    feeds = text.feeds(rows)
    assert sorted(feeds) == ["attention_mask", "input_ids"]
    assert feeds["input_ids"].tolist() == [[START, 4, 5, END, PAD, PAD], [START, 4, 5, 6, 4, END]]
    assert feeds["attention_mask"].tolist() == [[1, 1, 1, 1, 0, 0], [1] * 6]
    assert all(v.dtype == np.int64 for v in feeds.values())


def test_fixed_length_no_start_token_ids_only() -> None:
    rules = tower(start_of_text_id=None, padding="max_length", input_names=("input_ids",), max_length=5)
    text = TextTokenizer(tokenizer(start=False), rules)
    rows = text.encode(["a", "photo of a cat cat cat"])
    feeds = text.feeds(rows)
    assert list(feeds) == ["input_ids"]  # no attention mask reaches the graph
    assert feeds["input_ids"].tolist() == [[4, END, PAD, PAD, PAD], [5, 6, 4, 7, END]]
    assert text.feeds(rows[:1])["input_ids"].shape == (1, 5)  # fixed, whatever the batch


def test_lowercase_is_pythons_str_lower() -> None:
    """Python lowercases a word-final capital sigma to final sigma (ς) and keeps titlecase ǅ as ǆ;
    the rule says str.lower(), so the ids are those of the lowercased text."""
    lowered = TextTokenizer(tokenizer(start=False), tower(start_of_text_id=None, lowercase=True))
    kept = TextTokenizer(tokenizer(start=False), tower(start_of_text_id=None))
    assert "ΣΑΣ".lower() == "σας"
    assert lowered.encode(["A PHOTO ΣΑΣ"])[0].tolist() == [4, 5, 8, END]
    assert kept.encode(["A PHOTO ΣΑΣ"])[0].tolist() == [UNK, UNK, UNK, END]
    assert lowered.encode(["STRASSE Straße"])[0].tolist() == [UNK, 9, END]  # lower() never folds ß


def test_a_tokenizer_that_frames_otherwise_is_refused() -> None:
    with pytest.raises(ValueError, match=r"frames an empty text as \[2\], model.json says \[1, 2\]"):
        TextTokenizer(tokenizer(start=False), tower())


def test_unknown_family_is_a_start_up_error_naming_the_known(tmp_path: Path) -> None:
    spec = tmp_path / "model.json"
    spec.write_text(
        '{"name": "m", "family": "siglip9", "pooling": "projected", "embedding_dim": 4,'
        ' "onnx_file": "model.onnx", "preprocessing": {}}'
    )
    with pytest.raises(
        SpecError, match=r"field 'family': .*unknown family 'siglip9'; known: clip, dinov2, siglip"
    ):
        load_spec(spec)
