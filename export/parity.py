"""The parity gate: HF slow processor + PyTorch against our preprocessing + the served ORT session.

    python -m export.parity models/NAME [--images DIR] [--no-huge]

Required for every image of the set: pixel values bit-identical (max-abs 0) and max-abs of the
L2-normalised embeddings <= 1e-6; and a batch of all images equal to one-at-a-time. A model with
a text tower (model.json's `text`) is gated on its text set too (export/text.py): token ids as
transformers' fast tokenizer gives them, embeddings <= 1e-6, a padded batch equal to one at a
time. A quantised graph (export/quantize.py) is held to its fp32 graph instead: cosine >= 0.995
on every image, and every row of a batch bit-identical to the row alone, in the whole set and in
shuffled smaller batches. Writes models/NAME/parity.json and the summaries in model.json (`parity.verified` is the
whole gate's verdict, both halves); exits non-zero with a table otherwise.

Images 1 or 3 pixels high: HF's processor infers the channel axis from the array shape and takes
such an image as channels-first, which crashes or scrambles it. We always decode to
height x width x channels, and the reference for those images is HF told
`input_data_format="channels_last"`; what HF does by default is recorded beside them.
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import sys
import tempfile
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from embedder.cpus import plan_threads
from embedder.preprocess import DecodeLimits, Preprocessor
from embedder.runtime import open_session, run
from embedder.spec import PARITY_FILE, SPEC_FILE, ModelSpec, Parity, file_sha256, load_spec, write_spec

from .architectures import architecture
from .calibration import unseen_images
from .convert import export_onnx
from .criteria import FP32, INT8, TOLERANCE, Criterion, ImageResult, Reference
from .families import FAMILIES, Loaded
from .images import ParityImage, parity_images
from .parity_texts import ParityText
from .quantize import fp32_reference
from .spec_writer import library_versions
from .text import TextReport, run_text_gate, text_hooks

CHANNEL_AMBIGUOUS_HEIGHTS = (1, 3)
# The gate decodes the huge images of its own set; the server's default limits are not its concern.
GATE_LIMITS = DecodeLimits(max_pixels=400_000_000, max_resized_pixels=400_000_000)


@dataclass
class GateReport:
    model: str
    onnx_sha256: str
    preprocessing_sha256: str
    criterion: Criterion
    images: list[ImageResult]
    batch_normalized_max_abs: float
    batch_invariance_required: bool
    spec_names_this_graph: bool  # model.json's onnx_sha256 is this file's: what the server checks
    seconds: float
    text: TextReport | None = None  # the text half, for a model with a text tower
    versions: dict[str, str] = field(default_factory=library_versions)
    batch_raw_max_abs: float = 0.0  # the unnormalised vectors, over every batch compared
    batch_sizes: list[int] = field(default_factory=list)  # the batches compared with one at a time

    @property
    def batch_consistent(self) -> bool:
        if self.criterion.batch_exact:
            return self.batch_raw_max_abs == 0.0
        return self.batch_normalized_max_abs <= TOLERANCE

    @property
    def images_verified(self) -> bool:
        batch_ok = self.batch_consistent or not self.batch_invariance_required
        return (
            bool(self.images)
            and all(r.passed for r in self.images)
            and batch_ok
            and self.spec_names_this_graph
        )

    @property
    def verified(self) -> bool:
        """The whole gate: the images, and the texts when the model has a text tower."""
        return self.images_verified and (self.text is None or self.text.verified)

    def summary(self) -> Parity:
        return Parity(
            verified=self.verified,
            images=len(self.images),
            max_abs_normalized=max(r.normalized_max_abs for r in self.images),
            max_abs_pixels=max(r.pixel_max_abs for r in self.images),
            min_cosine=min(r.cosine for r in self.images),
            onnx_sha256=self.onnx_sha256,
        )

    def to_json(self) -> str:
        body = asdict(self)
        body["verified"] = self.verified
        body["images_verified"] = self.images_verified
        body["text"] = self.text.to_dict() if self.text is not None else None
        return json.dumps(body, indent=2) + "\n"

    def table(self) -> str:
        lines = [f"{'image':32} {'mode':6} {'pixels':>9} {'norm max-abs':>13} {'cosine':>10}  result"]
        for r in self.images:
            verdict = "ok" if r.passed else "FAIL"
            lines.append(
                f"{r.name:32} {r.mode:6} {r.pixel_max_abs:9.2e} {r.normalized_max_abs:13.3e} {r.cosine:10.7f}  {verdict}"
            )
        batch = "ok" if self.batch_consistent else "FAIL"
        if not self.batch_invariance_required:
            batch = "recorded (model is not batch-invariant: served one image per run)"
        sizes = "/".join(map(str, self.batch_sizes))
        lines.append(
            f"batches of {sizes} vs one-at-a-time: normalised {self.batch_normalized_max_abs:.3e}, "
            f"raw {self.batch_raw_max_abs:.3e}{' (must be 0)' if self.criterion.batch_exact else ''}  {batch}"
        )
        lines.append(f"criterion: {self.criterion.description}; reference: {self.criterion.reference}")
        if not self.spec_names_this_graph:
            lines.append(
                f"FAIL: model.json's onnx_sha256 is not this graph's ({self.onnx_sha256}); the server would refuse it"
            )
        if self.text is not None:
            lines.append(self.text.table())
        return "\n".join(lines)

    def failures(self) -> list[str]:
        failed = [r.name for r in self.images if not r.passed]
        if not self.batch_consistent and self.batch_invariance_required:
            failed.append("image batch vs one at a time")
        if not self.spec_names_this_graph:
            failed.append("onnx_sha256 mismatch")
        return failed + (self.text.failures() if self.text is not None else [])


def _unit(vector: np.ndarray) -> np.ndarray:
    vector = vector.astype(np.float64)
    return vector / np.linalg.norm(vector)


def _reference_pixels(processor: object, image: Image.Image) -> tuple[torch.Tensor, str, str]:
    if image.height not in CHANNEL_AMBIGUOUS_HEIGHTS:
        return processor(images=image, return_tensors="pt")["pixel_values"], "inferred", ""  # type: ignore[operator]
    explicit = processor(images=image, return_tensors="pt", input_data_format="channels_last")  # type: ignore[operator]
    # HF logs "The channel dimension is ambiguous" as it guesses: expected for these images, and
    # what it does is recorded in the note instead.
    guessing = logging.getLogger("transformers.image_utils")
    level = guessing.level
    guessing.setLevel(logging.ERROR)
    try:
        default = processor(images=image, return_tensors="pt")["pixel_values"]  # type: ignore[operator]
        note = f"HF default infers channels-first: differs by {float((default - explicit['pixel_values']).abs().max()):.3g}"
    except Exception as exc:  # noqa: BLE001 - recording what HF does, whatever it raises
        note = f"HF default infers channels-first and raises {type(exc).__name__}: {exc}"
    finally:
        guessing.setLevel(level)
    return explicit["pixel_values"], "channels_last", note


def hf_pixels(item: ParityImage, processor: object) -> tuple[torch.Tensor, str, str]:
    """The pipeline's pixels for `item`: PIL decode to RGB, then HF's processor (see
    _reference_pixels for the data format and the note)."""
    with warnings.catch_warnings():
        # Pillow's note on palette images with transparency: those images are in the set on purpose.
        warnings.simplefilter("ignore", UserWarning)
        pil = Image.open(io.BytesIO(item.data)).convert("RGB")  # the pipeline's own decode
    return _reference_pixels(processor, pil)


def torch_reference(loaded: Loaded) -> Reference:
    def embed(hf_pixels: torch.Tensor, ours: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            vector: np.ndarray = loaded.reference(hf_pixels)[0].numpy()
            return vector

    return embed


def compare_image(
    item: ParityImage,
    processor: object,
    reference: Reference,
    criterion: Criterion,
    pre: Preprocessor,
    session: object,
) -> tuple[ImageResult, np.ndarray]:
    ref_pixels, data_format, note = hf_pixels(item, processor)
    ours_pixels = pre.from_bytes(item.data)
    ref = reference(ref_pixels, ours_pixels)
    ours = run(session, ours_pixels[None])[0]  # type: ignore[arg-type]
    diff = ref.astype(np.float64) - ours
    result = ImageResult(
        name=item.name,
        mode=item.mode,
        format=item.format,
        size=item.size,
        pixel_max_abs=float(np.abs(ref_pixels[0].numpy() - ours_pixels).max()),
        raw_max_abs=float(np.abs(diff).max()),
        relative_error=float(np.linalg.norm(diff) / max(np.linalg.norm(ref), 1e-30)),
        cosine=float(_unit(ref) @ _unit(ours)),
        normalized_max_abs=float(np.abs(_unit(ref) - _unit(ours)).max()),
        hf_input_data_format=data_format,
        hf_default_behaviour=note,
    )
    result.passed = criterion.passes(result)
    return result, ours_pixels


def run_gate(
    model_dir: Path,
    loaded: Loaded,
    images: list[ParityImage],
    reference: Reference | None = None,
    criterion: Criterion = FP32,
    texts: list[ParityText] | None = None,
) -> GateReport:
    """Compare every image, then the whole set as one batch; the same for the texts when the model
    has a text tower (its family's set unless given); write parity.json and model.json.

    The reference is PyTorch unless given (a quantised graph is held to its fp32 graph)."""
    reference = reference or torch_reference(loaded)
    started = time.perf_counter()
    spec = load_spec(model_dir / SPEC_FILE)
    onnx_path = model_dir / spec.onnx_file
    sha = file_sha256(onnx_path)
    pre = Preprocessor(spec.preprocessing, GATE_LIMITS)
    session = open_session(onnx_path, plan_threads().intra_op)
    results, tensors, singles = [], [], []
    for item in images:
        result, pixels = compare_image(item, loaded.processor, reference, criterion, pre, session)
        results.append(result)
        tensors.append(pixels)
    singles = np.stack([run(session, t[None])[0] for t in tensors])
    batches = [np.arange(len(tensors))] + _shuffled_batches(len(tensors), criterion.batch_sizes)
    batch_diff = batch_raw = 0.0
    for rows in batches:
        batch = run(session, np.stack([tensors[i] for i in rows]))
        batch_raw = max(batch_raw, float(np.abs(batch - singles[rows]).max()))
        normalised = (np.abs(_unit(b) - _unit(s)).max() for b, s in zip(batch, singles[rows]))
        batch_diff = max(batch_diff, *map(float, normalised))
    text = None
    if spec.text is not None:
        text_set = text_hooks(loaded).parity_texts() if texts is None else texts
        text = run_text_gate(model_dir, spec.text, loaded, text_set, TOLERANCE)
    report = GateReport(
        model=spec.name,
        onnx_sha256=sha,
        preprocessing_sha256=spec.preprocessing.sha256(),
        criterion=criterion,
        images=results,
        batch_normalized_max_abs=batch_diff,
        batch_invariance_required=spec.batch_invariant,
        spec_names_this_graph=spec.onnx_sha256 == sha,
        seconds=round(time.perf_counter() - started, 2),
        text=text,
        batch_raw_max_abs=batch_raw,
        batch_sizes=[len(rows) for rows in batches],
    )
    (model_dir / PARITY_FILE).write_text(report.to_json(), encoding="utf-8")
    update: dict[str, object] = {"parity": report.summary()}
    if spec.text is not None and text is not None:
        update["text"] = spec.text.model_copy(update={"parity": text.summary()})
    write_spec(spec.model_copy(update=update), model_dir / SPEC_FILE)
    return report


def _shuffled_batches(count: int, sizes: tuple[int, ...]) -> list[np.ndarray]:
    """Batches of `sizes` drawn from the set in a seeded order: other batch-mates, other positions."""
    rng = np.random.default_rng(0)
    return [rng.permutation(count)[:size] for size in sizes if size <= count]


def load_reference(spec: ModelSpec, scratch: Path) -> Loaded:
    """The PyTorch side for an exported model, from its recorded provenance."""
    if spec.provenance is None:
        raise SystemExit(f"{spec.name}: model.json has no provenance; cannot rebuild the PyTorch reference")
    source, family = spec.provenance.source, FAMILIES[spec.family]
    if spec.provenance.weights == "random-init":
        assert spec.provenance.seed is not None
        family.save_random_init(architecture(source), spec.provenance.seed, scratch)
        source = str(scratch)
    return family.load(source, spec.pooling)


def extra_images(directory: Path | None) -> list[ParityImage]:
    """Real photos a user adds to the set (any file Pillow opens)."""
    if directory is None:
        return []
    found = []
    for path in sorted(p for p in directory.iterdir() if p.is_file()):
        data = path.read_bytes()
        with Image.open(io.BytesIO(data)) as image:
            found.append(ParityImage(path.name, data, image.mode, image.format or "?", image.size))
    return found


def gate_images(seed: int = 0, include_huge: bool = True, directory: Path | None = None) -> list[ParityImage]:
    return parity_images(seed, include_huge=include_huge) + extra_images(directory)


def int8_gate_images(include_huge: bool = True, directory: Path | None = None) -> list[ParityImage]:
    """An int8 graph's gate: the fp32 gate's images plus the out-of-distribution ones, none of them
    in the static scheme's calibration set (export/calibration.py)."""
    return gate_images(include_huge=include_huge, directory=directory) + unseen_images()


def report_outcome(report: GateReport) -> int:
    print(report.table())
    if report.verified:
        texts = f", {len(report.text.texts)} texts" if report.text is not None else ""
        print(
            f"parity gate PASSED for {report.model} ({len(report.images)} images{texts}, {report.seconds:.1f} s)"
        )
        return 0
    failed = report.failures()
    named = "; ".join(failed[:10]) + (f"; and {len(failed) - 10} more" if len(failed) > 10 else "")
    print(f"parity gate FAILED for {report.model}: {named or 'batch check'}", file=sys.stderr)
    return 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m export.parity", description=__doc__.split("\n\n")[0])
    parser.add_argument("model_dir", type=Path)
    parser.add_argument(
        "--images", type=Path, help="a folder of extra images (e.g. real photos) to add to the set"
    )
    parser.add_argument("--no-huge", action="store_true", help="leave out the >= 4000 px images (faster)")
    args = parser.parse_args(argv)
    spec = load_spec(args.model_dir / SPEC_FILE)
    with tempfile.TemporaryDirectory() as scratch:
        loaded = load_reference(spec, Path(scratch) / "checkpoint")
        if spec.provenance is not None and spec.provenance.quantization:
            images = int8_gate_images(include_huge=not args.no_huge, directory=args.images)
            report = _quantized_gate(args.model_dir, spec, loaded, images, Path(scratch))
        else:
            images = gate_images(include_huge=not args.no_huge, directory=args.images)
            report = run_gate(args.model_dir, loaded, images)
    return report_outcome(report)


def _quantized_gate(
    model_dir: Path, spec: ModelSpec, loaded: Loaded, images: list[ParityImage], scratch: Path
) -> GateReport:
    """A quantised model is held to its fp32 graph, re-exported here from the same checkpoint."""
    height, width = spec.preprocessing.input_size()
    fp32 = scratch / "fp32.onnx"
    export_onnx(loaded.exportable(height, width), fp32, height, width, spec.provenance.opset)  # type: ignore[union-attr]
    return run_gate(model_dir, loaded, images, fp32_reference(fp32, plan_threads().intra_op), INT8)


if __name__ == "__main__":
    raise SystemExit(main())
