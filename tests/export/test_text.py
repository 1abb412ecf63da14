"""CLIP's text tower through the real CLI: `python -m export clip ...` writes `text.onnx` and
`tokenizer.json` beside the image graph, and the gate (`python -m export.parity`) holds them to
transformers' fast tokenizer and PyTorch's `get_text_features`, failing with the text named.

The checks written here are independent of the gate: the contract is read from the graph, the
ids come from `AutoTokenizer.from_pretrained(checkpoint)`, the vectors from `CLIPModel`.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
import torch
from transformers import AutoTokenizer, CLIPModel

from embedder.runtime import open_session, run_text
from embedder.spec import ModelSpec, load_spec
from embedder.text import TextTokenizer, collate, pad
from export.parity_texts import parity_texts
from tests.support.graphs import perturb_first_layernorm

TOLERANCE = 1e-6  # the gate's contract, restated: a test must not follow a loosening
MAX_TOKENS = 77
TEXTS = [item.text for item in parity_texts()]


def output(process: subprocess.CompletedProcess[str]) -> str:
    return f"exit {process.returncode}\n{process.stdout[-3000:]}\n{process.stderr[-3000:]}"


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def unit(vectors: np.ndarray) -> np.ndarray:
    vectors = np.asarray(vectors, dtype=np.float64)
    return vectors / np.linalg.norm(vectors, axis=-1, keepdims=True)


def text_report(directory: Path) -> dict[str, Any]:
    text: dict[str, Any] = json.loads((directory / "parity.json").read_text(encoding="utf-8"))["text"]
    return text


def copy_model(source: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(source, tmp_path / source.name))


def edit_text_spec(directory: Path, **changes: object) -> None:
    """Edit model.json's text section as plain JSON (not through the writer under test)."""
    path = directory / "model.json"
    body = json.loads(path.read_text(encoding="utf-8"))
    body["text"].update(changes)
    path.write_text(json.dumps(body, indent=2), encoding="utf-8")


@pytest.fixture(scope="module")
def checkpoint_export(
    tiny_checkpoints: dict[str, Path],
    export_model: Callable[..., Any],
    tmp_path_factory: pytest.TempPathFactory,
) -> Path:
    """The tiny CLIP checkpoint directory (model, processor, tokenizer) exported through the CLI
    without --random-init: the path a downloaded checkpoint takes."""
    out = tmp_path_factory.mktemp("text-exports") / "tiny-clip-checkpoint"
    process = export_model("clip", tiny_checkpoints["clip"], out, "--no-huge")
    assert process.returncode == 0, output(process)
    return out


# --- what the export writes ------------------------------------------------------------------------


def test_text_graph_and_tokenizer_are_described_by_model_json(tiny_clip_dir: Path) -> None:
    spec = load_spec(tiny_clip_dir / "model.json")
    text = spec.text
    assert text is not None and spec.modalities == ("image", "text")
    assert text.onnx_file != spec.onnx_file
    assert sha256(tiny_clip_dir / text.onnx_file) == text.onnx_sha256
    assert sha256(tiny_clip_dir / text.tokenizer_file) == text.tokenizer_sha256
    assert (text.max_length, text.pad_id, text.start_of_text_id, text.end_of_text_id) == (
        MAX_TOKENS,
        49407,
        49406,
        49407,
    )
    assert text.truncation == "keep_end_of_text"
    assert text.parity is not None and text.verified and spec.verified
    assert text.parity.onnx_sha256 == text.onnx_sha256
    assert text.parity.tokenizer_sha256 == text.tokenizer_sha256


