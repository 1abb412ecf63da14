"""Export a CLIP or DINOv2 checkpoint to ONNX and prove parity with PyTorch.

    python -m export {clip|dinov2} SOURCE --out models/NAME [--random-init --seed N] [--opset N]

SOURCE is a hub id or a local checkpoint directory (anything `from_pretrained` takes). With
--random-init, SOURCE names a known architecture that is built with seeded random weights and no
download; such a model is labelled random-init (not pretrained) in model.json and in the logs.
The export fails (non-zero exit, model not verified) unless the parity gate passes.
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
from pathlib import Path

from embedder.spec import SPEC_FILE, ModelSpec, Provenance, file_sha256, write_spec

from . import families
from .architectures import ARCHITECTURES, architecture
from .convert import DEFAULT_OPSET, export_onnx
from .parity import gate_images, report_outcome, run_gate
from .spec_writer import library_versions, preprocessing_from_processor

log = logging.getLogger("export")
ONNX_FILE = "model.onnx"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m export", description=__doc__.split("\n\n")[0])
    parser.add_argument("family", choices=families.FAMILIES)
    parser.add_argument("source", help="hub id, local checkpoint dir, or (with --random-init) an architecture name")
    parser.add_argument("--out", type=Path, required=True, help="models/NAME; NAME becomes the model's name")
    parser.add_argument("--random-init", action="store_true", help=f"seeded random weights; one of {sorted(ARCHITECTURES)}")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--opset", type=int, default=DEFAULT_OPSET)
    parser.add_argument("--pooling", help="dinov2: cls (default), mean (patch tokens) or cls+mean")
    parser.add_argument("--alias", action="append", default=[], help="extra name the server accepts (repeatable)")
    parser.add_argument("--images", type=Path, help="a folder of extra images (e.g. real photos) for the gate")
    parser.add_argument("--no-huge", action="store_true", help="leave the >= 4000 px images out of the gate")
    args = parser.parse_args(argv)
    args.pooling = args.pooling or families.POOLINGS[args.family][0]
    if args.pooling not in families.POOLINGS[args.family]:
        parser.error(f"--pooling {args.pooling} is not valid for {args.family}: {families.POOLINGS[args.family]}")
    return args


def checkpoint_source(args: argparse.Namespace, scratch: Path) -> tuple[str, list[str]]:
    """Where from_pretrained reads, and the aliases the model answers to."""
    if args.random_init:
        arch = architecture(args.source)
        if arch.family != args.family:
            raise SystemExit(f"{args.source} is a {arch.family} architecture, not {args.family}")
        families.save_random_init(arch, args.seed, scratch)
        log.warning("%s: RANDOM-INIT weights (seed %d), NOT PRETRAINED: vectors are meaningless", args.source, args.seed)
        return str(scratch), [args.source] if arch.pretrained else []
    is_local = Path(args.source).exists()
    return args.source, [] if is_local else [args.source]


def build_spec(args: argparse.Namespace, loaded: families.Loaded, aliases: list[str]) -> ModelSpec:
    source = args.source if not Path(args.source).exists() else str(Path(args.source).resolve())
    name = args.out.name
    return ModelSpec(
        name=name,
        aliases=tuple(dict.fromkeys(a for a in [*aliases, *args.alias] if a != name)),
        family=args.family,
        pooling=args.pooling,
        embedding_dim=loaded.embedding_dim,
        onnx_file=ONNX_FILE,
        onnx_sha256=file_sha256(args.out / ONNX_FILE),
        preprocessing=preprocessing_from_processor(loaded.processor),
        provenance=Provenance(
            source=source,
            weights="random-init" if args.random_init else "pretrained",
            seed=args.seed if args.random_init else None,
            exporter="torch.onnx.export (TorchScript) via export.convert",
            opset=args.opset,
            versions=library_versions(),
        ),
    )


def export_model(args: argparse.Namespace) -> int:
    started = time.perf_counter()
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as scratch:
        source, aliases = checkpoint_source(args, Path(scratch))
        loaded = families.load(args.family, source, args.pooling)
        preprocessing = preprocessing_from_processor(loaded.processor)
        height, width = preprocessing.input_size()
        export_onnx(loaded.exportable(args.pooling, height, width), args.out / ONNX_FILE, height, width, args.opset)
        write_spec(build_spec(args, loaded, aliases), args.out / SPEC_FILE)
        log.info("exported %s in %.1f s; running the parity gate", args.out, time.perf_counter() - started)
        report = run_gate(args.out, loaded, gate_images(include_huge=not args.no_huge, directory=args.images))
    status = report_outcome(report)
    log.info("export of %s took %.1f s in all", args.out.name, time.perf_counter() - started)
    return status


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    return export_model(parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
