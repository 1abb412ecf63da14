"""The golden self-check: a deployment proves it still computes the vectors the gate verified.

The export gate proves a graph on the machine that exported it. A server may run elsewhere:
another CPU (AVX-512 picks other ORT kernels), other library versions, a half-copied models
folder. So each export keeps a few of the gate's inputs with reference vectors (`golden.npz`:
PyTorch's for an fp32 export, the fp32 graph's for an int8 variant); when a graph loads, the
server embeds them through its own path (decode, preprocessing or the tokenizer, the very session
it will serve with) and compares, by the rule the gate held the graph to: within 1e-6 for fp32,
cosine at or above model.json's `golden.min_cosine` for int8. `embedder verify` does the same from
outside, over gRPC.
"""

from __future__ import annotations

import io
import time
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort

from .preprocess import Preprocessor, decode
from .runtime import run, run_text
from .spec import ModelSpec, file_sha256
from .text import TextTokenizer

# L2-normalised max-abs a served vector may differ from its reference: the project's 1e-6, as the
# gate holds; other SIMD kernels reorder sums, measured far under it (docs/operations.md).
TOLERANCE = 1e-6
SIMD_FLAGS = (
    *("sse4_2", "avx", "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512_vnni", "avx512_bf16"),
    *("avx_vnni", "amx_tile", "amx_int8", "amx_bf16", "asimd", "sve"),
)


class GoldenError(ValueError):
    """A golden file that cannot be used: missing, changed since export, or malformed."""


@dataclass(frozen=True)
class GoldenSet:
    names: list[str]
    images: list[bytes]
    vectors: np.ndarray  # [K, D] reference vectors of the images (PyTorch's, or the fp32 graph's)
    texts: list[str]
    text_vectors: np.ndarray  # [T, D], T may be 0


@dataclass(frozen=True)
class Comparison:
    max_abs: float  # of the L2-normalised vectors
    min_cosine: float
    worst: str  # the input that differs most (lowest cosine)

    def passes(self, required_cosine: float | None) -> bool:
        """`required_cosine` None: within TOLERANCE; else every cosine at it or above."""
        if required_cosine is None:
            return self.max_abs <= TOLERANCE
        return self.min_cosine >= required_cosine


def rule(required_cosine: float | None) -> str:
    if required_cosine is None:
        return f"tolerance {TOLERANCE:g}"
    return f"quantised: cosine to the fp32 graph >= {required_cosine:g}"


@dataclass(frozen=True)
class SelfCheck:
    state: str  # "passed", "failed", "failed, served anyway", "not self-checked"
    max_abs: float = float("nan")
    worst: str = ""  # the input that differs most
    items: int = 0
    seconds: float = 0.0
    cpu_flags: str = ""
    min_cosine: float = float("nan")
    required_cosine: float | None = None  # None: the max-abs rule

    def describe(self) -> str:
        if self.state == "not self-checked":
            return "not self-checked (exported without a golden set)"
        return (
            f"golden self-check {self.state}: normalised max-abs {self.max_abs:.2e}, min cosine "
            f"{self.min_cosine:.6f} ({rule(self.required_cosine)}) over {self.items} inputs, worst "
            f"{self.worst!r}, in {self.seconds:.2f} s on CPU flags {self.cpu_flags}"
        )