def test_text_graph_has_the_contract(tiny_clip_dir: Path) -> None:
    """input_ids, attention_mask int64 [N, L] -> embedding float32 [N, D], N and L dynamic, D the
    image tower's; it runs at every length up to 77 and every batch size."""
    spec = load_spec(tiny_clip_dir / "model.json")
    assert spec.text is not None
    path = tiny_clip_dir / spec.text.onnx_file
    onnx.checker.check_model(str(path), full_check=True)
    graph = onnx.load(str(path)).graph
    initializers = {init.name for init in graph.initializer}
    inputs = [i for i in graph.input if i.name not in initializers]
    assert [i.name for i in inputs] == ["input_ids", "attention_mask"]
    assert [o.name for o in graph.output] == ["embedding"]
    for value in inputs:
        assert value.type.tensor_type.elem_type == onnx.TensorProto.INT64
        dims = value.type.tensor_type.shape.dim
        assert len(dims) == 2 and all(d.dim_param and not d.HasField("dim_value") for d in dims)
    assert graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    session = open_session(path, 1)
    rng = np.random.default_rng(0)
    for batch, length in ((1, 2), (3, 9), (2, MAX_TOKENS)):
        ids = rng.integers(0, 49406, (batch, length))
        ids[:, 0], ids[:, -1] = 49406, 49407
        feeds = {
            "input_ids": ids.astype(np.int64),
            "attention_mask": np.ones((batch, length), dtype=np.int64),
        }
        got = run_text(session, feeds)
        assert got.shape == (batch, spec.embedding_dim) and got.dtype == np.float32


def test_the_gate_passes_on_every_text(tiny_clip_export: Any) -> None:
    directory = tiny_clip_export.directory
    report = text_report(directory)
    rows = report["texts"]
    assert [row["text"] for row in rows] == TEXTS
    for row in rows:
        assert row["ids_identical"] and row["mask_identical"], row["text"]
        assert row["normalized_max_abs"] <= TOLERANCE, row["text"]
    assert report["verified"] and report["tokens_identical"] and report["batch_tokens_identical"]
    assert report["batch_normalized_max_abs"] <= TOLERANCE
    assert report["batch_shape"] == [len(TEXTS), MAX_TOKENS]
    summary = load_spec(directory / "model.json").text.parity  # type: ignore[union-attr]
    assert summary is not None and summary.texts == len(TEXTS) and summary.tokens_identical
    assert summary.max_abs_normalized == max(row["normalized_max_abs"] for row in rows)
    # The slow tokenizer's differences are recorded per text, counted in the printout, not failed.
    differ = [row for row in rows if row["slow_tokenizer_ids"] is not None]
    assert report["slow_tokenizer_differences"] == len(differ)
    assert all(row["passed"] for row in differ)
    printed = tiny_clip_export.process.stdout
    assert f"gives other ids on {len(differ)} of {len(TEXTS)} texts" in printed
    assert f"{len(TEXTS)} texts" in printed and "PASSED" in printed


def test_export_prints_no_warnings(tiny_clip_export: Any) -> None:
    """Only what a user must know: the random-init label, progress lines, the gate's table."""
    lines = tiny_clip_export.process.stderr.splitlines()
    noise = [line for line in lines if " INFO " not in line and "RANDOM-INIT" not in line]
    assert noise == [], noise


def test_checkpoint_export_equals_transformers_and_pytorch(
    checkpoint_export: Path, tiny_checkpoints: dict[str, Path]
) -> None:
    """Independently of the gate: our tokenizer on the exported tokenizer.json against
    AutoTokenizer.from_pretrained(checkpoint), and the graph against CLIPModel.get_text_features,
    one text at a time and as one padded batch."""
    checkpoint = tiny_checkpoints["clip"]
    spec = load_spec(checkpoint_export / "model.json")
    assert spec.verified and spec.text is not None and spec.text.verified
    ours = TextTokenizer.load(checkpoint_export / spec.text.tokenizer_file, spec.text)
    hf = AutoTokenizer.from_pretrained(checkpoint)
    rows = ours.encode(TEXTS)
    expected = hf(TEXTS, truncation=True, max_length=MAX_TOKENS)["input_ids"]
    assert [row.tolist() for row in rows] == expected
    ids, mask = pad(rows, spec.text)
    padded = hf(TEXTS, padding=True, truncation=True, max_length=MAX_TOKENS, return_tensors="np")
    assert np.array_equal(ids, padded["input_ids"]) and np.array_equal(mask, padded["attention_mask"])

    model = CLIPModel.from_pretrained(checkpoint).eval()
    session = open_session(checkpoint_export / spec.text.onnx_file, 1)
    batch = run_text(session, collate(rows, spec.text))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # hundreds of tiny forward passes: two threads only wait on each other
    try:
        for i, row in enumerate(rows):
            with torch.no_grad():
                reference = model.get_text_features(input_ids=torch.tensor(row[None])).numpy()
            single = run_text(session, collate([row], spec.text))
            assert np.abs(unit(single) - unit(reference)).max() <= TOLERANCE, TEXTS[i]
            assert np.abs(unit(batch[i]) - unit(single[0])).max() <= TOLERANCE, TEXTS[i]
    finally:
        torch.set_num_threads(threads)


