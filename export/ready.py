"""Exit 0 if models/NAME holds an exported graph that passed its gate and matches its model.json
(used by `make models` to skip work already done), 1 otherwise, saying why. A model with a text
tower needs its text graph and tokenizer present, matching, and gated too."""

from __future__ import annotations

import sys
from pathlib import Path

from embedder.repository import ModelEntry
from embedder.spec import SPEC_FILE, SpecError, file_sha256, load_spec


def problem(directory: Path) -> str | None:
    try:
        spec = load_spec(directory / SPEC_FILE)
    except SpecError as exc:
        return str(exc)
    entry = ModelEntry(spec, directory)
    reason = entry.unavailable_reason()
    if reason:
        return reason
    if file_sha256(entry.onnx_path) != spec.onnx_sha256:
        return "graph does not match model.json's onnx_sha256"
    if not spec.verified:
        return "parity gate not passed"
    text = spec.text
    if text is not None:
        for name, expected in (
            (text.onnx_file, text.onnx_sha256),
            (text.tokenizer_file, text.tokenizer_sha256),
        ):
            path = directory / name
            if not path.is_file():
                return f"text tower file missing: {path}"
            if file_sha256(path) != expected:
                return f"text tower file {name} does not match model.json"
        if not text.verified:
            return "text tower's parity gate not passed"
    return None


if __name__ == "__main__":
    why = problem(Path(sys.argv[1]))
    if why:
        print(f"{sys.argv[1]}: {why}")
    raise SystemExit(1 if why else 0)
