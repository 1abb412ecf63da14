"""The schema of `models/<name>/model.json`: one class, written by the exporter, read by the server.

Every model the server can serve is described by data only: the graph contract
(`pixel_values` float32 [N,3,H,W] -> `embedding` float32 [N,D]), the exact preprocessing the
export gate proved equal to the Hugging Face slow processor, and where the weights came from.
Validation is strict (unknown keys and bad values are errors) and the objects are frozen.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    ValidationError,
    field_validator,
    model_serializer,
    model_validator,
)

from .families import FAMILIES

SCHEMA_VERSION: Literal[1] = 1
SPEC_FILE = "model.json"
PARITY_FILE = "parity.json"
MAX_SPEC_BYTES = 1 << 20  # a model.json is a few KB

# Pillow's resampling filters by name; the integers are PIL.Image.Resampling values, which is
# what HF processor configs store in `resample`.
RESAMPLE_CODES: dict[str, int] = {
    "nearest": 0,
    "lanczos": 1,
    "bilinear": 2,
    "bicubic": 3,
    "box": 4,
    "hamming": 5,
}
Resample = Literal["nearest", "lanczos", "bilinear", "bicubic", "box", "hamming"]
# The poolings each family's graph can be exported with; the first is the family's default.
POOLINGS: dict[str, tuple[str, ...]] = {name: family.poolings for name, family in FAMILIES.items()}
NAME_PATTERN = r"^[a-z0-9][a-z0-9._-]{0,62}$"


class _Frozen(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


class Resize(_Frozen):
    """HF `size`: either the shortest edge (aspect ratio kept) or an exact height x width."""

    shortest_edge: int | None = Field(default=None, gt=0, le=4096)
    height: int | None = Field(default=None, gt=0, le=4096)
    width: int | None = Field(default=None, gt=0, le=4096)

    @model_validator(mode="after")
    def _one_rule(self) -> Resize:
        exact = self.height is not None and self.width is not None
        if (self.shortest_edge is None) == (not exact) or (self.height is None) != (self.width is None):
            raise ValueError("give either shortest_edge, or both height and width")
        return self


class CropSize(_Frozen):
    height: int = Field(gt=0, le=4096)
    width: int = Field(gt=0, le=4096)


class Preprocessing(_Frozen):
    """The fixed pipeline decode -> RGB -> resize -> center crop -> rescale -> normalize -> NCHW.

    Values come from the checkpoint's own processor config. `rescale_factor` and `mean`/`std` are
    stored as the exact floats the processor uses so the server reproduces it bit for bit.
    """

    processor_class: str = Field(min_length=1)
    convert_rgb: Literal[True] = True
    resize: Resize | None
    resample: Resample
    center_crop: CropSize | None
    rescale_factor: float | None = Field(gt=0)
    mean: tuple[float, float, float] | None
    std: tuple[float, float, float] | None

    @model_validator(mode="after")
    def _consistent(self) -> Preprocessing:
        if (self.mean is None) != (self.std is None):
            raise ValueError("mean and std go together (normalisation on or off)")
        if self.std is not None and any(s <= 0 for s in self.std):
            raise ValueError("std values must be > 0")
        if self.resize is not None and self.resize.shortest_edge is not None and self.center_crop is None:
            raise ValueError("a shortest_edge resize needs a center_crop to give a fixed input size")
        return self

    def input_size(self) -> tuple[int, int]:
        """(height, width) of the tensor the graph receives."""
        if self.center_crop is not None:
            return self.center_crop.height, self.center_crop.width
        if self.resize is None or self.resize.height is None or self.resize.width is None:
            raise ValueError("no fixed input size: set center_crop or an exact resize")
        return self.resize.height, self.resize.width

    def sha256(self) -> str:
        """Identity of the preprocessing: vectors are comparable only when this matches."""
        canonical = json.dumps(self.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()


class Provenance(_Frozen):
    source: str = Field(min_length=1)
    weights: Literal["pretrained", "random-init"]
    seed: int | None = None
    exporter: str = Field(min_length=1)
    opset: int = Field(ge=13, le=23)
    quantization: str | None = None
    versions: dict[str, str]

    @model_validator(mode="after")
    def _seeded(self) -> Provenance:
        if self.weights == "random-init" and self.seed is None:
            raise ValueError("random-init weights must record their seed")
        return self


class Parity(_Frozen):
    """Summary of the export gate; the per-image figures are in parity.json."""

    verified: bool
    images: int = Field(ge=0)
    max_abs_normalized: float = Field(ge=0)
    max_abs_pixels: float = Field(ge=0)
    min_cosine: float
    onnx_sha256: str


SHA256 = r"^[0-9a-f]{64}$"


class ExternalData(_Frozen):
    """A graph's weights kept beside it in one ONNX external-data file: graphs over protobuf's 2 GB
    limit cannot hold them inline (a SigLIP 2 So400m or giant text tower). The file is part of the
    graph: the server checks its sha256 before loading, as it checks the graph's."""

    file: str = Field(pattern=r"^[A-Za-z0-9._-]+\.onnx\.data$")
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")