# --- --no-text and re-running the gate -----------------------------------------------------------


def test_no_text_exports_the_image_tower_alone(
    tiny_clip_dir: Path, export_model: Callable[..., Any], tmp_path: Path
) -> None:
    """Over an earlier export with a text tower: the text files go with it."""
    out = copy_model(tiny_clip_dir, tmp_path)
    process = export_model("clip", "tiny-clip", out, "--random-init", "--seed", "7", "--no-huge", "--no-text")
    assert process.returncode == 0, output(process)
    spec = load_spec(out / "model.json")
    assert spec.text is None and spec.modalities == ("image",) and spec.verified
    assert not (out / "text.onnx").exists() and not (out / "tokenizer.json").exists()
    assert json.loads((out / "parity.json").read_text())["text"] is None
    assert "texts" not in process.stdout


def without_parities(spec: ModelSpec) -> ModelSpec:
    text = spec.text.model_copy(update={"parity": None}) if spec.text is not None else None
    return spec.model_copy(update={"parity": None, "text": text})


def test_rerun_gate_checks_the_text_half_again(
    tiny_clip_dir: Path, run_parity: Callable[..., Any], tmp_path: Path
) -> None:
    directory = copy_model(tiny_clip_dir, tmp_path)
    before = load_spec(directory / "model.json")
    (directory / "parity.json").unlink()
    process = run_parity(directory, "--no-huge")
    assert process.returncode == 0, output(process)
    assert f"{len(TEXTS)} texts" in process.stdout and "PASSED" in process.stdout
    after = load_spec(directory / "model.json")
    assert after.text is not None and after.text.verified
    assert without_parities(after) == without_parities(before)
    assert text_report(directory)["verified"] is True


# --- the gate fails, naming the text ---------------------------------------------------------------


def drop_merge(path: Path, result: str) -> None:
    """Remove the BPE merge that produces `result` from a tokenizer.json."""
    body = json.loads(path.read_text(encoding="utf-8"))
    merges = body["model"]["merges"]
    (index,) = [
        i
        for i, pair in enumerate(merges)
        if "".join(pair if isinstance(pair, list) else pair.split()) == result
    ]
    del merges[index]
    path.write_text(json.dumps(body, ensure_ascii=False), encoding="utf-8")


def assert_text_gate_failed(directory: Path, process: subprocess.CompletedProcess[str]) -> ModelSpec:
    assert process.returncode != 0, output(process)
    assert "FAIL" in process.stdout and "Traceback" not in process.stderr, output(process)
    spec = load_spec(directory / "model.json")
    assert spec.text is not None and spec.text.parity is not None
    assert not spec.text.parity.verified and not spec.text.verified
    assert not spec.verified  # the model is not marked verified: the gate is one gate
    assert json.loads((directory / "parity.json").read_text())["verified"] is False
    return spec


