"""The text tower of a family that has one: the graph, its tokenizer, and the text half of the
parity gate. Generic: what is family-specific comes from the family's `TextHooks`
(export/families/), and how a text becomes the graph's inputs is the `TextTower` data in model.json.

Export: the family's text module as `text.onnx`, its inputs (`rules.input_names`: `input_ids`, and
`attention_mask` where listed) int64 [N,L] -> `embedding` float32 [N,D], and the checkpoint's fast
tokenizer as `tokenizer.json`, described by model.json's `text` section (`embedder.spec.TextTower`).

Gate, for every text of the committed set (export/parity_texts.py):
- the ids and attention mask of the server's tokenizer (`embedder.text.TextTokenizer` +
  `pad`) equal those of `AutoTokenizer.from_pretrained(checkpoint)` (the fast tokenizer)
  called with `truncation=True, max_length=...` under the same rules (lowercasing, padding), one
  text at a time and as one padded batch;
- the L2-normalised embedding of the graph, in a session configured as the server's, is within
  1e-6 (max-abs) of PyTorch's (the family's `features`) on the transformers ids;
- the whole set as one batch (mixed lengths, padded) equals one text at a time.
Where the family's slow tokenizer gives other ids than the fast one, that is recorded per text
(not a failure): the server runs the fast tokenizer's code, and transformers' default is fast.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from embedder.cpus import plan_threads
from embedder.runtime import open_session, run_text
from embedder.spec import ExternalData, TextParity, TextTower, file_sha256
from embedder.text import TextTokenizer, collate, pad

from .convert import data_path, export_text_onnx
from .families import Loaded, TextHooks, TextRules
from .parity_texts import ParityText

TEXT_ONNX = "text.onnx"
TOKENIZER_FILE = "tokenizer.json"
STALE_FILES = (TEXT_ONNX, TOKENIZER_FILE, TEXT_ONNX + ".data")
REFERENCE = "transformers: AutoTokenizer (fast, truncation=True) + "  # + the family's reference_name
# What a comparison that could not be made is recorded as: the worst values two unit vectors can
# reach (finite, so model.json stays valid JSON).
WORST_MAX_ABS, WORST_COSINE = 2.0, -1.0
PREVIEW_CHARS = 36
TABLE_FAILURES = 40  # failing texts named in the printed table; parity.json has every one


def remove_text_tower(out: Path) -> None:
    """An export without the text tower: files left in `out` by an earlier one would sit there
    undescribed by model.json."""
    for name in STALE_FILES:
        (out / name).unlink(missing_ok=True)


def text_hooks(loaded: Loaded) -> TextHooks:
    if loaded.family.text is None:
        raise SystemExit(f"family {loaded.family.name!r} has no text tower")
    return loaded.family.text


def hf_encode(tokenizer: Any, texts: str | list[str], rules: TextRules | TextTower, **kwargs: Any) -> Any:
    """transformers' encoding of `texts` under the model's rules: the reference for ours. A list is
    one padded batch; one text alone is padded only under `padding: max_length`."""
    if rules.lowercase:
        texts = texts.lower() if isinstance(texts, str) else [text.lower() for text in texts]
    padding: bool | str = "max_length" if rules.padding == "max_length" else not isinstance(texts, str)
    return tokenizer(texts, padding=padding, truncation=True, max_length=rules.max_length, **kwargs)


def export_text(loaded: Loaded, out: Path, opset: int, external: bool = False) -> TextTower:
    """Write `text.onnx` and `tokenizer.json` into `out`; the `text` section describing them.
    A graph over 2 GB (or any, with `external`) keeps its weights in `text.onnx.data`."""
    hooks = text_hooks(loaded)
    tokenizer = hooks.tokenizer(loaded.source)
    # The backend exactly as loaded, before any call sets truncation or padding on it.
    tokenizer.backend_tokenizer.save(str(out / TOKENIZER_FILE))
    rules = hooks.rules(tokenizer, loaded.model, loaded.source)
    # Traced on a real padded batch: rows of different lengths.
    dummy = hf_encode(tokenizer, ["a photo of a cat", "a"], rules, return_tensors="pt")
    export_text_onnx(
        hooks.module(loaded.model).eval(),
        out / TEXT_ONNX,
        {name: dummy[name] for name in rules.input_names},
        loaded.embedding_dim,
        opset,
        external,
    )
    data = data_path(out / TEXT_ONNX)
    return TextTower(
        onnx_file=TEXT_ONNX,
        onnx_sha256=file_sha256(out / TEXT_ONNX),
        onnx_data=ExternalData(file=data.name, sha256=file_sha256(data)) if data.is_file() else None,
        tokenizer_file=TOKENIZER_FILE,
        tokenizer_sha256=file_sha256(out / TOKENIZER_FILE),
        **rules.fields(),
    )


# --- the gate ------------------------------------------------------------------------------------


@dataclass
class TextResult:
    index: int
    category: str
    text: str
    tokens: int  # our ids, start- and end-of-text included
    ids_identical: bool  # to the fast tokenizer's, truncation=True
    mask_identical: bool
    first_difference: str  # where our ids first differ from transformers', "" if they do not
    slow_tokenizer_ids: list[int] | None  # the family's slow tokenizer's ids where they differ from the fast
    raw_max_abs: float | None  # None when the graph could not run the text
    relative_error: float | None
    cosine: float
    normalized_max_abs: float
    error: str = ""  # why the graph could not run the text
    passed: bool = False

    @property
    def name(self) -> str:
        preview = self.text if len(self.text) <= PREVIEW_CHARS else self.text[: PREVIEW_CHARS - 1] + "…"
        return f"text #{self.index} [{self.category}] {preview!r}"


@dataclass
class TextReport:
    onnx_file: str
    onnx_sha256: str
    tokenizer_file: str
    tokenizer_sha256: str
    tolerance: float
    slow_tokenizer: str
    texts: list[TextResult]
    batch_shape: tuple[int, int]
    batch_tokens_identical: bool  # pad(ours) == the fast tokenizer's padding=True batch
    batch_normalized_max_abs: float
    spec_names_this_graph: bool  # model.json's text.onnx_sha256 is this file's
    spec_names_this_tokenizer: bool  # model.json's text.tokenizer_sha256 is this file's
    tokenizer_error: str  # why our tokenizer refused the file, "" when it loaded
    seconds: float
    batch_error: str = ""  # why the graph could not run the batch, "" when it ran
    reference: str = ""  # set by run_text_gate: REFERENCE + the family's reference_name

    @property
    def criterion(self) -> str:
        return (
            "ids and masks identical to transformers' fast tokenizer (each text and the padded batch); "
            f"max-abs of L2-normalised embeddings <= {self.tolerance:g}; batch vs one at a time <= "
            f"{self.tolerance:g}"
        )

    @property
    def tokens_identical(self) -> bool:
        return (
            bool(self.texts)
            and all(r.ids_identical and r.mask_identical for r in self.texts)
            and self.batch_tokens_identical
        )

    @property
    def slow_differences(self) -> list[TextResult]:
        return [r for r in self.texts if r.slow_tokenizer_ids is not None]

    @property
    def verified(self) -> bool:
        return (
            not self.tokenizer_error
            and self.tokens_identical
            and all(r.passed for r in self.texts)
            and self.batch_normalized_max_abs <= self.tolerance
            and self.spec_names_this_graph
            and self.spec_names_this_tokenizer
        )

    def failures(self) -> list[str]:
        found = [f"tokenizer: {self.tokenizer_error}"] if self.tokenizer_error else []
        found += [r.name for r in self.texts if not r.passed]
        if self.texts and not self.batch_tokens_identical:
            found.append("text batch: padded ids or masks differ from transformers'")
        if self.batch_normalized_max_abs > self.tolerance:
            found.append(f"text batch vs one at a time {self.batch_error}".rstrip())
        if not self.spec_names_this_graph:
            found.append(f"text: model.json's onnx_sha256 is not {self.onnx_file}'s")
        if not self.spec_names_this_tokenizer:
            found.append(f"text: model.json's tokenizer_sha256 is not {self.tokenizer_file}'s")
        return found

    def summary(self) -> TextParity:
        return TextParity(
            verified=self.verified,
            texts=len(self.texts),
            tokens_identical=self.tokens_identical,
            max_abs_normalized=max((r.normalized_max_abs for r in self.texts), default=WORST_MAX_ABS),
            min_cosine=min((r.cosine for r in self.texts), default=WORST_COSINE),
            batch_max_abs_normalized=self.batch_normalized_max_abs,
            onnx_sha256=self.onnx_sha256,
            tokenizer_sha256=self.tokenizer_sha256,
        )

    def to_dict(self) -> dict[str, Any]:
        body = asdict(self)
        body.update(verified=self.verified, tokens_identical=self.tokens_identical, criterion=self.criterion)
        body["slow_tokenizer_differences"] = len(self.slow_differences)
        return body

    def table(self) -> str:
        """One line per category, then every failing text by name."""
        lines = [
            f"text tower ({self.onnx_file}, {self.tokenizer_file}): {len(self.texts)} texts",
            f"{'category':28} {'texts':>5} {'tokens':>7} {'ids':>9} {'norm max-abs':>13} {'min cosine':>10}  result",
        ]
        for category in dict.fromkeys(r.category for r in self.texts):
            rows = [r for r in self.texts if r.category == category]
            lengths = sorted(r.tokens for r in rows)
            same = sum(r.ids_identical and r.mask_identical for r in rows)
            verdict = "ok" if all(r.passed for r in rows) else "FAIL"
            lines.append(
                f"{category:28} {len(rows):5} {f'{lengths[0]}-{lengths[-1]}':>7} {f'{same}/{len(rows)}':>9} "
                f"{max(r.normalized_max_abs for r in rows):13.3e} {min(r.cosine for r in rows):10.7f}  {verdict}"
            )
        failing = [r for r in self.texts if not r.passed]
        for r in failing[:TABLE_FAILURES]:
            why = r.error or (r.first_difference if not r.ids_identical else "")
            why = why or ("attention mask differs" if not r.mask_identical else "")
            why = why or f"normalised max-abs {r.normalized_max_abs:.3e} > {self.tolerance:g}"
            lines.append(f"FAIL {r.name}: {why}")
        if len(failing) > TABLE_FAILURES:
            lines.append(
                f"FAIL ... and {len(failing) - TABLE_FAILURES} more texts (every one in parity.json)"
            )
        n, length = self.batch_shape
        batch = "ok" if self.batch_normalized_max_abs <= self.tolerance else "FAIL"
        tokens = "ids and masks as transformers'" if self.batch_tokens_identical else "ids or masks DIFFER"
        lines.append(
            f"batch of {n} texts padded to {length} ({tokens}) vs one at a time: "
            f"{self.batch_normalized_max_abs:.3e}  {batch}"
        )
        lines.append(
            f"slow tokenizer ({self.slow_tokenizer}) gives other ids on {len(self.slow_differences)} of "
            f"{len(self.texts)} texts (recorded in parity.json; not a failure: the fast tokenizer is the reference)"
        )
        lines.append(f"text criterion: {self.criterion}; reference: {self.reference}")
        lines += [f"FAIL: {problem}" for problem in self.failures() if not problem.startswith("text #")]
        return "\n".join(lines)


def _unit(vector: np.ndarray) -> np.ndarray:
    vector = vector.astype(np.float64)
    return vector / np.linalg.norm(vector)


def _first_difference(ours: list[int], theirs: list[int]) -> str:
    if ours == theirs:
        return ""
    for position, (a, b) in enumerate(zip(ours, theirs)):
        if a != b:
            return f"ids differ from transformers' at position {position} (ours {a}, transformers {b})"
    return f"ids differ from transformers' in length (ours {len(ours)}, transformers {len(theirs)})"


def torch_text_vector(loaded: Loaded, hf: Any, input_names: tuple[str, ...]) -> np.ndarray:
    """PyTorch's text vector (the family's `features`) for one text as transformers encoded it."""
    inputs = {name: torch.tensor([hf[name]]) for name in input_names}
    with torch.no_grad():
        features = text_hooks(loaded).features(loaded.model, inputs)
    vector: np.ndarray = features[0].numpy()
    return vector


def compare_text(
    index: int,
    item: ParityText,
    ours: np.ndarray,
    fast: Any,
    slow: Any | None,
    loaded: Loaded,
    session: Any,
    tower: TextTower,
    tolerance: float,
) -> tuple[TextResult, np.ndarray | None]:
    """One text: tokens against transformers', then our graph against PyTorch on transformers' ids."""
    hf = hf_encode(fast, item.text, tower)
    ids, mask = pad([ours], tower)
    ours_ids = ids[0].tolist()
    slow_ids = None
    if slow is not None:
        slow_ids = hf_encode(slow, item.text, tower)["input_ids"]
        slow_ids = None if slow_ids == hf["input_ids"] else slow_ids
    reference = torch_text_vector(loaded, hf, tower.input_names)
    error, vector = "", None
    try:
        vector = run_text(session, collate([ours], tower))[0]
    except Exception as exc:  # noqa: BLE001 - a graph or tokenizer that cannot run this text fails it
        error = f"the text graph cannot run it: {type(exc).__name__}: {str(exc)[:200]}"
    result = TextResult(
        index=index,
        category=item.category,
        text=item.text,
        tokens=len(ours),
        ids_identical=ours_ids == hf["input_ids"],
        mask_identical=mask[0].tolist() == hf["attention_mask"],
        first_difference=_first_difference(ours_ids, hf["input_ids"]),
        slow_tokenizer_ids=slow_ids,
        raw_max_abs=None,
        relative_error=None,
        cosine=WORST_COSINE,
        normalized_max_abs=WORST_MAX_ABS,
        error=error,
    )
    if vector is not None:
        diff = reference.astype(np.float64) - vector
        result.raw_max_abs = float(np.abs(diff).max())
        result.relative_error = float(np.linalg.norm(diff) / max(np.linalg.norm(reference), 1e-30))
        result.cosine = float(_unit(reference) @ _unit(vector))
        result.normalized_max_abs = float(np.abs(_unit(reference) - _unit(vector)).max())
    result.passed = (
        vector is not None
        and result.ids_identical
        and result.mask_identical
        and result.normalized_max_abs <= tolerance
    )
    return result, vector


@contextmanager
def one_torch_thread() -> Iterator[None]:
    """The PyTorch reference on one thread: hundreds of short forward passes, where two OpenMP
    threads waiting on each other on a busy 2-core machine measured 10-20x slower (90-150 s
    against 8 s for the full-size set). The ORT session keeps the server's configuration."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def run_text_gate(
    model_dir: Path, tower: TextTower, loaded: Loaded, texts: list[ParityText], tolerance: float
) -> TextReport:
    """Every text of the set, then the whole set as one padded batch."""
    started = time.perf_counter()
    graph, tokenizer_path = model_dir / tower.onnx_file, model_dir / tower.tokenizer_file
    onnx_sha, tokenizer_sha = file_sha256(graph), file_sha256(tokenizer_path)
    hooks = text_hooks(loaded)
    fast = hooks.tokenizer(loaded.source)
    slow, slow_name = hooks.slow_tokenizer(loaded.source)
    report = TextReport(
        onnx_file=tower.onnx_file,
        onnx_sha256=onnx_sha,
        tokenizer_file=tower.tokenizer_file,
        tokenizer_sha256=tokenizer_sha,
        tolerance=tolerance,
        slow_tokenizer=slow_name,
        texts=[],
        batch_shape=(0, 0),
        batch_tokens_identical=False,
        batch_normalized_max_abs=WORST_MAX_ABS,
        spec_names_this_graph=tower.onnx_sha256 == onnx_sha,
        spec_names_this_tokenizer=tower.tokenizer_sha256 == tokenizer_sha,
        tokenizer_error="",
        seconds=0.0,
        reference=REFERENCE + hooks.reference_name,
    )
    try:
        rows = TextTokenizer.load(tokenizer_path, tower).encode([item.text for item in texts])
    except Exception as exc:  # noqa: BLE001 - whatever a broken tokenizer file raises, the gate fails
        report.tokenizer_error = f"{type(exc).__name__}: {exc}"
        report.seconds = round(time.perf_counter() - started, 2)
        return report
    session = open_session(graph, plan_threads().intra_op)
    singles = []
    with one_torch_thread():
        for index, (item, row) in enumerate(zip(texts, rows)):
            result, vector = compare_text(index, item, row, fast, slow, loaded, session, tower, tolerance)
            report.texts.append(result)
            singles.append(vector)
    ids, mask = pad(rows, tower)
    report.batch_shape = (int(ids.shape[0]), int(ids.shape[1]))
    hf = hf_encode(fast, [item.text for item in texts], tower, return_tensors="np")
    report.batch_tokens_identical = np.array_equal(hf["input_ids"], ids) and np.array_equal(
        hf["attention_mask"], mask
    )
    try:
        batch = run_text(session, collate(rows, tower))
        report.batch_normalized_max_abs = max(
            float(np.abs(_unit(b) - _unit(s)).max()) if s is not None else WORST_MAX_ABS
            for b, s in zip(batch, singles)
        )
    except Exception as exc:  # noqa: BLE001 - the batch check then fails at WORST_MAX_ABS
        report.batch_error = f"{type(exc).__name__}: {str(exc)[:200]}"
    report.seconds = round(time.perf_counter() - started, 2)
    return report