class _MayHoldExternalData(_Frozen):
    """A graph's description: `onnx_data` is written only when the graph has external data, so a
    model.json of an inline graph reads as it did before the field existed."""

    @model_serializer(mode="wrap")
    def _omit_inline(self, handler: SerializerFunctionWrapHandler) -> dict[str, object]:
        data: dict[str, object] = handler(self)
        if data.get("onnx_data", "") is None:
            del data["onnx_data"]
        return data


class TextParity(_Frozen):
    """Summary of the text half of the export gate; the per-text figures are in parity.json."""

    verified: bool
    texts: int = Field(ge=0)
    tokens_identical: bool  # ids and masks equal to the checkpoint's fast tokenizer's, every text
    max_abs_normalized: float = Field(ge=0)
    min_cosine: float
    batch_max_abs_normalized: float = Field(ge=0)  # a batch of mixed lengths against one at a time
    onnx_sha256: str = Field(pattern=SHA256)
    tokenizer_sha256: str = Field(pattern=SHA256)


class TextTower(_MayHoldExternalData):
    """A text tower: a second graph beside the image one, embedding into the same space.

    Graph contract: `input_ids` (and `attention_mask`, where `input_names` lists it) int64 [N, L]
    -> `embedding` float32 [N, D], D the image tower's. How a text becomes ids is data, so a new
    tokenizer needs no code: the text is lowercased first when `lowercase` is set (Python's
    `str.lower()`, as the model's training code did it); the checkpoint's `tokenizers` JSON file
    frames it (with `start_of_text_id` first, or none where that is null, and `end_of_text_id`
    last); a text over max_length tokens loses its last words and keeps its end token; rows are
    padded with pad_id to the batch's longest text, or always to max_length where the model
    pools a fixed position (`padding: max_length`); padded positions are 0 in the mask.
    """

    onnx_file: str = Field(pattern=r"^[A-Za-z0-9._-]+\.onnx$")
    onnx_sha256: str = Field(pattern=SHA256)
    onnx_data: ExternalData | None = None  # the graph's weights, when too big to hold inline
    tokenizer_file: str = Field(pattern=r"^[A-Za-z0-9._-]+\.json$")
    tokenizer_sha256: str = Field(pattern=SHA256)
    max_length: int = Field(ge=3, le=1024)
    pad_id: int = Field(ge=0)
    start_of_text_id: int | None = Field(ge=0)
    end_of_text_id: int = Field(ge=0)
    lowercase: bool = False
    padding: Literal["longest", "max_length"] = "longest"
    truncation: Literal["keep_end_of_text"] = "keep_end_of_text"
    input_names: tuple[Literal["input_ids"]] | tuple[Literal["input_ids"], Literal["attention_mask"]] = (
        "input_ids",
        "attention_mask",
    )
    output_name: Literal["embedding"] = "embedding"
    parity: TextParity | None = None

    @property
    def verified(self) -> bool:
        p = self.parity
        return (
            p is not None
            and p.verified
            and p.onnx_sha256 == self.onnx_sha256
            and p.tokenizer_sha256 == self.tokenizer_sha256
        )


class Golden(_Frozen):
    """A few of the gate's inputs with reference vectors, which the server re-embeds at load: for an
    fp32 export PyTorch's, each served vector within 1e-6 (normalised max-abs); for a quantised
    variant its fp32 graph's, each served vector at `min_cosine` or above (the gate's criterion).
    Integer rounding flips where other SIMD kernels reorder the float steps before a quantisation,
    so a quantised graph cannot promise its own vectors to 1e-6 on every CPU."""

    file: str = Field(pattern=r"^[A-Za-z0-9._-]+\.npz$")
    sha256: str = Field(pattern=SHA256)
    images: int = Field(ge=1)
    texts: int = Field(ge=0)
    min_cosine: float | None = Field(default=None, gt=0, le=1)


