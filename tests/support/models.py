"""Models directories made of copies of exported models.

The session's exports (tests/conftest.py) are shared by many tests and never modified: a server
gets copies, which a test may corrupt or rename at will.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from embedder.spec import SPEC_FILE, load_spec, write_spec

CLIP = "tiny-clip"  # the names the tiny exports carry in their model.json
DINO = "tiny-dinov2"


def add_model(models_dir: Path, source: Path, name: str | None = None) -> Path:
    """Copy an exported model into `models_dir`; a new name is written through the schema
    (and the aliases dropped, so a copy never claims its original's aliases)."""
    name = name or load_spec(source / SPEC_FILE).name
    target = models_dir / name
    shutil.copytree(source, target)
    spec = load_spec(target / SPEC_FILE)
    if spec.name != name:
        write_spec(spec.model_copy(update={"name": name, "aliases": ()}), target / SPEC_FILE)
    return target


def make_models_dir(root: Path, *models: Path | tuple[Path, str]) -> Path:
    """`root` made a models dir holding copies of `models` (a dir, or (dir, new name))."""
    root.mkdir(parents=True, exist_ok=True)
    for item in models:
        source, name = item if isinstance(item, tuple) else (item, None)
        add_model(root, source, name)
    return root
