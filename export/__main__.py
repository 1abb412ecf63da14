"""Export a checkpoint of a registered model family to ONNX and prove parity with PyTorch.

    python -m export FAMILY SOURCE --out models/NAME [--random-init --seed N] [--opset N] [--no-text]

SOURCE is a hub id or a local checkpoint directory (anything `from_pretrained` takes). With
--random-init, SOURCE names a known architecture that is built with seeded random weights and no
download; such a model is labelled random-init (not pretrained) in model.json and in the logs.
A family's text tower (CLIP's, say) is exported beside the image graph (text.onnx + tokenizer.json)
unless --no-text. FAMILY is a name in the registry, export/families/__init__.py. The export fails
(non-zero exit, model not verified) unless the parity gate passes.
"""

from __future__ import annotations

import argparse
import logging
import re
import sys
import tempfile
import time
from pathlib import Path

from embedder.cpus import plan_threads
from embedder.spec import (
    NAME_PATTERN,
    SPEC_FILE,
    ExternalData,
    ModelSpec,
    Provenance,
    TextTower,
    file_sha256,
    write_spec,
)

from .architectures import ARCHITECTURES, architecture
from .convert import DEFAULT_OPSET, data_path, export_onnx
from .criteria import INT8
from .families import FAMILIES, Loaded
from .golden import write_golden_set
from .parity import gate_images, int8_gate_images, report_outcome, run_gate
from .quantize import SCHEMES, calibrate, fp32_reference, quantize_int8
from .spec_writer import library_versions, preprocessing_from_processor
from .text import export_text, remove_text_tower

