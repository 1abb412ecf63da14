"""`embedder verify`: does a running server compute the vectors its models' gates verified?

For each model of a models folder with a golden set, the golden inputs go to the server as
ordinary Embed (and EmbedText) calls and the answers are compared with the set's reference vectors
(PyTorch's for an fp32 export; an int8 variant's own, see export/golden.py), to the tolerance the
server's own self-check uses. A model the server serves from another graph than
the folder's (its onnx_sha256 differs) fails with that reason. What a deploy pipeline runs after
a rollout, or a startup probe; exit 0 only if every model passes.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any

from .errors import EmbedderError
from .golden import TOLERANCE, GoldenError, compare, load_golden, rule
from .repository import ModelEntry, Repository
from .spec import SpecError


def add_verify_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model", help="one model (name or alias); default: every exported model of the folder"
    )
    parser.add_argument(
        "--models-dir",
        type=Path,
        default=Path(os.environ.get("EMBEDDER_MODELS_DIR") or "models"),
        help="the models folder holding the golden sets [env EMBEDDER_MODELS_DIR; default models]",
    )


def run_verify(client: Any, args: argparse.Namespace) -> int:
    try:
        repository = Repository.scan(args.models_dir)
        entries = [repository.resolve(args.model)] if args.model else list(repository.entries.values())
    except (SpecError, EmbedderError) as exc:  # a folder that does not validate, an unknown --model
        raise SystemExit(f"embedder verify: {exc}") from None
    served = {status.info.name: status.info for status in client.list_models()}
    results = [verify_one(client, entry, served) for entry in entries]
    for result in results:
        print(json.dumps(result))
    return 0 if all(r["result"] in ("passed", "skipped") for r in results) and results else 1


def verify_one(client: Any, entry: ModelEntry, served: dict[str, Any]) -> dict[str, object]:
    spec, name = entry.spec, entry.name
    result: dict[str, object] = {"model": name}
    if spec.onnx_sha256 is None:
        return {**result, "result": "skipped", "reason": "not exported in this folder"}
    if spec.golden is None:
        return {
            **result,
            "result": "failed",
            "reason": "no golden set: exported before the self-check; re-export",
        }
    info = served.get(name)
    if info is None:
        return {**result, "result": "failed", "reason": "the server has no such model"}
    for field, ours in (
        ("onnx_sha256", spec.onnx_sha256),
        ("text_onnx_sha256", spec.text.onnx_sha256 if spec.text else ""),
    ):
        if getattr(info, field) != ours:
            return {
                **result,
                "result": "failed",
                "reason": f"the server's {field} {getattr(info, field)[:16]}... is not this folder's {ours[:16]}...",
            }
    try:
        golden = load_golden(entry.directory / spec.golden.file, spec.golden.sha256)
    except GoldenError as exc:
        return {**result, "result": "failed", "reason": f"golden set refused: {exc}"}
    checks = [compare(client.embed(name, golden.images).embeddings, golden.vectors, golden.names)]
    if golden.texts and spec.text is not None:
        served_texts = client.embed_text(name, golden.texts).embeddings
        checks.append(compare(served_texts, golden.text_vectors, golden.texts))
    required = spec.golden.min_cosine
    worst = min(checks, key=lambda c: c.min_cosine)
    return {
        **result,
        "result": "passed" if all(c.passes(required) for c in checks) else "failed",
        "max_abs": max(c.max_abs for c in checks),
        "min_cosine": worst.min_cosine,
        "worst": worst.worst,
        "inputs": len(golden.images) + len(golden.texts),
        "tolerance": TOLERANCE,
        "rule": rule(required),
    }
