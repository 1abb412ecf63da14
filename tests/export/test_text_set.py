"""The text gate's inputs: the committed text set covers what it claims, CLIP's vocabulary is built
with CLIP's ids, and the random-init architectures carry the hub config's legacy token ids.

No export here: the tokenizer is built into a temporary directory as `save_random_init` builds it.
"""

from __future__ import annotations

import json
import re
import unicodedata
from collections.abc import Callable
from pathlib import Path

import pytest
from transformers import AutoTokenizer, CLIPConfig, CLIPTokenizer

from export.architectures import ARCHITECTURES
from export.families.clip import save_tokenizer, write_vocabulary
from export.parity_texts import TEXTS, parity_texts

A_PHOTO_OF_A_CAT = [49406, 320, 1125, 539, 320, 2368, 49407]  # CLIP's ids, as openai/CLIP gives them
MAX_TOKENS = 77
MIN_TEXTS = 200
MIN_PER_CATEGORY = 5


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("clip-tokenizer")
    save_tokenizer(directory)
    return directory


@pytest.fixture(scope="module")
def untruncated_lengths(tokenizer_dir: Path) -> dict[str, int]:
    """text -> its token count without truncation (start- and end-of-text included)."""
    fast = AutoTokenizer.from_pretrained(tokenizer_dir)
    texts = [item.text for item in parity_texts()]
    return {text: len(ids) for text, ids in zip(texts, fast(texts, truncation=False)["input_ids"])}


# --- the vocabulary ------------------------------------------------------------------------------


def test_vocabulary_gives_clips_ids(tmp_path: Path) -> None:
    vocab, merges = write_vocabulary(tmp_path)
    tokens = json.loads(vocab.read_text(encoding="utf-8"))
    assert len(tokens) == 49408
    assert (tokens["<|startoftext|>"], tokens["<|endoftext|>"]) == (49406, 49407)
    slow = CLIPTokenizer(str(vocab), str(merges))
    assert slow("a photo of a cat")["input_ids"] == A_PHOTO_OF_A_CAT


def test_saved_tokenizer_is_fast_and_configured_like_the_hubs(tokenizer_dir: Path) -> None:
    fast = AutoTokenizer.from_pretrained(tokenizer_dir)
    assert fast.is_fast and (tokenizer_dir / "tokenizer.json").is_file()
    assert fast("a photo of a cat")["input_ids"] == A_PHOTO_OF_A_CAT
    assert (fast.bos_token_id, fast.eos_token_id, fast.pad_token_id) == (49406, 49407, 49407)
    assert fast.unk_token == "<|endoftext|>" and fast.model_max_length == MAX_TOKENS
    assert fast("A PHOTO OF A CAT")["input_ids"] == A_PHOTO_OF_A_CAT  # do_lower_case
    assert CLIPTokenizer.from_pretrained(tokenizer_dir)("a photo of a cat")["input_ids"] == A_PHOTO_OF_A_CAT


@pytest.mark.parametrize("name", ["openai/clip-vit-base-patch32", "tiny-clip"])
def test_random_init_clip_pools_as_the_hub_checkpoint(name: str) -> None:
    """The hub config's legacy ids (eos 2) make transformers pool at argmax(input_ids), the
    end-of-text token; the vocabulary is the real one, the window 77 tokens."""
    text = CLIPConfig(**ARCHITECTURES[name].config).text_config
    assert (text.bos_token_id, text.eos_token_id, text.pad_token_id) == (0, 2, 1)
    assert (text.vocab_size, text.max_position_embeddings) == (49408, MAX_TOKENS)


def test_full_size_text_config_is_vit_b32s() -> None:
    text = CLIPConfig(**ARCHITECTURES["openai/clip-vit-base-patch32"].config).text_config
    shape = (text.hidden_size, text.intermediate_size, text.num_attention_heads, text.num_hidden_layers)
    assert shape == (512, 2048, 8, 12) and text.hidden_act == "quick_gelu"


# --- the committed text set ----------------------------------------------------------------------


def has_combining_mark(text: str) -> bool:
    return any(unicodedata.combining(c) for c in text)


def has_precomposed_accent(text: str) -> bool:
    return any(unicodedata.decomposition(c).split()[1:2] and c.isalpha() for c in text)


def has_cjk(text: str) -> bool:
    return any(
        "\u4e00" <= c <= "\u9fff" or "\u3040" <= c <= "\u30ff" or "\uac00" <= c <= "\ud7af" for c in text
    )


def has_emoji(text: str) -> bool:
    return any(ord(c) >= 0x1F300 and unicodedata.category(c) == "So" for c in text)


def has_zwj_sequence(text: str) -> bool:
    return "\u200d" in text and has_emoji(text)


def has_right_to_left(text: str) -> bool:
    return any(unicodedata.bidirectional(c) in ("R", "AL") for c in text)


def has_html_entity(text: str) -> bool:
    return re.search(r"&(#\d+|#x[0-9a-fA-F]+|[a-zA-Z]+);", text) is not None


def has_whitespace_run(text: str) -> bool:
    return re.search(r"\s{2,}", text) is not None


def has_control(text: str) -> bool:
    return any(unicodedata.category(c) in ("Cc", "Cf") and c not in " \t\n\r" for c in text)


def has_mixed_case(text: str) -> bool:
    return any(c.isupper() for c in text) and any(c.islower() for c in text)


COVERAGE: dict[str, Callable[[str], bool]] = {
    "combining marks": has_combining_mark,
    "precomposed accents": has_precomposed_accent,
    "CJK": has_cjk,
    "emoji": has_emoji,
    "emoji ZWJ sequences": has_zwj_sequence,
    "right-to-left scripts": has_right_to_left,
    "HTML entities": has_html_entity,
    "runs of whitespace": has_whitespace_run,
    "control and format characters": has_control,
    "mixed case": has_mixed_case,
}


def test_the_set_has_at_least_200_texts() -> None:
    texts = [item.text for item in parity_texts()]
    assert len(texts) >= MIN_TEXTS
    assert len(set(texts)) == len(texts), "a text appears twice"
    assert all(len(items) >= MIN_PER_CATEGORY for items in TEXTS.values())


@pytest.mark.parametrize("what", COVERAGE)
def test_the_set_covers(what: str) -> None:
    found = [item.text for item in parity_texts() if COVERAGE[what](item.text)]
    assert len(found) >= MIN_PER_CATEGORY, (what, found)


def test_the_set_has_the_length_cases(untruncated_lengths: dict[str, int]) -> None:
    """The empty string, one token, exactly 77 tokens (start- and end-of-text included), one over,
    and far over (loses its end, keeps the end-of-text token)."""
    lengths = untruncated_lengths
    assert lengths[""] == 2
    counts = sorted(lengths.values())
    assert counts.count(3) >= 3  # one token between start- and end-of-text
    for length in (MAX_TOKENS - 1, MAX_TOKENS, MAX_TOKENS + 1):
        assert length in counts, length
    assert sum(n > 3 * MAX_TOKENS for n in counts) >= 3


def test_length_cases_are_what_their_builder_says(untruncated_lengths: dict[str, int]) -> None:
    """k one-token words give k + 2 tokens: the builder's premise, checked on CLIP's vocabulary."""
    from export.parity_texts import ONE_TOKEN_WORDS, length_cases

    words = [w for w in length_cases() if set(w.split()) <= set(ONE_TOKEN_WORDS)]
    assert len(words) >= 8
    for text in words:
        assert untruncated_lengths[text] == len(text.split()) + 2, text