def test_gate_fails_on_a_changed_merge(
    tiny_clip_dir: Path, run_parity: Callable[..., Any], tmp_path: Path
) -> None:
    directory = copy_model(tiny_clip_dir, tmp_path)
    tokenizer = directory / "tokenizer.json"
    drop_merge(tokenizer, "cat</w>")
    edit_text_spec(directory, tokenizer_sha256=sha256(tokenizer))  # only the ids differ now

    process = run_parity(directory, "--no-huge")
    spec = assert_text_gate_failed(directory, process)
    assert spec.text is not None and spec.text.parity is not None and not spec.text.parity.tokens_identical
    assert spec.text.parity.tokenizer_sha256 == sha256(tokenizer)  # judged the changed file
    assert "text #0 [captions] 'a photo of a cat'" in process.stderr, output(process)
    assert "ids differ from transformers' at position 5" in process.stdout
    rows = {row["text"]: row for row in text_report(directory)["texts"]}
    assert not rows["a photo of a cat"]["ids_identical"] and rows["a photo of a dog"]["ids_identical"]


def test_gate_fails_on_a_tokenizer_that_does_not_frame_texts(
    tiny_clip_dir: Path, run_parity: Callable[..., Any], tmp_path: Path
) -> None:
    """Without its post-processor the tokenizer adds no start- and end-of-text tokens: refused."""
    directory = copy_model(tiny_clip_dir, tmp_path)
    tokenizer = directory / "tokenizer.json"
    body = json.loads(tokenizer.read_text(encoding="utf-8"))
    body["post_processor"] = None
    tokenizer.write_text(json.dumps(body, ensure_ascii=False), encoding="utf-8")
    edit_text_spec(directory, tokenizer_sha256=sha256(tokenizer))

    process = run_parity(directory, "--no-huge")
    assert_text_gate_failed(directory, process)
    assert "tokenizer: ValueError: the tokenizer frames an empty text as []" in process.stderr, output(
        process
    )


def test_gate_fails_on_a_text_graph_that_differs(
    tiny_clip_dir: Path, run_parity: Callable[..., Any], tmp_path: Path
) -> None:
    directory = copy_model(tiny_clip_dir, tmp_path)
    graph = directory / "text.onnx"
    perturb_first_layernorm(graph)
    edit_text_spec(directory, onnx_sha256=sha256(graph))

    process = run_parity(directory, "--no-huge")
    spec = assert_text_gate_failed(directory, process)
    assert spec.text is not None and spec.text.parity is not None
    assert spec.text.parity.tokens_identical and spec.text.parity.max_abs_normalized > TOLERANCE
    assert spec.parity is not None and spec.parity.max_abs_normalized <= TOLERANCE  # images still fine
    assert "text #0 [captions] 'a photo of a cat'" in process.stderr, output(process)
    assert "normalised max-abs" in process.stdout


def test_gate_fails_when_model_json_names_another_text_graph(
    tiny_clip_dir: Path, run_parity: Callable[..., Any], tmp_path: Path
) -> None:
    directory = copy_model(tiny_clip_dir, tmp_path)
    edit_text_spec(directory, onnx_sha256="0" * 64)
    process = run_parity(directory, "--no-huge")
    assert_text_gate_failed(directory, process)
    assert "model.json's onnx_sha256 is not text.onnx's" in process.stderr, output(process)


# --- full size -----------------------------------------------------------------------------------


@pytest.mark.slow
def test_full_size_text_half_passes(clip_b32_export: Any) -> None:
    directory = clip_b32_export.directory
    spec = load_spec(directory / "model.json")
    assert spec.verified and spec.text is not None and spec.text.verified
    assert spec.text.max_length == MAX_TOKENS
    report = text_report(directory)
    assert [row["text"] for row in report["texts"]] == TEXTS
    assert all(row["ids_identical"] and row["mask_identical"] for row in report["texts"])
    assert max(row["normalized_max_abs"] for row in report["texts"]) <= TOLERANCE
    assert report["batch_normalized_max_abs"] <= TOLERANCE and report["batch_tokens_identical"]
    session = open_session(directory / spec.text.onnx_file, 1)
    ids = np.array([[49406, 320, 1125, 539, 320, 2368, 49407]], dtype=np.int64)
    feeds = {"input_ids": ids, "attention_mask": np.ones_like(ids)}
    assert run_text(session, feeds).shape == (1, spec.embedding_dim) == (1, 512)
