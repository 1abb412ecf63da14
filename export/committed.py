"""The committed `models/<name>/model.json` files: the default models' processor values, before
export. `python -m export.committed` rewrites them; a test checks they have not drifted.

They carry no onnx hash and no provenance: the server lists such a model as not exported until
`python -m export ... --out models/<name>` produces the graph and rewrites the file.
"""

from __future__ import annotations

import sys
from pathlib import Path

from embedder.spec import SPEC_FILE, ModelSpec, write_spec

from .architectures import ARCHITECTURES
from .families import FAMILIES
from .spec_writer import preprocessing_from_processor

# model directory name -> hub id
DEFAULT_MODELS = {
    "clip-vit-base-patch32": "openai/clip-vit-base-patch32",
    "dinov2-small": "facebook/dinov2-small",
    "dinov2-base": "facebook/dinov2-base",
}


def committed_spec(name: str, hub_id: str) -> ModelSpec:
    arch = ARCHITECTURES[hub_id]
    family = FAMILIES[arch.family]
    pooling = family.poolings[0]
    return ModelSpec.model_validate(
        {
            "name": name,
            "aliases": (hub_id,),
            "family": arch.family,
            "pooling": pooling,
            "embedding_dim": family.architecture_dim(arch, pooling),
            "onnx_file": "model.onnx",
            "preprocessing": preprocessing_from_processor(family.random_processor(arch)),
        }
    )


def main(models_dir: Path = Path("models")) -> int:
    for name, hub_id in DEFAULT_MODELS.items():
        (models_dir / name).mkdir(parents=True, exist_ok=True)
        write_spec(committed_spec(name, hub_id), models_dir / name / SPEC_FILE)
        print(f"wrote {models_dir / name / SPEC_FILE}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path("models")))
