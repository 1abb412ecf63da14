"""Texts -> token ids for CLIP's text tower, torch- and transformers-free.

The tokenizer is the checkpoint's own `tokenizer.json`, run by the `tokenizers` library: the same
Rust code transformers' fast CLIP tokenizer runs, configured the way `tokenizer(texts,
truncation=True, max_length=...)` configures it. The export gate proves the ids equal
transformers' on its text set; `load` checks the file still frames a text as the spec says.
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
        self._tokenizer.no_padding()  # padding happens per batch, to the batch's longest text
        self._tokenizer.enable_truncation(max_length=spec.max_length)
        framed = self.encode([""])[0].tolist()
        if framed != [spec.start_of_text_id, spec.end_of_text_id]:
            raise ValueError(
                f"the tokenizer frames an empty text as {framed}, model.json says "
                f"[{spec.start_of_text_id}, {spec.end_of_text_id}]"
            )

    @classmethod
    def load(cls, path: Path, spec: TextTower) -> TextTokenizer:
        return cls(Tokenizer.from_file(str(path)), spec)

    def encode(self, texts: list[str]) -> list[np.ndarray]:
        """One int64 id array per text, start- and end-of-text tokens included, at most max_length."""
        return [np.asarray(e.ids, dtype=np.int64) for e in self._tokenizer.encode_batch(texts)]


def collate(rows: list[np.ndarray], pad_id: int) -> tuple[np.ndarray, np.ndarray]:
    """Rows of ids -> `input_ids`, `attention_mask` [N, L], padded at the end to the longest."""
    length = max(len(row) for row in rows)
    ids = np.full((len(rows), length), pad_id, dtype=np.int64)
    mask = np.zeros((len(rows), length), dtype=np.int64)
    for i, row in enumerate(rows):
        ids[i, : len(row)] = row
        mask[i, : len(row)] = 1
    return ids, mask