class ModelSpec(_MayHoldExternalData):
    schema_version: Literal[1] = SCHEMA_VERSION
    name: str = Field(pattern=NAME_PATTERN)
    aliases: tuple[str, ...] = ()
    family: str
    pooling: str  # one of its family's poolings (embedder/families.py), checked below
    embedding_dim: int = Field(gt=0, le=65536)
    input_name: Literal["pixel_values"] = "pixel_values"
    output_name: Literal["embedding"] = "embedding"
    onnx_file: str = Field(pattern=r"^[A-Za-z0-9._-]+\.onnx$")
    # None until the model is exported (committed model.json files carry the processor values only).
    onnx_sha256: str | None = Field(default=None, pattern=r"^[0-9a-f]{64}$")
    onnx_data: ExternalData | None = None  # the graph's weights, when too big to hold inline
    preprocessing: Preprocessing
    # False for graphs whose rows depend on their batch-mates (dynamic int8 quantisation scales
    # activations per tensor): the server then runs them one image per session.run.
    batch_invariant: bool = True
    provenance: Provenance | None = None
    parity: Parity | None = None
    text: TextTower | None = None  # CLIP only: the text tower, when exported
    golden: Golden | None = None  # None for exports that predate the self-check

    @field_validator("aliases")
    @classmethod
    def _aliases_unique(cls, aliases: tuple[str, ...]) -> tuple[str, ...]:
        if len(set(aliases)) != len(aliases) or any(not re.fullmatch(r"[\w./:-]{1,200}", a) for a in aliases):
            raise ValueError("aliases must be unique, non-empty hub-id-like strings")
        return aliases

    @field_validator("family")
    @classmethod
    def _known_family(cls, family: str) -> str:
        if family not in FAMILIES:
            raise ValueError(f"unknown family {family!r}; known: {', '.join(FAMILIES)}")
        return family

    @model_validator(mode="after")
    def _pooling_fits_family(self) -> ModelSpec:
        if self.pooling not in FAMILIES[self.family].poolings:
            raise ValueError(f"pooling {self.pooling!r} is not valid for family {self.family!r}")
        if self.text is not None and not FAMILIES[self.family].text:
            raise ValueError(f"family {self.family!r} has no text tower")
        if self.text is not None and self.text.onnx_file == self.onnx_file:
            raise ValueError("the text tower needs a graph file of its own")
        return self

    @property
    def modalities(self) -> tuple[str, ...]:
        return ("image", "text") if self.text is not None else ("image",)

    @property
    def verified(self) -> bool:
        return (
            self.parity is not None and self.parity.verified and self.parity.onnx_sha256 == self.onnx_sha256
        )

    @property
    def weights_kind(self) -> str:
        return self.provenance.weights if self.provenance else "unknown"


class SpecError(ValueError):
    """A model.json that cannot be used; the message names the file and the field."""


def load_spec(path: Path) -> ModelSpec:
    try:
        if not path.is_file():  # a FIFO or /dev/zero behind a symlink would never finish reading
            raise SpecError(f"{path}: not a regular file")
        with path.open("rb") as fh:
            raw = fh.read(MAX_SPEC_BYTES + 1)
        if len(raw) > MAX_SPEC_BYTES:
            raise SpecError(f"{path}: larger than {MAX_SPEC_BYTES} bytes; not a model.json")
        text = raw.decode("utf-8")
    except OSError as exc:
        raise SpecError(f"{path}: cannot read: {exc}") from exc
    except UnicodeDecodeError as exc:
        raise SpecError(f"{path}: not UTF-8 text: {exc}") from None
    try:
        return ModelSpec.model_validate_json(text)
    except ValidationError as exc:
        problems = "; ".join(
            f"field '{'.'.join(str(p) for p in err['loc']) or '<root>'}': {err['msg']}"
            for err in exc.errors()
        )
        raise SpecError(f"{path}: {problems}") from exc


def write_spec(spec: ModelSpec, path: Path) -> None:
    """Write through the schema (re-validated), so the exporter cannot write what the server rejects."""
    text = json.dumps(spec.model_dump(mode="json"), indent=2) + "\n"
    ModelSpec.model_validate_json(text)
    path.write_text(text, encoding="utf-8")


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
