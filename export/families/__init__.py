"""The export side's model families: the interface (export/families/base.py), one module per
family, and the registry below. Adding a family: its module, one line in `FAMILIES`, its entry
in embedder/families.py (docs/adding-a-model.md).

The registry is the one place the exporter enumerates families: the CLI's choices, `--random-init`'s
architectures (export/architectures.py), the committed model.json files and the tests all read it.
"""

from __future__ import annotations

from pathlib import Path

from .base import Architecture, Family, Loaded, TextHooks, TextRules
from .clip import CLIP
from .dinov2 import DINOV2
from .siglip import SIGLIP

FAMILIES: dict[str, Family] = {family.name: family for family in (CLIP, DINOV2, SIGLIP)}

# name -> its poolings, the first the default (the serving side's list: embedder/families.py)
POOLINGS: dict[str, tuple[str, ...]] = {name: family.poolings for name, family in FAMILIES.items()}


def load(family: str, source: str, pooling: str) -> Loaded:
    """from_pretrained(source) as `family`: the model, its slow image processor, the pooling."""
    return FAMILIES[family].load(source, pooling)


def save_random_init(arch: Architecture, seed: int, directory: Path) -> None:
    """Seeded random weights for a known architecture, saved as a checkpoint (no download)."""
    FAMILIES[arch.family].save_random_init(arch, seed, directory)


__all__ = ["FAMILIES", "POOLINGS", "Architecture", "Family", "Loaded", "TextHooks", "TextRules", "load"]
__all__ += ["save_random_init"]
