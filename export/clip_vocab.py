"""CLIP's real 49,408-token BPE vocabulary, offline, for random-init checkpoints.

The merges ship inside the `open_clip_torch` wheel (`open_clip/bpe_simple_vocab_16e6.txt.gz`, MIT
licence), installed with `--no-deps` and only read, never imported. From them the vocabulary is
built as CLIP builds it: the 256 byte symbols (printable bytes first, as themselves, then the
rest mapped past U+0100), the same with the end-of-word marker, one token per merge, and the two
special tokens. Written as `vocab.json` + `merges.txt`, a `CLIPTokenizer` loads it;
`save_tokenizer` writes the whole tokenizer of a checkpoint, slow and fast.
"""

from __future__ import annotations

import gzip
import importlib.metadata
import json
from pathlib import Path

from transformers import AddedToken, CLIPTokenizer, CLIPTokenizerFast

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