def cpu_flags() -> str:
    """The SIMD extensions of this CPU that ORT picks kernels by (Linux; empty elsewhere)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return ""
    found = next(
        (
            line.split(":", 1)[1].split()
            for line in text.splitlines()
            if line.startswith(("flags", "Features"))
        ),
        [],
    )
    return " ".join(flag for flag in SIMD_FLAGS if flag in found)


def load_golden(path: Path, sha256: str) -> GoldenSet:
    try:
        actual = file_sha256(path)
    except OSError as exc:
        raise GoldenError(f"{path.name} cannot be read: {exc.strerror or exc}") from None
    if actual != sha256:
        raise GoldenError(f"{path.name} sha256 {actual[:16]}... does not match model.json ({sha256})")
    try:
        with np.load(path) as data:  # numpy refuses pickled objects by default
            names = [str(n) for n in data["names"]]
            images = [data[f"image_{i}"].tobytes() for i in range(len(names))]
            vectors = np.asarray(data["vectors"], dtype=np.float64)
            texts = [str(t) for t in data["texts"]] if "texts" in data else []
            text_vectors = np.asarray(data["text_vectors"], dtype=np.float64) if texts else np.zeros((0, 0))
    except (KeyError, ValueError, OSError, zipfile.BadZipFile) as exc:
        raise GoldenError(f"{path.name} is not a golden set: {type(exc).__name__}: {exc}") from None
    if len(vectors) != len(images) or len(text_vectors) != len(texts):
        raise GoldenError(
            f"{path.name}: {len(images)} images and {len(texts)} texts, but other vector counts"
        )
    return GoldenSet(names, images, vectors, texts, text_vectors)


def _unit(vectors: np.ndarray) -> np.ndarray:
    wide = np.asarray(vectors, dtype=np.float64)
    unit: np.ndarray = wide / np.linalg.norm(wide, axis=-1, keepdims=True)
    return unit


def compare(served: np.ndarray, reference: np.ndarray, names: list[str]) -> Comparison:
    """Max-abs and cosines of the L2-normalised vectors, and the input with the lowest cosine."""
    if served.shape != reference.shape:
        raise GoldenError(
            f"the graph gave {list(served.shape)} for the golden inputs, the references are {list(reference.shape)}"
        )
    ours, theirs = _unit(served), _unit(reference)
    cosines = (ours * theirs).sum(axis=-1)
    worst = int(np.argmin(cosines))
    return Comparison(float(np.abs(ours - theirs).max()), float(cosines[worst]), names[worst])


def check_images(golden: GoldenSet, spec: ModelSpec, session: ort.InferenceSession) -> Comparison:
    """The golden images through decode -> preprocess -> `session`, as one batch."""
    preprocessor = Preprocessor(spec.preprocessing)
    tensors = np.stack([preprocessor(decode(data)) for data in golden.images])
    return compare(run(session, tensors), golden.vectors, golden.names)


def check_texts(golden: GoldenSet, tokenizer: TextTokenizer, session: ort.InferenceSession) -> Comparison:
    """The golden texts through the tokenizer -> `session`, as one padded batch."""
    feeds = tokenizer.feeds(tokenizer.encode(golden.texts))
    return compare(run_text(session, feeds), golden.text_vectors, golden.texts)


def measure(check: Callable[[], Comparison], items: int, required_cosine: float | None) -> SelfCheck:
    """Runs `check` and grades it by the rule (`Comparison.passes`)."""
    started = time.perf_counter()
    found = check()
    state = "passed" if found.passes(required_cosine) else "failed"
    return SelfCheck(
        state,
        found.max_abs,
        found.worst,
        items,
        time.perf_counter() - started,
        cpu_flags(),
        found.min_cosine,
        required_cosine,
    )


def encoded(images: list[bytes]) -> dict[str, np.ndarray]:
    """The npz entries holding encoded images, as uint8 arrays (no pickling)."""
    return {f"image_{i}": np.frombuffer(data, dtype=np.uint8) for i, data in enumerate(images)}


def write_golden(path: Path, golden: GoldenSet) -> None:
    """What the exporter writes (and tests use to build sets of their own)."""
    buffer = io.BytesIO()
    arrays: dict[str, np.ndarray] = {
        "names": np.array(golden.names),
        "vectors": np.asarray(golden.vectors, dtype=np.float64),
        **encoded(golden.images),
    }
    if golden.texts:
        arrays["texts"] = np.array(golden.texts)
        arrays["text_vectors"] = np.asarray(golden.text_vectors, dtype=np.float64)
    np.savez(buffer, **arrays)  # type: ignore[arg-type]
    path.write_bytes(buffer.getvalue())