log = logging.getLogger("export")
ONNX_FILE = "model.onnx"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m export", description=__doc__.split("\n\n")[0])
    parser.add_argument("family", choices=list(FAMILIES))
    parser.add_argument(
        "source", help="hub id, local checkpoint dir, or (with --random-init) an architecture name"
    )
    parser.add_argument("--out", type=Path, required=True, help="models/NAME; NAME becomes the model's name")
    parser.add_argument(
        "--random-init", action="store_true", help=f"seeded random weights; one of {sorted(ARCHITECTURES)}"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--opset", type=int, default=DEFAULT_OPSET)
    poolings = "; ".join(f"{name}: {', '.join(f.poolings)}" for name, f in FAMILIES.items())
    parser.add_argument("--pooling", help=f"the family's first is the default ({poolings})")
    parser.add_argument(
        "--alias", action="append", default=[], help="extra name the server accepts (repeatable)"
    )
    parser.add_argument(
        "--images", type=Path, help="a folder of extra images (e.g. real photos) for the gate"
    )
    parser.add_argument("--no-huge", action="store_true", help="leave the >= 4000 px images out of the gate")
    parser.add_argument(
        "--quantize", choices=["int8"], help="write a quantised variant (gated by cosine to fp32)"
    )
    parser.add_argument(
        "--int8-scheme",
        choices=list(SCHEMES),
        default="static",
        help="static: calibrated activation ranges (fastest, above all without VNNI); per-token: "
        "scales computed per token at run time, no calibration (export/quantize.py)",
    )
    parser.add_argument(
        "--no-text", action="store_true", help="a family with a text tower: leave it out (image graph only)"
    )
    parser.add_argument(
        "--external-data",
        action="store_true",
        help="keep each graph's weights in a NAME.onnx.data file beside it (always so over protobuf's 2 GB)",
    )
    args = parser.parse_args(argv)
    if not re.fullmatch(NAME_PATTERN, args.out.name):
        parser.error(f"--out {args.out}: the folder name is the model name and must match {NAME_PATTERN}")
    poolings = FAMILIES[args.family].poolings
    args.pooling = args.pooling or poolings[0]
    if args.pooling not in poolings:
        parser.error(f"--pooling {args.pooling} is not valid for {args.family}: {poolings}")
    return args


def checkpoint_source(args: argparse.Namespace, scratch: Path) -> tuple[str, list[str]]:
    """Where from_pretrained reads, and the aliases the model answers to."""
    if args.random_init:
        arch = architecture(args.source)
        if arch.family != args.family:
            raise SystemExit(f"{args.source} is a {arch.family} architecture, not {args.family}")
        FAMILIES[args.family].save_random_init(arch, args.seed, scratch)
        log.warning(
            "%s: RANDOM-INIT weights (seed %d), NOT PRETRAINED: vectors are meaningless",
            args.source,
            args.seed,
        )
        return str(scratch), [args.source] if arch.pretrained else []
    is_local = Path(args.source).exists()
    return args.source, [] if is_local else [args.source]


def build_spec(
    args: argparse.Namespace,
    loaded: Loaded,
    aliases: list[str],
    out: Path,
    quantization: str | None = None,
    text: TextTower | None = None,
) -> ModelSpec:
    # A random-init source is an architecture name, never a path, even if a file of that name exists
    # (e.g. `--out tiny-clip` run from the parent dir): the gate rebuilds the model from this name.
    is_path = not args.random_init and Path(args.source).exists()
    source = str(Path(args.source).resolve()) if is_path else args.source
    name = out.name
    if quantization:
        aliases = [f"{alias}:{args.quantize}" for alias in aliases]
    return ModelSpec(
        name=name,
        aliases=tuple(dict.fromkeys(a for a in [*aliases, *args.alias] if a != name)),
        family=args.family,
        pooling=args.pooling,
        embedding_dim=loaded.embedding_dim,
        onnx_file=ONNX_FILE,
        onnx_sha256=file_sha256(out / ONNX_FILE),
        onnx_data=external_data(out / ONNX_FILE),
        preprocessing=preprocessing_from_processor(loaded.processor),
        # int8 too: its activation scales are per token (export/quantize.py); the gate requires it.
        batch_invariant=True,
        provenance=Provenance(
            source=source,
            weights="random-init" if args.random_init else "pretrained",
            seed=args.seed if args.random_init else None,
            exporter="torch.onnx.export (TorchScript) via export.convert",
            opset=args.opset,
            quantization=quantization,
            versions=library_versions(),
        ),
        text=text,
    )


def external_data(graph: Path) -> ExternalData | None:
    """model.json's record of a graph's external-data file, if the export wrote one."""
    data = data_path(graph)
    return ExternalData(file=data.name, sha256=file_sha256(data)) if data.is_file() else None


def export_fp32(
    args: argparse.Namespace, loaded: Loaded, aliases: list[str], out: Path, with_text: bool = True
) -> int:
    """Export the fp32 graph (and the family's text tower) to `out` and run the parity gate against
    PyTorch; the gate's status."""
    out.mkdir(parents=True, exist_ok=True)
    height, width = preprocessing_from_processor(loaded.processor).input_size()
    export_onnx(
        loaded.exportable(height, width), out / ONNX_FILE, height, width, args.opset, args.external_data
    )
    text = None
    hooks = loaded.family.text if with_text and not args.no_text else None
    why_not = hooks.unavailable(loaded.source) if hooks is not None else None
    if why_not:
        log.warning("%s: exporting the image tower only: %s", args.out.name, why_not)
    if hooks is not None and not why_not:
        text = export_text(loaded, out, args.opset, args.external_data)
    else:
        remove_text_tower(out)
    write_spec(build_spec(args, loaded, aliases, out, text=text), out / SPEC_FILE)
    log.info("exported %s; running the parity gate against PyTorch", out)
    images = gate_images(include_huge=not args.no_huge, directory=args.images)
    report = run_gate(out, loaded, images)
    if report.verified:
        write_golden_set(out, loaded, images)
    return report_outcome(report)


def export_quantized(args: argparse.Namespace, loaded: Loaded, aliases: list[str], scratch: Path) -> int:
    """fp32 export (gated) in scratch, then the int8 graph in args.out gated by cosine to fp32."""
    fp32_dir = scratch / "fp32" / args.out.name
    if loaded.family.text is not None and not args.no_text:
        log.info("--quantize covers the image graph: the int8 variant has no text tower")
    if export_fp32(args, loaded, aliases, fp32_dir, with_text=False) != 0:
        log.error("the fp32 graph failed its gate; not quantising")
        return 1
    args.out.mkdir(parents=True, exist_ok=True)
    remove_text_tower(args.out)
    data_path(args.out / ONNX_FILE).unlink(missing_ok=True)  # int8 graphs are held inline
    scheme = SCHEMES[args.int8_scheme]
    ranges = calibrate(fp32_dir, scratch / "calibration") if args.int8_scheme == "static" else None
    quantize_int8(fp32_dir / ONNX_FILE, args.out / ONNX_FILE, ranges)
    write_spec(build_spec(args, loaded, aliases, args.out, quantization=scheme), args.out / SPEC_FILE)
    log.info("quantised %s (%s); gating against the fp32 graph", args.out, scheme)
    reference = fp32_reference(fp32_dir / ONNX_FILE, plan_threads().intra_op)
    images = int8_gate_images(include_huge=not args.no_huge, directory=args.images)
    report = run_gate(args.out, loaded, images, reference, INT8)
    if report.verified:
        write_golden_set(args.out, loaded, images, fp32_graph=fp32_dir / ONNX_FILE)
    return report_outcome(report)


def export_model(args: argparse.Namespace) -> int:
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as scratch:
        source, aliases = checkpoint_source(args, Path(scratch) / "checkpoint")
        loaded = FAMILIES[args.family].load(source, args.pooling)
        if args.quantize:
            status = export_quantized(args, loaded, aliases, Path(scratch))
        else:
            status = export_fp32(args, loaded, aliases, args.out)
    log.info("export of %s took %.1f s in all", args.out.name, time.perf_counter() - started)
    return status


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr
    )
    return export_model(parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
