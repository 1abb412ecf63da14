"""Texts -> the text graph's inputs, torch- and transformers-free, by the rules in model.json.

The tokenizer is the checkpoint's own `tokenizer.json`, run by the `tokenizers` library (the Rust
code transformers' fast tokenizers run), with truncation to max_length as `tokenizer(texts,
truncation=True, max_length=...)` configures it. Lowercasing, padding and which inputs the graph
takes come from the spec (`TextTower`). The export gate proves the ids equal transformers' on its
text set; `TextTokenizer` checks at load that the file still frames a text as the spec says.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from tokenizers import Tokenizer

from .spec import TextTower


class TextTokenizer:
    def __init__(self, tokenizer: Tokenizer, spec: TextTower) -> None:
        self.spec = spec
        self._tokenizer = tokenizer
        self._tokenizer.no_padding()  # padding happens per batch (`feeds`), as the spec says
        self._tokenizer.enable_truncation(max_length=spec.max_length)
        framed = self.encode([""])[0].tolist()
        expected = [i for i in (spec.start_of_text_id, spec.end_of_text_id) if i is not None]
        if framed != expected:
            raise ValueError(f"the tokenizer frames an empty text as {framed}, model.json says {expected}")

    @classmethod
    def load(cls, path: Path, spec: TextTower) -> TextTokenizer:
        return cls(Tokenizer.from_file(str(path)), spec)

    def encode(self, texts: list[str]) -> list[np.ndarray]:
        """One int64 id array per text, its framing tokens included, at most max_length long."""
        if self.spec.lowercase:
            texts = [text.lower() for text in texts]
        return [np.asarray(e.ids, dtype=np.int64) for e in self._tokenizer.encode_batch(texts)]

    def feeds(self, rows: list[np.ndarray]) -> dict[str, np.ndarray]:
        """Rows of ids -> the graph's inputs [N, L], padded at the end with pad_id."""
        return collate(rows, self.spec)


def pad(rows: list[np.ndarray], spec: TextTower) -> tuple[np.ndarray, np.ndarray]:
    """Rows of ids -> ids and mask [N, L], padded at the end with pad_id: L is the longest row, or
    max_length for `padding: max_length`."""
    length = spec.max_length if spec.padding == "max_length" else max(len(row) for row in rows)
    ids = np.full((len(rows), length), spec.pad_id, dtype=np.int64)
    mask = np.zeros((len(rows), length), dtype=np.int64)
    for i, row in enumerate(rows):
        ids[i, : len(row)] = row
        mask[i, : len(row)] = 1
    return ids, mask


def collate(rows: list[np.ndarray], spec: TextTower) -> dict[str, np.ndarray]:
    """Rows of ids -> the inputs the graph takes (`input_ids`, and `attention_mask` where listed)."""
    ids, mask = pad(rows, spec)
    feeds = {"input_ids": ids, "attention_mask": mask}
    return {name: feeds[name] for name in spec.input_names}
